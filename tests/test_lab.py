"""The lab stays apart from the product and small: the product never imports it, nothing edits sys.path, every
link of its documents resolves, every kept figure has its regenerating command in lab/README.md, and its
results and figures together stay well under 1 MB."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "lab"
PRODUCT = sorted(REPO.glob("*.py")) + [p for d in ("models", "datasets", "losses", "utils")
                                        for p in sorted((REPO / d).rglob("*.py"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FIGURE = re.compile(r"`(figures/[^`\s]+)`")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_product_never_imports_the_lab():
    assert len(PRODUCT) > 40  # the scripts and the four packages were found
    offenders = {p.relative_to(REPO).as_posix(): sorted(m for m in imported_modules(p) if m.split(".")[0] == "lab")
                 for p in PRODUCT}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_lab_imports_the_product_without_editing_sys_path():
    lab_files = sorted(LAB.rglob("*.py"))
    assert [p.name for p in lab_files if "sys.path" in p.read_text()] == []
    assert "utils.cli" in imported_modules(LAB / "probe_order.py")
    assert "lab.probe" in imported_modules(LAB / "probe_order.py")


def test_every_link_of_the_lab_documents_resolves():
    docs = sorted(LAB.rglob("*.md")) + [REPO / "README.md"]
    checked, broken = 0, []
    for doc in docs:
        text = doc.read_text()
        for target in _LINK.findall(text):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            checked += 1
            if not (doc.parent / target.split("#")[0]).exists():
                broken.append(f"{doc.relative_to(REPO)}: ({target})")
        if doc.parent == LAB:
            for target in _FIGURE.findall(text):
                checked += 1
                if not (LAB / target).exists():
                    broken.append(f"{doc.relative_to(REPO)}: `{target}`")
    assert checked > 30  # the reader found the links
    assert broken == []


def test_every_kept_figure_has_its_command_in_the_lab_readme():
    readme = (LAB / "README.md").read_text()
    figures = sorted(p.name for p in (LAB / "figures").iterdir())
    assert len(figures) >= 10
    assert [f for f in figures if f"figures/{f}" not in readme] == []


def test_results_and_figures_stay_small():
    files = [p for d in ("results", "figures") for p in (LAB / d).rglob("*") if p.is_file()]
    assert [p.name for p in files if p.suffix in (".gif", ".log") or p.name == "machine.txt"] == []
    assert sum(p.stat().st_size for p in files) < 700_000

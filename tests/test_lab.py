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


def test_authors_epoch_reads_both_trainers_logs():
    """lab/benchmarks/authors_epoch.py times whole epochs after a warm-up from each trainer's own log: theirs
    (epoch starts, ms stamps; lines as their logger writes them) and our log.txt (seconds per epoch)."""
    import pytest
    from lab.benchmarks.authors_epoch import our_timed, their_timed
    theirs = ("26-12-06 02:56:33.642 - INFO: Con@3 on val subset: 1.0\n"
              "26-12-06 02:56:33.643 - INFO: Running epoch 0/4\n"
              "26-12-06 02:57:02.404 - INFO: step: 0/2 lr: 5.00e-05, loss: 0.9253\n"
              "26-12-06 02:57:27.672 - INFO: Running epoch 1/4\n"
              "26-12-06 02:58:21.812 - INFO: Running epoch 2/4\n"
              "26-12-06 02:58:31.312 - INFO: Running epoch 3/4\n")
    seconds, window = their_timed(theirs)
    assert seconds == pytest.approx([54.14, 9.5]) and window[1] - window[0] == pytest.approx(63.64)
    ours = ("2026-12-06 00:03:25 HyperCUT {'out_dim': 128}, 2,315,552 trained parameters\n"
            "2026-12-06 00:03:54 step 100 (epoch 1) | total 0.68496 (mean of the last 100 steps) | 28.8 s\n"
            "2026-12-06 00:04:01 epoch 1/3 | step 125 | total 0.66934 | lr 5e-05 | 35.9 s (total 35.9 s)\n"
            "2026-12-06 00:04:36 epoch 2/3 | step 250 | total 0.39599 | diff 0.44503 | lr 5e-05 | 35.1 s (total 71.0 s)\n"
            "2026-12-06 00:05:18 epoch 3/3 | step 375 | total 0.27374 | lr 5e-05 | 41.4 s (total 112.5 s)\n")
    seconds, window = our_timed(ours)
    assert seconds == [35.1, 41.4] and window[1] - window[0] == pytest.approx(35.1 + 42)
    with pytest.raises(ValueError, match="fewer than two epoch starts"):
        their_timed(theirs.split("26-12-06 02:58:21")[0])
    with pytest.raises(ValueError, match="no epoch line after the warm-up"):
        our_timed(ours.split("2026-12-06 00:04:36")[0])

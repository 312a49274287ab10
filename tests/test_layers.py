"""The product's packages form layers: utils at the bottom, datasets and models on it, losses on models,
the scripts on top; no import runs back up and no module imports itself through others (imports inside
functions included)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "datasets", "models", "losses")
# what each package may import from the others (the scripts and the lab may import any of them)
ALLOWED = {"utils": set(), "datasets": {"utils"}, "models": {"utils"}, "losses": {"utils", "models"}}


def product_modules() -> dict[str, Path]:
    mods = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def imports_of(path: Path, known) -> set[str]:
    """The product modules a file imports, anywhere in it (absolute imports; the project uses no others)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in known}


def import_graph() -> dict[str, set[str]]:
    mods = product_modules()
    return {name: imports_of(path, mods) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return found


def test_the_walker_sees_every_package_and_real_edges():
    graph = import_graph()
    assert {m.split(".")[0] for m in graph} == set(PACKAGES)
    assert "utils.errors" in graph["datasets.metadata"]  # a known edge: the walker reads imports
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_runs_back_up():
    wrong = sorted((m, d) for m, deps in import_graph().items() for d in deps
                   if d.split(".")[0] != m.split(".")[0] and d.split(".")[0] not in ALLOWED[m.split(".")[0]])
    assert wrong == [], f"imports against the layers utils < datasets, models < losses: {wrong}"


def test_no_import_circle():
    assert cycles(import_graph()) == []

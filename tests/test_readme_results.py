"""Every number in the README's results table is the one in the result file the table cites."""
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MARK = re.compile(r"<!-- results: (\S+) -->\n(.*?)<!-- /results -->", re.S)


def results_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in MARK.finditer(text)]


def table_rows(block: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines()
            if line.startswith("|")]
    return [r for r in rows[2:]]  # after the header and the rule


def row_figures(summary: dict, key: str) -> list[float]:
    """frames 1/7, frame 4, mean on the test split, then frames 1/7 and frame 4 on the fresh test set."""
    kind = "reference" if key in summary["reference"] else "runs"
    test, fresh = summary[kind][key], summary["fresh_test"][kind][key]
    return [test["frames_1_7"], test["frame_4"], test["mean"], fresh["frames_1_7"], fresh["frame_4"]]


def check_block(path: str, block: str) -> int:
    summary = json.loads((REPO / path).read_text())
    rows = table_rows(block)
    assert rows, f"the README's results table citing {path} has no rows"
    keys = []
    for row in rows:
        key = re.search(r"`([^`]+)`", row[0])
        assert key, f"a results row must name its key in backticks: {row[0]!r}"
        key = key.group(1)
        keys.append(key)
        shown = [float(c) for c in row[1:6]]
        assert shown == [round(v, 2) for v in row_figures(summary, key)], (key, shown)
    # every run the demo trained is in the table
    assert set(summary["runs"]) <= set(keys), set(summary["runs"]) - set(keys)
    minutes = re.search(r"in ([\d.]+) min", block)
    assert minutes and float(minutes.group(1)) == round(summary["minutes"]), "the minutes must be the file's"
    return len(rows)


def test_readme_results_equal_their_result_files():
    blocks = results_blocks(README.read_text())
    assert blocks, "the README has no results table marked <!-- results: FILE -->"
    for path, block in blocks:
        assert check_block(path, block) >= 5


def test_a_changed_number_is_caught(tmp_path):
    """The check fails when one figure differs from the file (it is not a test that cannot fail)."""
    path, block = results_blocks(README.read_text())[0]
    rows = table_rows(block)
    cell = rows[0][1]
    changed = block.replace(f"| {cell} |", f"| {float(cell) + 0.01:.2f} |", 1)
    assert changed != block
    try:
        check_block(path, changed)
    except AssertionError:
        return
    raise AssertionError("a changed figure was not caught")

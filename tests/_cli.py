"""Helpers shared by the script tests (tests/ is on sys.path under pytest's default import mode)."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The product's scripts (run as `python <name>.py`) and the lab's (run as `python -m lab.<...>`).
SCRIPTS = ("generate_order", "inference", "prepare_dataset", "run_demo", "test_blur2vid", "test_hypercut",
           "train_blur2vid", "train_hypercut")
LAB_SCRIPTS = tuple(sorted(".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "lab").rglob("*.py")
                           if "def build_parser" in p.read_text()))


def one_line_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err

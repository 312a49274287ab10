"""Helpers shared by the script tests (tests/ is on sys.path under pytest's default import mode)."""
import pytest


def one_line_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err

"""Every script sets OpenMP's wait policy to PASSIVE before torch loads (utils/threads.py), unless the user
set one: spinning threads collapse a two-thread step on a busy machine."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("generate_order", "inference", "prepare_dataset", "lab/probe_order", "run_demo", "test_blur2vid",
           "test_hypercut", "train_blur2vid", "train_hypercut")


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_policy_is_the_first_import(script):
    tree = ast.parse((REPO / f"{script}.py").read_text())
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
               and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    first = imports[0]
    assert isinstance(first, ast.Import) and first.names[0].name == "utils.threads", script


@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_a_script_process_gets_passive_unless_the_user_chose(given):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import train_blur2vid, os, torch; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == (given or "PASSIVE")

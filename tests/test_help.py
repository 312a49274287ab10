"""--help of every script, product and lab: a description of one or two lines, every flag with its default (or
marked required), and an example command in the epilog that the script's own parser accepts."""
import argparse
import importlib
import os
import re
import shlex
import subprocess
import sys

import pytest

from _cli import LAB_SCRIPTS, REPO, SCRIPTS
from utils.cli import ArgumentParser

COLUMNS = "100"  # the width --help is formatted to (argparse reads $COLUMNS)


def parsers() -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(script, label, parser) for every script and every subcommand of one."""
    found = []
    for name in SCRIPTS + LAB_SCRIPTS:
        parser = importlib.import_module(name).build_parser()
        found.append((name, name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += [(name, f"{name} {sub}", p) for sub, p in action.choices.items()]
    return found


PARSERS = parsers()


def examples(epilog: str) -> list[str]:
    """The command lines of an epilog that start with python (continuation lines joined, comments cut)."""
    text = re.sub(r"\\\n\s*", " ", epilog or "")
    return [line.split("  #")[0].strip() for line in text.splitlines() if line.strip().startswith("python")]


def test_the_formatter_adds_each_default_once(monkeypatch):
    monkeypatch.setenv("COLUMNS", COLUMNS)
    p = ArgumentParser(description="One line.", epilog="example:\n  python x.py --n 3")
    p.add_argument("--n", type=int, default=2, help="how many")
    p.add_argument("--path", default=None, help="where")
    p.add_argument("--frames", type=int, nargs="+", default=[1, 7])
    p.add_argument("--fast", action="store_true", help="go fast")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--mode", default="auto", help="auto or fixed (default: auto, which picks one)")
    p.add_argument("--share", type=float, default=0.5, help="50%% of it")
    p.add_argument("--names", default="%03d.png", help="file names")
    text = p.format_help()
    assert "how many (default: 2)" in text
    assert "where (default: none)" in text
    assert "--frames FRAMES [FRAMES ...]\n                        (default: 1 7)" in text
    assert "go fast (default: off)" in text
    assert "dataset root (required)" in text
    assert "auto or fixed (default: auto, which picks one)\n" in text and text.count("default: auto") == 1
    assert "50% of it (default: 0.5)" in text and "file names (default: %03d.png)" in text
    assert text.endswith("example:\n  python x.py --n 3\n")


@pytest.mark.parametrize("script, label, parser", PARSERS, ids=[p[1] for p in PARSERS])
def test_help_is_short_with_defaults_and_an_example(script, label, parser, monkeypatch):
    monkeypatch.setenv("COLUMNS", COLUMNS)
    formatter = parser._get_formatter()
    formatter.add_text(parser.description)
    description = formatter.format_help().strip().splitlines()
    assert 1 <= len(description) <= 2, description
    missing = []
    for action in parser._actions:
        if not action.option_strings or action.default is argparse.SUPPRESS:
            continue  # positionals, subcommands, -h
        shown = " ".join(parser._get_formatter()._format_action(action).split())
        if "default" not in shown.lower() and "(required)" not in shown or shown.count("(default") > 1:
            missing.append(shown)
    assert missing == []
    commands = examples(parser.epilog)
    assert commands, f"{label}: no example in the epilog"
    invocation = f"python -m {script}" if script.startswith("lab.") else f"python {script}.py"
    for command in commands:
        assert command.startswith(invocation + " ") or command == invocation, command
        parser_of_script = importlib.import_module(script).build_parser()
        parser_of_script.parse_args(shlex.split(command[len(invocation):]))  # exits (a failure) on a bad flag


def test_every_script_has_its_help_checked():
    labels = {p[1] for p in PARSERS}
    assert set(SCRIPTS) <= labels and {"prepare_dataset synthetic", "prepare_dataset frames",
                                       "prepare_dataset summary"} <= labels
    assert {"lab.probe_order", "lab.shrink_figures", "lab.experiments.order_matrix", "lab.experiments.wide_report",
            "lab.experiments.backbone_table", "lab.experiments.ordering_figures", "lab.experiments.demo_matrix",
            "lab.experiments.learning_curves", "lab.benchmarks.bench", "lab.benchmarks.check_speed",
            "lab.benchmarks.loader_throughput", "lab.benchmarks.metrics_speed", "lab.benchmarks.authors_epoch"} == set(LAB_SCRIPTS)


@pytest.mark.parametrize("command", [["prepare_dataset.py", "frames"], ["-m", "lab.experiments.order_matrix"]])
def test_help_from_the_command_line(command):
    env = {**os.environ, "COLUMNS": COLUMNS}
    out = subprocess.run([sys.executable, *command, "--help"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)  # a few seconds (torch loads), far more on a busy machine
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage: ") and "(default: " in out.stdout and "\nexample" in out.stdout

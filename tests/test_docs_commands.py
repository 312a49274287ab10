"""The commands in README.md, docs/*.md and lab/*.md name flags, subcommands and choices that the scripts accept.

Every `python <script>.py ...` and `python -m lab.<module> ...` in a fenced block or an inline code span of
the documentation is read (continuation lines joined, `$VAR` expanded from the `VAR="..."` assignments above
it in the same file), and each `--flag` is looked up in the script's own parser (build_parser), exactly, as a
user would type it; a plain literal after a flag with fixed choices must be one of them. Placeholders (<exp>,
a|b, [..]) are not checked as values. A lab script run by its path (`python lab/x.py`) is an error: the lab
runs as modules from the repository root.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

from _cli import LAB_SCRIPTS, REPO, SCRIPTS

DOCS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md")) + sorted((REPO / "lab").glob("*.md"))

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`([^`\n]*(?:\n[^`\n]*)?)`")
_ASSIGN = re.compile(r"^\s*([A-Z][A-Z0-9_]*)=(\"[^\"]*\"|'[^']*'|\S+)\s*$")
_CALL = re.compile(r"\bpython3?\s+(?:(?:\S*/)?(" + "|".join(SCRIPTS) + r")\.py|-m\s+(lab(?:\.\w+)+))(?![\w./])(.*)")
_LAB_PATH = re.compile(r"\bpython3?\s+(\S*lab/\S+\.py)")


def _joined_lines(text: str) -> list[str]:
    out, cur = [], ""
    for line in text.splitlines():
        line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


def doc_commands(path: Path, text: str | None = None, whole: bool = False) -> list[tuple[str, str, str]]:
    """(script, argument string with $VARs expanded, where) for every script call in one document
    (whole=True: all of the text is one code block, as in a script's docstring)."""
    text = path.read_text() if text is None else text
    env: dict[str, str] = {}
    found = []
    # Fenced blocks in order (assignments carry to later blocks of the file), then inline spans.
    blocks = [(1, text)] if whole else [(text.count("\n", 0, b.start()) + 1, b.group(1)) for b in _FENCE.finditer(text)]
    for line_no, block in blocks:
        for line in _joined_lines(block):
            m = _ASSIGN.match(line)
            if m:
                env[m.group(1)] = m.group(2).strip("\"'")
                continue
            for call in _CALL.finditer(line):
                args = re.sub(r"\$\{?([A-Z][A-Z0-9_]*)\}?", lambda v: env.get(v.group(1), v.group(0)), call.group(3))
                found.append((call.group(1) or call.group(2), args, f"{path.name} block at line {line_no}"))
    if whole:
        return found
    prose = _FENCE.sub("", text)
    for span in _INLINE.finditer(prose):
        for call in _CALL.finditer(span.group(1).replace("\n", " ")):
            found.append((call.group(1) or call.group(2), call.group(3), f"{path.name} inline `{span.group(1)[:60]}`"))
    return found


def _tokens(args: str) -> list[str]:
    try:
        return shlex.split(args)
    except ValueError:  # an unbalanced quote in prose: fall back to whitespace
        return args.split()


def _parsers(name: str) -> dict[str | None, argparse.ArgumentParser]:
    """{subcommand or None: parser} of a script (a top-level script's name, or a lab module's)."""
    parser = importlib.import_module(name).build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {None: parser}
    return dict(subs[0].choices)


def _is_literal(token: str) -> bool:
    return not any(c in token for c in "<>|[]$*{}") and not token.startswith("-")


def check_call(name: str, args: str, parsers) -> list[str]:
    shown = name if name.startswith("lab.") else f"{name}.py"
    tokens = _tokens(args)
    if None in parsers:
        parser = parsers[None]
    else:
        words = [t for t in tokens if not t.startswith("-")]
        if not words or not _is_literal(words[0]):
            return []  # a placeholder subcommand
        if words[0] not in parsers:
            return [f"{shown}: unknown subcommand {words[0]!r} (known: {sorted(parsers)})"]
        parser = parsers[words[0]]
    known = parser._option_string_actions
    problems = []
    for i, token in enumerate(tokens):
        if not token.startswith("--") or token == "--":
            continue
        flag, _, inline_value = token.partition("=")
        flag = flag.rstrip("],.;:)`")
        if flag not in known:
            problems.append(f"{shown}: unknown flag {flag}")
            continue
        action = known[flag]
        value = inline_value or (tokens[i + 1] if i + 1 < len(tokens) else "")
        if action.choices is not None and action.nargs != 0 and _is_literal(value):
            value = value.rstrip("],.;:)`")
            if value not in action.choices and str(value) not in map(str, action.choices):
                problems.append(f"{shown}: {flag} {value!r} is not one of {list(action.choices)}")
    return problems


def test_the_reader_finds_commands_with_flags_and_expands_variables(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text('```\nCOMMON="--device cpu --epochs 2"\npython train_blur2vid.py --exp_name a \\\n'
                   '    $COMMON --loss_type naive  # a comment --not_a_flag\n```\n'
                   "Or inline: `python test_blur2vid.py --tile crop`.\n")
    calls = doc_commands(doc)
    assert [c[0] for c in calls] == ["train_blur2vid", "test_blur2vid"]
    assert _tokens(calls[0][1]) == ["--exp_name", "a", "--device", "cpu", "--epochs", "2", "--loss_type", "naive"]
    assert check_call(*calls[0][:2], _parsers("train_blur2vid")) == []


def test_a_wrong_flag_a_wrong_choice_and_a_wrong_subcommand_are_caught():
    assert check_call("train_blur2vid", "--exp_name a --loss_typ naive", _parsers("train_blur2vid")) == \
        ["train_blur2vid.py: unknown flag --loss_typ"]
    assert check_call("train_blur2vid", "--loss_type naiv", _parsers("train_blur2vid")) == \
        ["train_blur2vid.py: --loss_type 'naiv' is not one of " +
         str(list(_parsers("train_blur2vid")[None]._option_string_actions["--loss_type"].choices))]
    assert check_call("train_blur2vid", "--loss_type <loss>", _parsers("train_blur2vid")) == []
    assert check_call("prepare_dataset", "synthtic --out d", _parsers("prepare_dataset"))[0].startswith(
        "prepare_dataset.py: unknown subcommand 'synthtic'")
    assert check_call("prepare_dataset", "frames --out d --travel 1 2", _parsers("prepare_dataset")) == \
        ["prepare_dataset.py: unknown flag --travel"]


def _script_docstring_calls() -> list[tuple[str, str, str]]:
    calls = []
    for path in [REPO / f"{name}.py" for name in SCRIPTS] + sorted((REPO / "lab").rglob("*.py")):
        tree = ast.parse(path.read_text())
        calls += doc_commands(path, ast.get_docstring(tree) or "", whole=True)
    return calls


def test_the_reader_finds_lab_modules_and_refuses_lab_paths(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("```\npython -m lab.probe_order --metadata_root d --crop_size 0\n```\n"
                   "Run `python lab/probe_order.py --steps 3` (wrong) or `python -m lab.experiments.wide_report`.\n")
    calls = doc_commands(doc)
    assert [c[:2] for c in calls] == [("lab.probe_order", " --metadata_root d --crop_size 0"),
                                      ("lab.experiments.wide_report", "")]
    assert check_call("lab.probe_order", "--crop_sise 0", _parsers("lab.probe_order")) == \
        ["lab.probe_order: unknown flag --crop_sise"]
    assert _LAB_PATH.findall(doc.read_text()) == ["lab/probe_order.py"]
    assert {"lab.probe_order", "lab.experiments.order_matrix", "lab.benchmarks.bench"} <= set(LAB_SCRIPTS)


@pytest.mark.parametrize("doc", DOCS + ["script docstrings"],
                         ids=lambda p: str(p.relative_to(REPO)) if isinstance(p, Path) else p)
def test_documented_commands_match_the_parsers(doc):
    calls = _script_docstring_calls() if doc == "script docstrings" else doc_commands(doc)
    parsers = {}
    problems = []
    if doc != "script docstrings":
        problems += [f"{doc.name}: `python {p}`: run lab scripts as modules (python -m lab....)"
                     for p in _LAB_PATH.findall(doc.read_text())]
    for name, args, where in calls:
        if name not in SCRIPTS and name not in LAB_SCRIPTS:
            problems.append(f"{where}: {name}: no lab module with a build_parser (known: {', '.join(LAB_SCRIPTS)})")
            continue
        if name not in parsers:
            parsers[name] = _parsers(name)
        problems += [f"{where}: {p}" for p in check_call(name, args, parsers[name])]
    assert not problems, "\n".join(problems)
    # the reader really found the commands (the short README has one example per script)
    least = {REPO / "README.md": 10, REPO / "docs" / "usage.md": 20, REPO / "lab" / "ordering.md": 20,
             "script docstrings": 20}
    if doc in least:
        assert len(calls) >= least[doc], (len(calls), least[doc])

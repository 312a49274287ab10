"""The one command-line layer of every script.

- `ArgumentParser`: argparse whose errors are one line (`error: ...`, exit 2), not a usage block.
- Flag groups the scripts share, each flag declared once: `add_runtime_args` (--device, --batch_size,
  --num_workers), `add_data_args`, `add_train_args`; the reference's shared parser is covered
  by them with its flag names and meanings, plus this project's own flags.
- `Range` (`at_least`, `above`): a numeric flag's type and range, declared at the flag; argparse checks
  every value as it parses the command line.
- `check_flags`: what a range cannot say (distinct --target_frames, a readable --decay_type, writable
  outputs), before any work.
- `run_main`: the scripts' main(): a `UserError` becomes one `error: ...` line (exit 2), Ctrl-C one line
  (exit 130); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import re
import secrets
import signal
import sys
import textwrap
import threading
from pathlib import Path

from utils.errors import FlagError, UserError


class HelpFormatter(argparse.HelpFormatter):
    """--help as a user reads it: every flag ends with its default, unless its help already names one (or it
    is required); the description and epilog are wrapped, but their indented lines (example commands) are
    kept as written."""

    def _fill_text(self, text, width, indent):
        lines = []
        for line in text.splitlines():
            if line.startswith(" ") or not line.strip():
                lines.append(indent + line)
            else:
                lines += textwrap.wrap(line, width, initial_indent=indent, subsequent_indent=indent)
        return "\n".join(lines)

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or re.search(r"\bdefault", text, re.I):
            return text
        if action.required:
            note = "required"
        elif action.nargs == 0:  # a switch: --flag on, or off when it is not given
            note = "default: off"
        elif action.default is None or action.default == []:
            note = "default: none"
        elif isinstance(action.default, (list, tuple)):
            note = "default: " + " ".join(map(str, action.default))
        else:
            note = f"default: {action.default}"
        return f"{text} ({note.replace('%', '%%')})".strip()

    def _format_action(self, action):
        if action.option_strings and action.help is None:  # argparse prints nothing for a flag without help
            action = copy.copy(action)
            action.help = self._get_help_string(action)
        return super()._format_action(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line ends in one line like every other user error, and --help shows
    every flag's default (HelpFormatter): scripts give a one- or two-line description and an example in
    the epilog."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        # a Range's complaint reads like every other flag error: "--lr must be > 0 (got 0.0)"
        out_of_range = re.fullmatch(r"argument (-[^\s/:]+)\S*: (must be .*)", message)
        if out_of_range:
            message = f"{out_of_range[1]} {out_of_range[2]}"
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# --- ranges ---------------------------------------------------------------------------------------
# Every numeric flag declares its range as its type (tests/test_reliability.py walks the parsers to make
# sure). The upper bounds only stop values that would exhaust the machine before any useful work (a model
# of 10^30 channels, a million loader processes). Every float flag also stays finite and within
# +-FLOAT_LIMIT: the models and optimisers compute in float32 (max 3.4e38), where torch refuses larger
# scalars with an error from deep inside the optimiser step.
FLOAT_LIMIT = 1e30


class Range:
    """A numeric flag's type and range: `type=Range(float, 0, 1.0)` converts each value (every one of an
    nargs flag) and refuses one outside [low, high] (low excluded with low_excluded=True; None: no bound),
    and a float that is not finite or beyond FLOAT_LIMIT, in one line naming the flag."""

    def __init__(self, kind, low=None, high=None, *, low_excluded: bool = False):
        self.kind, self.low, self.high, self.low_excluded = kind, low, high, low_excluded
        self.__name__ = kind.__name__  # argparse names it in "invalid int value: 'x'"

    def __call__(self, text: str):
        value = self.kind(text)
        problem = self.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    def problem(self, value) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number (got {value})"
        if self.low is not None and (value <= self.low if self.low_excluded else value < self.low):
            return f"must be {'>' if self.low_excluded else '>='} {self.low} (got {value})"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high} (got {value})"
        if isinstance(value, float) and abs(value) > FLOAT_LIMIT:
            return (f"must be between -{FLOAT_LIMIT:g} and {FLOAT_LIMIT:g}: training computes in float32 "
                    f"(got {value})")
        return None


def at_least(low, high=None, kind=int) -> Range:
    """low <= value (<= high)."""
    return Range(kind, low, high)


def above(low, high=None, kind=float) -> Range:
    """low < value (<= high)."""
    return Range(kind, low, high, low_excluded=True)


SEED = at_least(0, 2 ** 32 - 1)  # what numpy accepts


# --- flag groups ----------------------------------------------------------------------------------

class AutoOr(Range):
    """A Range that also takes the word "auto" (kept as the string; the script resolves it)."""

    def __call__(self, text: str):
        return "auto" if text == "auto" else super().__call__(text)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def loader_workers(value) -> int:
    """--num_workers: an int as given; "auto" the reference's 8 bounded by this process's share of the cores
    (torchrun's LOCAL_WORLD_SIZE processes per machine share them), at least 1."""
    if value != "auto":
        return int(value)
    per_machine = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(8, usable_cores() // per_machine))


def add_runtime_args(parser: argparse.ArgumentParser, *, batch_size: int | None, num_workers: int | str = 2) -> None:
    """--device, and for scripts with a data loader (batch_size not None) --batch_size and --num_workers
    (num_workers="auto": resolved by loader_workers)."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    if batch_size is not None:
        g.add_argument("--batch_size", type=at_least(1, 2 ** 31 - 1), default=batch_size, help="sequences per batch")
        if num_workers == "auto":
            g.add_argument("--num_workers", type=AutoOr(int, 0, 256), default="auto",
                           help=f"data loader worker processes; auto: the reference's 8, bounded by the cores "
                                f"(divided among torchrun's processes on a machine): {loader_workers('auto')} "
                                f"here")
        else:
            g.add_argument("--num_workers", type=at_least(0, 256), default=num_workers,
                           help="data loader worker processes")


def add_data_args(parser: argparse.ArgumentParser, *, limits=("train", "val", "test"),
                  target_frames: bool = True) -> None:
    """The dataset: --metadata_root (required), --dataset_name (a label, used in default run names),
    --data_root, --target_frames, and --<split>_limit (first N entries of a split, as the reference)."""
    g = parser.add_argument_group("data")
    g.add_argument("--metadata_root", required=True, help="dataset root holding metadata.json (or the file itself)")
    g.add_argument("--dataset_name", default=None,
                   help="a name for the dataset in run names and reports (default: the metadata's 'name')")
    g.add_argument("--data_root", default=None,
                   help="resolve relative paths against this folder instead (default: the metadata file's folder)")
    if target_frames:
        g.add_argument("--target_frames", type=at_least(1), nargs="+", default=None,
                       help="1-based frames to load, distinct, in the order given: each sequence is loaded as "
                            "that list of its frames, so '7 6 5 4 3 2 1' loads it reversed (default: all, "
                            "in order)")
    g.add_argument("--quick_check", action="store_true",
                   help="before any work, read only the image headers (sizes) instead of decoding every "
                        "image in full (which also catches truncated files)")
    for split in limits:
        g.add_argument(f"--{split}_limit", type=at_least(1), default=None,
                       help=f"use only the first N {split} sequences (default: all)")


def add_train_args(parser: argparse.ArgumentParser, *, epochs: int = 100, lr: float = 5e-4,
                   crop_size: int = 256, val_epoch: int = 5, display_step: int = 100,
                   images: bool = True) -> None:
    """Run folder, schedule and optimisation: the reference's flags (with its defaults) and ours."""
    g = parser.add_argument_group("run")
    g.add_argument("--exp_name", default=None,
                   help="run name: everything goes to <checkpoints_dir>/<exp_name>/ (default: the reference's name)")
    g.add_argument("--checkpoints_dir", default="checkpoints", help="folder of the runs")
    g.add_argument("--seed", type=SEED, default=42, help="seed of the weights, crops and augmentations")
    g.add_argument("--resume", action="store_true", help="continue from the run's latest training state")
    g.add_argument("--load_epoch", type=at_least(0), default=None,
                   help="continue from the training state of this epoch (default: the latest, with --resume)")
    g.add_argument("--pretrained_path", default=None, help="start from these weights (a checkpoint of this model)")
    g.add_argument("--allow_changes", nargs="+", default=None, metavar="FLAG",
                   help="with --resume: apply these flags although they differ from the run's (e.g. lr batch_size); "
                        "any other difference that changes the run is refused. Recorded in args_resume.json, the "
                        "log and every later checkpoint (resume_history)")
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", "--num_epochs", dest="epochs", type=at_least(1), default=epochs, help="epochs to train")
    g.add_argument("--max_steps", type=at_least(1), default=None,
                   help="stop after this many optimiser steps (smoke runs; default: no limit)")
    g.add_argument("--time_limit", type=above(0), default=None,
                   help="minutes: end the run at the first step after this much training time in this call, as if "
                        "it were the last epoch (validated, model saved; --resume continues from the last complete "
                        "epoch; default: no limit)")
    g.add_argument("--crop_size", type=at_least(1), default=crop_size, help="training crop (square)")
    g.add_argument("--no_augment", action="store_true", help="train on the images as stored (crop only)")
    g.add_argument("--optimizer", default="ADAMax", choices=("SGD", "ADAM", "RMSprop", "ADAMax"), help="optimiser")
    g.add_argument("--lr", type=above(0), default=lr, help="learning rate")
    g.add_argument("--weight_decay", type=at_least(0, kind=float), default=0.0, help="L2 weight decay")
    g.add_argument("--decay_type", default="step",
                   help="'step' (x gamma every --lr_decay epochs) or 'step_a_b_c' (x gamma at epochs a, b, c)")
    g.add_argument("--lr_decay", type=at_least(1), default=3, help="epochs between decays of --decay_type step")
    g.add_argument("--gamma", type=above(0, 1.0), default=0.9, help="learning-rate decay factor, in (0, 1]")
    g = parser.add_argument_group("logging")
    g.add_argument("--val_epoch", type=at_least(1), default=val_epoch, help="validate and save every N epochs")
    g.add_argument("--state_every", type=at_least(1), default=1,
                   help="write the training state (training_states/latest.pth) every N epochs and at the last; "
                        "raise it for large models on short epochs")
    g.add_argument("--train_step", type=at_least(1), default=100, help="log the losses and lr every N steps")
    g.add_argument("--display_step", type=at_least(0), default=display_step,
                   help="every N steps: the mean loss of those steps in log.txt and a training visualisation (0: never)")
    if images:
        g.add_argument("--img_log_freq", type=at_least(1), default=None,
                       help="at validation, write a visualisation every N batches (default: the first batch only)")


def add_checkpoint_args(parser: argparse.ArgumentParser, what: str) -> None:
    """Which trained model a test script uses: --pretrained_path, or the latest model (or --load_epoch's)
    of run --exp_name, by default the run the matching train script names for the same flags."""
    g = parser.add_argument_group("model")
    g.add_argument("--pretrained_path", default=None,
                   help=f"{what} (default: the latest model of the run named by --exp_name)")
    g.add_argument("--exp_name", default=None, help="run whose model to use (default: the reference's run name)")
    g.add_argument("--load_epoch", type=at_least(0), default=None,
                   help="use the run's model of this epoch (default: latest)")
    g.add_argument("--checkpoints_dir", default="checkpoints", help="folder of the runs")


def add_eval_args(parser: argparse.ArgumentParser, splits) -> None:
    g = parser.add_argument_group("evaluation")
    g.add_argument("--split", default="test", choices=splits, help="split to evaluate")
    g.add_argument("--seed", type=SEED, default=42, help="seed of the draws for entries with order 'random'")
    g.add_argument("--output_json", default=None, help="also write the figures to this JSON file (default: print only)")


# --- checks ---------------------------------------------------------------------------------------

# Flags naming something a script writes: (kind, only when the script trains). Checked before any work,
# so a run does not end after hours on a folder it cannot write.
_OUTPUTS = {"output_json": ("file", False), "save_images": ("folder", False), "output_path": ("folder", False),
            "checkpoints_dir": ("folder", True)}


def parse_decay(decay_type: str, lr_decay: int = 3):
    """--decay_type: ("step", every N epochs) or ("multistep", [milestones])."""
    if decay_type == "step":
        return ("step", lr_decay)
    if decay_type.startswith("step_"):
        try:
            milestones = [int(v) for v in decay_type.split("_")[1:]]
        except ValueError:
            milestones = []
        if milestones and milestones[0] >= 1 and all(a < b for a, b in zip(milestones, milestones[1:])):
            return ("multistep", milestones)
    raise FlagError(f"--decay_type {decay_type!r}: use 'step' or 'step_a_b_c' with strictly increasing epochs >= 1 "
                    "(e.g. step_12_18_22)")


NAME_MAX = 255  # bytes in one file or folder name (ext4, xfs, btrfs, APFS, NTFS in UTF-16 units)


def long_name(path) -> str | None:
    """The first name in `path` longer than a file system takes, as one line; None when every name fits."""
    for part in Path(path).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            return f"the name {part[:24]}...{part[-8:]} is {size} bytes long; names stop at {NAME_MAX} bytes"
    return None


def output_problem(path, folder: bool) -> str | None:
    """Why `path` cannot be written (None when it can): a folder to create or fill (folder=True) or a file
    to create or replace. Looks at the nearest existing folder on the way; os.access also reports a
    read-only file system, for root too, and an empty file created and removed at once there finds folders
    that take no files whatever their permissions say (/proc, /sys)."""
    path = Path(path)
    too_long = long_name(path)
    if too_long:
        return f"{path} cannot be created: {too_long}"
    if path.exists():
        if folder and not path.is_dir():
            return f"{path} exists and is not a folder"
        if not folder and path.is_dir():
            return f"{path} is a folder; name a file"
        where = path if folder else path.parent
    else:
        where = next((p for p in path.absolute().parents if p.exists()), None)
        if where is None or not where.is_dir():
            return f"{path} cannot be created: {where} is not a folder"
    if not os.access(where, os.W_OK | os.X_OK):
        return f"{path} cannot be written: no write access to {where}"
    probe = where / f".probe.{secrets.token_hex(4)}.tmp"  # the atomic writers' temporary-file pattern
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return None
    except OSError as e:
        return f"{path} cannot be written: {where} takes no new files ({e.strerror or e})"
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def check_flags(args) -> None:
    """Before any work, what the flags' ranges (checked as they are parsed) cannot say: distinct
    --target_frames, a readable --decay_type, --allow_changes only with --resume, and write access to the
    outputs the flags name (_OUTPUTS); one FlagError listing every problem."""
    problems = []
    frames = getattr(args, "target_frames", None)
    if frames is not None and len(set(frames)) != len(frames):
        repeated = sorted({k for k in frames if frames.count(k) > 1})
        problems.append(f"--target_frames must be distinct (frame(s) {', '.join(map(str, repeated))} repeated)")
    if getattr(args, "decay_type", None) is not None:
        try:
            parse_decay(args.decay_type, getattr(args, "lr_decay", 3))
        except FlagError as e:
            problems.append(str(e))
    training = getattr(args, "resume", None) is not None
    if getattr(args, "allow_changes", None) and not (args.resume or args.load_epoch is not None):
        problems.append("--allow_changes applies to a resumed run: add --resume")
    for name, (kind, train_only) in _OUTPUTS.items():
        value = getattr(args, name, None)
        if value and (training or not train_only):
            problem = output_problem(value, folder=kind == "folder")
            if problem:
                problems.append(f"--{name} {problem}")
    if problems:
        raise FlagError("; ".join(problems))


# --- main -----------------------------------------------------------------------------------------

def error_line(exc: BaseException) -> str:
    """One line for a user error. Errors raised in DataLoader workers come back with the worker's
    traceback in the message: keep only its last line, without the exception's class name."""
    msg = str(exc).strip()
    if "Original Traceback" in msg:
        last = msg.splitlines()[-1].strip()
        head, sep, tail = last.partition(": ")
        msg = tail if sep and "Error" in head.split(".")[-1] else last
    return " ".join(msg.split()) or type(exc).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler ending a job), raised like Ctrl-C so that every clean-up that handles Ctrl-C
    handles it too; run_main ends it with exit 143."""


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_holding = {"active": False}


@contextlib.contextmanager
def _signals_blocked():
    """SIGINT and SIGTERM kept pending (not lost) by the kernel while the block runs, where the OS allows."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def interrupts_deferred(message: str | None = None):
    """Hold Ctrl-C (SIGINT) and SIGTERM back while the block runs, for steps that must not stop half-way (a
    file being saved, a finished dataset moved into place); one that came meanwhile is raised at the end as
    KeyboardInterrupt(message) (Terminated for SIGTERM), which run_main prints. Nested blocks hold until the
    outermost ends. A signal that is ignored stays ignored. Outside the main thread, nothing is held."""
    if threading.current_thread() is not threading.main_thread() or _holding["active"]:
        yield  # another thread, or inside a block that already holds (and raises at its end)
        return
    caught, previous = [], {}
    try:
        with _signals_blocked():  # the handlers change as one step: no signal lands between two of them
            _holding["active"] = True
            for sig in _HELD_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
        yield
    finally:
        with _signals_blocked():
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            _holding["active"] = False
    if caught:
        raise (Terminated if caught[0] == signal.SIGTERM else KeyboardInterrupt)(message or "")


def _terminated(signum, frame):
    raise Terminated()


def run_main(build_parser, body, argv=None, interrupted: str = "interrupted") -> int:
    """A script's main(): parse the command line, run body(args) (an int it returns is the exit code).
    A UserError ends in `error: <message>` (exit 2), Ctrl-C in `error: <interrupted>` (exit 130) and SIGTERM
    in the same line with "terminated (SIGTERM)" (exit 143), or in `error: <its message>` when the
    KeyboardInterrupt carries one (see interrupts_deferred)."""
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    if main_thread and previous is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _terminated)
    try:
        code = body(args)
    except UserError as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        message = str(e) or interrupted
        if isinstance(e, Terminated) and message.startswith("interrupted"):
            message = "terminated (SIGTERM)" + message[len("interrupted"):]
        print(f"error: {message}", file=sys.stderr)
        sys.exit(143 if isinstance(e, Terminated) else 130)
    finally:
        if main_thread and previous is not signal.SIG_IGN and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return code if isinstance(code, int) else 0

"""The one command-line layer of every script.

- `ArgumentParser`: argparse whose errors are one line (`error: ...`, exit 2), not a usage block.
- Flag groups the scripts share, each flag declared once: `add_runtime_args` (--device, --batch_size,
  --num_workers), `add_data_args`, `add_train_args`; the reference's shared parser (SPEC 9) is covered
  by them with its flag names and meanings, plus this project's own flags.
- `check_flags`: every numeric flag a script has is checked for range and finiteness before any work.
- `run_main`: the scripts' main(): a `UserError` becomes one `error: ...` line (exit 2), Ctrl-C one line
  (exit 130); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import math
import sys

from utils.errors import FlagError, UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line ends in one line like every other user error. Help keeps the
    script's docstring as written."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# --- flag groups ----------------------------------------------------------------------------------

def add_runtime_args(parser: argparse.ArgumentParser, *, batch_size: int | None, num_workers: int = 2) -> None:
    """--device, and for scripts with a data loader (batch_size not None) --batch_size and --num_workers."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    if batch_size is not None:
        g.add_argument("--batch_size", type=int, default=batch_size, help="sequences per batch")
        g.add_argument("--num_workers", type=int, default=num_workers, help="data loader worker processes")


def add_data_args(parser: argparse.ArgumentParser, *, limits=("train", "val", "test"),
                  target_frames: bool = True) -> None:
    """The dataset: --metadata_root (required), --dataset_name (a label, used in default run names),
    --data_root, --target_frames, and --<split>_limit (first N entries of a split, as the reference)."""
    g = parser.add_argument_group("data")
    g.add_argument("--metadata_root", required=True, help="dataset root holding metadata.json (or the file itself)")
    g.add_argument("--dataset_name", default=None,
                   help="a name for the dataset in run names and reports (default: the metadata's 'name')")
    g.add_argument("--data_root", default=None, help="resolve relative paths against this folder instead")
    if target_frames:
        g.add_argument("--target_frames", type=int, nargs="+", default=None,
                       help="1-based frames to load, distinct (default: all)")
    for split in limits:
        g.add_argument(f"--{split}_limit", type=int, default=None, help=f"use only the first N {split} sequences")


def add_train_args(parser: argparse.ArgumentParser, *, epochs: int = 100, lr: float = 5e-4,
                   crop_size: int = 256, val_epoch: int = 5, display_step: int = 100,
                   images: bool = True) -> None:
    """Run folder, schedule and optimisation: the reference's flags (SPEC 9 defaults) and ours."""
    g = parser.add_argument_group("run")
    g.add_argument("--exp_name", default=None,
                   help="run name: everything goes to <checkpoints_dir>/<exp_name>/ (default: the reference's name)")
    g.add_argument("--checkpoints_dir", default="checkpoints")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--resume", action="store_true", help="continue from the run's latest training state")
    g.add_argument("--load_epoch", type=int, default=None, help="continue from the training state of this epoch")
    g.add_argument("--pretrained_path", default=None, help="start from these weights (a checkpoint of this model)")
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", "--num_epochs", dest="epochs", type=int, default=epochs)
    g.add_argument("--max_steps", type=int, default=None, help="stop after this many optimiser steps (smoke runs)")
    g.add_argument("--crop_size", type=int, default=crop_size, help="training crop (square)")
    g.add_argument("--no_augment", action="store_true", help="train on the images as stored (crop only)")
    g.add_argument("--optimizer", default="ADAMax", choices=("SGD", "ADAM", "RMSprop", "ADAMax"))
    g.add_argument("--lr", type=float, default=lr, help="learning rate")
    g.add_argument("--weight_decay", type=float, default=0.0)
    g.add_argument("--decay_type", default="step",
                   help="'step' (x gamma every --lr_decay epochs) or 'step_a_b_c' (x gamma at epochs a, b, c)")
    g.add_argument("--lr_decay", type=int, default=3, help="epochs between decays of --decay_type step")
    g.add_argument("--gamma", type=float, default=0.9, help="learning-rate decay factor")
    g = parser.add_argument_group("logging")
    g.add_argument("--val_epoch", type=int, default=val_epoch, help="validate and save every N epochs")
    g.add_argument("--train_step", type=int, default=100, help="log the losses and lr every N steps")
    g.add_argument("--display_step", type=int, default=display_step,
                   help="write a training visualisation every N steps (0: never)")
    if images:
        g.add_argument("--img_log_freq", type=int, default=None,
                       help="at validation, write a visualisation every N batches (default: the first batch only)")


def add_checkpoint_args(parser: argparse.ArgumentParser, what: str) -> None:
    """Which trained model a test script uses: --pretrained_path, or the latest model (or --load_epoch's)
    of run --exp_name, by default the run the matching train script names for the same flags."""
    g = parser.add_argument_group("model")
    g.add_argument("--pretrained_path", default=None,
                   help=f"{what} (default: the latest model of the run named by --exp_name)")
    g.add_argument("--exp_name", default=None, help="run whose model to use (default: the reference's run name)")
    g.add_argument("--load_epoch", type=int, default=None, help="use the run's model of this epoch (default: latest)")
    g.add_argument("--checkpoints_dir", default="checkpoints")


def add_eval_args(parser: argparse.ArgumentParser, splits) -> None:
    g = parser.add_argument_group("evaluation")
    g.add_argument("--split", default="test", choices=splits)
    g.add_argument("--seed", type=int, default=42, help="seed of the draws for entries with order 'random'")
    g.add_argument("--output_json", default=None, help="also write the figures to this JSON file")


# --- checks ---------------------------------------------------------------------------------------

# name -> (lowest allowed, whether the lowest is excluded); every value must also be finite.
_RANGES = {
    "batch_size": (1, False), "num_workers": (0, False), "epochs": (1, False), "max_steps": (1, False),
    "crop_size": (1, False), "val_epoch": (1, False), "train_step": (1, False), "display_step": (0, False),
    "img_log_freq": (1, False), "lr_decay": (1, False), "lr": (0, True), "weight_decay": (0, False),
    "gamma": (0, True), "load_epoch": (0, False), "train_limit": (1, False), "val_limit": (1, False),
    "test_limit": (1, False), "alpha": (0, False), "width_mult": (0, True), "out_dim": (1, False),
    "slope": (None, False), "mu": (0, False), "embed_weight": (0, False), "center_weight": (0, False),
    "center_width_mult": (0, True),
}


def parse_decay(decay_type: str, lr_decay: int = 3):
    """--decay_type: ("step", every N epochs) or ("multistep", [milestones])."""
    if decay_type == "step":
        return ("step", lr_decay)
    if decay_type.startswith("step_"):
        try:
            milestones = [int(v) for v in decay_type.split("_")[1:]]
        except ValueError:
            milestones = []
        if milestones and milestones == sorted(milestones):
            return ("multistep", milestones)
    raise FlagError(f"--decay_type {decay_type!r}: use 'step' or 'step_a_b_c' with increasing epochs")


def check_flags(args) -> None:
    """Range and finiteness of every numeric flag the script has (see _RANGES), and distinct
    --target_frames; one FlagError listing every problem."""
    problems = []
    for name, (low, strict) in _RANGES.items():
        value = getattr(args, name, None)
        if value is None or isinstance(value, bool):
            continue
        flag = f"--{name}"
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{flag} must be a finite number (got {value})")
        elif low is not None and (value <= low if strict else value < low):
            problems.append(f"{flag} must be {'>' if strict else '>='} {low} (got {value})")
    frames = getattr(args, "target_frames", None)
    if frames is not None and len(set(frames)) != len(frames):
        repeated = sorted({k for k in frames if frames.count(k) > 1})
        problems.append(f"--target_frames must be distinct (frame(s) {', '.join(map(str, repeated))} repeated)")
    if getattr(args, "decay_type", None) is not None:
        try:
            parse_decay(args.decay_type, getattr(args, "lr_decay", 3))
        except FlagError as e:
            problems.append(str(e))
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


def run_main(build_parser, body, argv=None, interrupted: str = "interrupted") -> int:
    """A script's main(): parse the command line, run body(args) (an int it returns is the exit code).
    A UserError ends in `error: <message>` (exit 2), Ctrl-C in `error: <interrupted>` (exit 130)."""
    args = build_parser().parse_args(argv)
    try:
        code = body(args)
    except UserError as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr)
        sys.exit(130)
    return code if isinstance(code, int) else 0

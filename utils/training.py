"""What every training script shares: arguments, the run folder, optimiser and schedule, loaders,
checkpoint/resume, logging. The train scripts stay thin: they build a model and a step function and
hand them to this module's pieces.

Exact resume: the shuffle order is a function of (seed, epoch) (DistributedSampler with set_epoch, also
with one process) and the augmentation of (seed, epoch, index) (see datasets/blur2vid.py); the state
saved at the end of every epoch holds the model, optimiser, scheduler and RNG states, so `--resume`
continues with the same losses an uninterrupted run would give (on CPU).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from utils.checkpoint import CheckpointError, atomic_write_text, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from utils.device import resolve_device


# --- arguments ------------------------------------------------------------------------------------

class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line ends in one line (`error: ...`, exit code 2) like every other
    user error, instead of the usage block followed by the message."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_data_args(parser: argparse.ArgumentParser, dataset_default: str = "Synthetic") -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--dataset_name", default=dataset_default, help="a label for logs (the data comes from --metadata_root)")
    g.add_argument("--metadata_root", required=True, help="dataset root holding metadata.json (or the file itself)")
    g.add_argument("--data_root", default=None, help="resolve relative paths against this folder instead")
    g.add_argument("--target_frames", type=int, nargs="+", default=None, help="1-based frames to load (default: all)")
    g.add_argument("--num_workers", type=int, default=2, help="data loader worker processes")


def add_common_args(parser: argparse.ArgumentParser, *, epochs: int = 100, batch_size: int = 8,
                    lr: float = 5e-4, crop_size: int = 256, val_epoch: int = 5) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--exp_name", required=True, help="run name: everything goes to <checkpoints_dir>/<exp_name>/")
    g.add_argument("--checkpoints_dir", default="checkpoints")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch_size", type=int, default=batch_size)
    g.add_argument("--lr", type=float, default=lr, help="Adamax learning rate")
    g.add_argument("--decay_type", default="step", help="'step' (x0.9 every 3 epochs) or 'step_a_b_c' (milestones)")
    g.add_argument("--gamma", type=float, default=0.9, help="learning-rate decay factor")
    g.add_argument("--crop_size", type=int, default=crop_size, help="training crop (square)")
    g.add_argument("--no_augment", action="store_true", help="train on the images as stored (crop only)")
    g.add_argument("--val_epoch", type=int, default=val_epoch, help="validate and save every N epochs")
    g.add_argument("--max_steps", type=int, default=None, help="stop after this many optimiser steps (smoke runs)")
    g.add_argument("--resume", action="store_true", help="continue from the run's latest training state")
    g.add_argument("--load_epoch", type=int, default=None, help="continue from the training state of this epoch")


def check_eval_loader_args(args) -> None:
    """--batch_size and --num_workers of the evaluation scripts; one ValueError naming the flag."""
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1 (got {args.batch_size})")
    if args.num_workers < 0:
        raise ValueError(f"--num_workers must be >= 0 (got {args.num_workers})")


def validate_common_args(args) -> None:
    problems = []
    for name in ("epochs", "batch_size", "val_epoch", "crop_size"):
        if getattr(args, name) < 1:
            problems.append(f"--{name} must be >= 1 (got {getattr(args, name)})")
    if args.lr <= 0:
        problems.append(f"--lr must be > 0 (got {args.lr})")
    if args.num_workers < 0:
        problems.append(f"--num_workers must be >= 0 (got {args.num_workers})")
    if args.max_steps is not None and args.max_steps < 1:
        problems.append("--max_steps must be >= 1")
    parse_decay(args.decay_type)
    if problems:
        raise ValueError("; ".join(problems))


def parse_decay(decay_type: str):
    if decay_type == "step":
        return ("step", 3)
    if decay_type.startswith("step_"):
        try:
            milestones = [int(v) for v in decay_type.split("_")[1:]]
        except ValueError:
            milestones = []
        if milestones and milestones == sorted(milestones):
            return ("multistep", milestones)
    raise ValueError(f"--decay_type {decay_type!r}: use 'step' or 'step_a_b_c' with increasing epochs")


def build_optimizer(params, args) -> torch.optim.Optimizer:
    # Reference defaults (SPEC 9): Adamax, betas (0.9, 0.999), eps 1e-8, no weight decay.
    return torch.optim.Adamax(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


def build_scheduler(optimizer, args):
    """Stepped once per epoch."""
    kind, value = parse_decay(args.decay_type)
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=value, gamma=args.gamma)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=value, gamma=args.gamma)


# --- processes and seeds --------------------------------------------------------------------------

class DistInfo:
    """Rank and world size from torchrun's environment; one process otherwise."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_process(device_name: str):
    """Resolve the device and, under torchrun, join the process group (nccl on CUDA, gloo on CPU)."""
    dist_info = DistInfo()
    device = resolve_device(device_name)
    if dist_info.distributed:
        import torch.distributed as dist
        if device.type == "cuda":
            device = torch.device("cuda", dist_info.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, dist_info


@contextlib.contextmanager
def denormals_flushed():
    """Flush denormal floats to zero on CPU for the duration of a training run.

    Late in training, gradients such as sigmoid(large negative) underflow into denormals, and x86 CPUs
    process those many times slower (measured on HyperCUT: a 2.5x slower epoch). Flushing them changes
    nothing that matters. The switch is process-wide, so torch's default is restored afterwards.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loader(dataset, batch_size: int, *, train: bool, num_workers: int, seed: int,
                dist_info: DistInfo | None = None, device: torch.device | None = None) -> DataLoader:
    """Training loaders shuffle with a (seed, epoch) permutation: call loader.sampler.set_epoch(e)."""
    dist_info = dist_info or DistInfo()
    sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                 shuffle=train, seed=seed, drop_last=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=train and len(dataset) >= batch_size * dist_info.world_size,
                      pin_memory=device is not None and device.type == "cuda",
                      persistent_workers=False)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


# --- the run folder -------------------------------------------------------------------------------

class Run:
    """checkpoints/<exp_name>/: args.json, log.txt, TensorBoard events, models/NNNN.pth,
    training_states/NNNN.pth and latest.pth, and visualisations. Only rank 0 writes."""

    def __init__(self, args, dist_info: DistInfo | None = None):
        self.dist = dist_info or DistInfo()
        self.dir = Path(args.checkpoints_dir) / args.exp_name
        self.models_dir = self.dir / "models"
        self.states_dir = self.dir / "training_states"
        self.vis_dir = self.dir / "visualisations"
        resuming = args.resume or args.load_epoch is not None
        if self.dist.is_main:
            used = any(d.exists() and any(d.iterdir()) for d in (self.states_dir, self.models_dir))
            if not resuming and used:
                raise FileExistsError(f"{self.dir} already holds a run; pass --resume to continue it "
                                      "or choose another --exp_name")
            for d in (self.models_dir, self.states_dir, self.vis_dir):
                d.mkdir(parents=True, exist_ok=True)
            # args.json keeps the arguments the run started with; a resume records its own beside it.
            name = "args_resume.json" if resuming and (self.dir / "args.json").exists() else "args.json"
            atomic_write_text(self.dir / name, json.dumps(vars(args), indent=2, default=str) + "\n")
        self.logger = self._make_logger()
        self._writer = None

    def _make_logger(self) -> logging.Logger:
        logger = logging.getLogger(f"run.{self.dir}")
        logger.handlers.clear()
        logger.propagate = False
        logger.setLevel(logging.INFO if self.dist.is_main else logging.WARNING)
        fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        out = logging.StreamHandler(sys.stdout)
        out.setFormatter(fmt)
        logger.addHandler(out)
        if self.dist.is_main:
            fh = logging.FileHandler(self.dir / "log.txt")
            fh.setFormatter(fmt)
            logger.addHandler(fh)
        return logger

    def log(self, msg: str) -> None:
        self.logger.info(msg)

    @property
    def writer(self):
        """TensorBoard writer (rank 0 only; None elsewhere)."""
        if self._writer is None and self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
        return self._writer

    def scalars(self, values: dict, step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # checkpoints

    def save_model(self, epoch: int, payload: dict) -> Path | None:
        if not self.dist.is_main:
            return None
        path = self.models_dir / f"{epoch:04d}.pth"
        save_checkpoint(payload, path)
        return path

    def save_state(self, epoch: int, payload: dict, numbered: bool) -> None:
        """The full training state: latest.pth every epoch, NNNN.pth at validation epochs."""
        if not self.dist.is_main:
            return
        payload = dict(payload, rng=rng_state())
        save_checkpoint(payload, self.states_dir / "latest.pth")
        if numbered:
            save_checkpoint(payload, self.states_dir / f"{epoch:04d}.pth")

    def resume_state(self, args) -> dict | None:
        """The training state to continue from, or None for a fresh run."""
        if args.load_epoch is not None:
            path = self.states_dir / f"{args.load_epoch:04d}.pth"
        elif args.resume:
            path = self.states_dir / "latest.pth"
        else:
            return None
        if not path.exists():
            raise CheckpointError(f"no training state to resume at {path}: is --exp_name right? "
                                  f"(saved states: {sorted(p.name for p in self.states_dir.glob('*.pth')) or 'none'})")
        return load_checkpoint(path)


def restore_training_state(state: dict, model, optimizer, scheduler) -> tuple[int, int]:
    """Load a saved training state; returns (next epoch, global step)."""
    for key in ("model", "optimizer", "scheduler", "epoch", "step"):
        if key not in state:
            raise CheckpointError(f"training state lacks '{key}': not a state saved by this project's train scripts")
    try:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"training state does not fit this model/optimiser (other flags than the "
                              f"run it came from?): {first[:300]}") from None
    set_rng_state(state.get("rng"))
    return int(state["epoch"]) + 1, int(state["step"])


def plain_args(args) -> dict:
    """The arguments as plain values (what torch.load(weights_only=True) can read back)."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}


def training_payload(model, optimizer, scheduler, epoch: int, step: int, args, extra: dict) -> dict:
    return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step,
            "args": plain_args(args), **extra}


def progress(iterable, dist_info: DistInfo | None = None, **kwargs):
    """A tqdm bar on rank 0 when attached to a terminal."""
    from tqdm import tqdm
    dist_info = dist_info or DistInfo()
    return tqdm(iterable, disable=None if dist_info.is_main else True, dynamic_ncols=True, **kwargs)


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def fail(msg: str, code: int = 2) -> "None":
    """End a script with one line naming what to fix."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


# --- evaluation -----------------------------------------------------------------------------------

def collate_by_size(items: list) -> list:
    """Evaluation collate: the items of a batch grouped by tensor shapes (val/test images are used at
    full size, and a dataset may mix sizes), each group collated on its own. Returns a list of batches."""
    from torch.utils.data import default_collate
    groups: dict = {}
    for item in items:
        key = tuple(tuple(v.shape) for v in item.values() if torch.is_tensor(v))
        groups.setdefault(key, []).append(item)
    return [default_collate(group) for group in groups.values()]


def make_eval_loader(dataset, batch_size: int, num_workers: int, device: torch.device | None = None) -> DataLoader:
    """Val/test loader on one process: every item once, in dataset order; yields lists of batches
    (see collate_by_size)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_by_size, pin_memory=device is not None and device.type == "cuda")


@torch.no_grad()
def hypercut_scores(model, loader: DataLoader, device: torch.device, desc: str = "scoring") -> torch.Tensor:
    """Hyperplane scores (N, 6) of every sequence of an eval loader (make_eval_loader) in dataset
    order: h(d1), h(dbar1), h(d2), h(dbar2), h(d3), h(dbar3) (SPEC 4). Runs the model in eval mode,
    in float32, and leaves the global RNG as it was (validation must not shift a training run)."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    scores = torch.full((len(loader.dataset), 6), float("nan"), dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        for batches in progress(loader, desc=desc, unit="batch", leave=False):
            for batch in batches:
                _, s = model(batch["frames"].to(device, non_blocking=True))
                scores[batch["index"]] = s.float().cpu()
    model.train(was_training)
    return scores


def error_line(exc: BaseException) -> str:
    """One line for a user-facing error. Errors raised in DataLoader workers come back with the worker's
    traceback in the message: keep only its last line, without the exception's class name."""
    msg = str(exc).strip()
    if "Original Traceback" in msg:
        last = msg.splitlines()[-1].strip()
        head, sep, tail = last.partition(": ")
        msg = tail if sep and "Error" in head.split(".")[-1] else last
    return " ".join(msg.split()) or type(exc).__name__


def run_training_main(build_parser, check_args, train, argv=None) -> int:
    """The train scripts' main(): parse, check, train; a user's mistake ends in one error line."""
    from datasets.metadata import MetadataError
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        train(args)
    except (MetadataError, CheckpointError, FileExistsError, ValueError) as e:
        fail(error_line(e))
    except KeyboardInterrupt:
        fail("interrupted; continue with --resume (from the last finished epoch)", code=130)
    return 0

"""The run folder: <checkpoints_dir>/<exp_name>/ with args.json, log.txt, tensorboard/, models/NNNN.pth,
training_states/ (latest.pth and NNNN.pth) and visualisations/. Only rank 0 writes.

Default run names are the reference's: `HyperCUT_<f_func>_<g_func>_2frames_dim<out_dim>_<dataset>` and
`Blur2Vid_<backbone>_<loss_type>_2frames_<dataset>` (the "2frames" is the reference's own constant).
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

from utils.checkpoint import (CheckpointError, atomic_write_text, load_checkpoint, remove_orphan_temps, rng_state,
                              save_checkpoint, set_rng_state, state_dict_mismatch)
from utils.distributed import DistInfo, unwrap
from utils.errors import RunFolderError


def _safe(name: str) -> str:
    """A dataset name fit for a folder name."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(name)).strip("-.") or "dataset"


def hypercut_run_name(f_func: str, g_func: str, out_dim: int, dataset_name: str) -> str:
    return f"HyperCUT_{f_func}_{g_func}_2frames_dim{out_dim}_{_safe(dataset_name)}"


def blur2vid_run_name(backbone: str, loss_type: str, dataset_name: str) -> str:
    return f"Blur2Vid_{backbone}_{loss_type}_2frames_{_safe(dataset_name)}"


def saved_models(run_dir) -> list[Path]:
    """models/NNNN.pth of a run, by epoch."""
    models = Path(run_dir) / "models"
    found = [p for p in models.glob("*.pth") if p.stem.isdigit()] if models.is_dir() else []
    return sorted(found, key=lambda p: int(p.stem))


def runs_with_models(checkpoints_dir) -> list[str]:
    root = Path(checkpoints_dir)
    return sorted(d.name for d in root.iterdir() if d.is_dir() and saved_models(d)) if root.is_dir() else []


def find_model(checkpoints_dir, exp_name: str, epoch: int | None = None) -> Path:
    """The model of run `exp_name` saved at `epoch` (default: the latest). One RunFolderError naming the
    runs that do exist when there is none."""
    run_dir = Path(checkpoints_dir) / exp_name
    models = saved_models(run_dir)
    if not models:
        others = runs_with_models(checkpoints_dir)
        raise RunFolderError(
            f"no saved model in {run_dir}/models: train it first, or pass --pretrained_path or --exp_name; "
            + (f"runs in {checkpoints_dir}: {', '.join(others)}" if others else f"{checkpoints_dir} holds no run"))
    if epoch is None:
        return models[-1]
    for p in models:
        if int(p.stem) == epoch:
            return p
    raise RunFolderError(f"{run_dir} has no model of epoch {epoch} (--load_epoch); saved epochs: "
                         f"{', '.join(str(int(p.stem)) for p in models)}")


def resolve_pretrained(args, default_exp_name: str, log=print) -> Path:
    """--pretrained_path when given; otherwise the model of run --exp_name (default `default_exp_name`) at
    --load_epoch (default: its latest), announced with `log`."""
    if args.pretrained_path:
        return Path(args.pretrained_path)
    path = find_model(args.checkpoints_dir, args.exp_name or default_exp_name, args.load_epoch)
    log(f"evaluating {path}")
    return path


class Run:
    """The run folder of a training script (see the module docstring)."""

    def __init__(self, args, dist_info: DistInfo | None = None):
        started = time.time()
        self.dist = dist_info or DistInfo()
        self.dir = Path(args.checkpoints_dir) / args.exp_name
        self.models_dir = self.dir / "models"
        self.states_dir = self.dir / "training_states"
        self.vis_dir = self.dir / "visualisations"
        resuming = args.resume or args.load_epoch is not None
        orphans = []
        if self.dist.is_main:
            # temporary files of saves that a killed process (SIGKILL, power loss) never finished
            orphans = [p for d in (self.dir, self.models_dir, self.states_dir, self.vis_dir)
                       for p in remove_orphan_temps(d, older_than=started)]
            used = any(d.exists() and any(d.iterdir()) for d in (self.states_dir, self.models_dir))
            if not resuming and used:
                raise RunFolderError(f"{self.dir} already holds a run: pass --resume to continue it, or "
                                     "--exp_name NAME to start another beside it")
            for d in (self.models_dir, self.states_dir, self.vis_dir):
                d.mkdir(parents=True, exist_ok=True)
            # args.json keeps the arguments the run started with; a resume records its own beside it.
            name = "args_resume.json" if resuming and (self.dir / "args.json").exists() else "args.json"
            atomic_write_text(self.dir / name, json.dumps(vars(args), indent=2, default=str, allow_nan=False) + "\n")
        self.logger = self._make_logger()
        self._writer = None
        if self.dist.is_main and orphans:
            self.log(f"removed {len(orphans)} unfinished temporary file(s) of an interrupted save: "
                     + ", ".join(p.name for p in orphans[:3]) + (", ..." if len(orphans) > 3 else ""))

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
        for h in self.logger.handlers:
            h.flush()
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


def plain_args(args) -> dict:
    """The arguments as plain values (what torch.load(weights_only=True) can read back)."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}


def training_payload(model, optimizer, scheduler, epoch: int, step: int, args, extra: dict) -> dict:
    return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step,
            "args": plain_args(args), **extra}


def restore_training_state(state: dict, model, optimizer, scheduler) -> tuple[int, int]:
    """Load a saved training state into the model, optimiser and scheduler and restore the RNG streams;
    returns (next epoch, global step). A state that lacks a part, or does not fit, is one CheckpointError."""
    lacking = [k for k in ("model", "optimizer", "scheduler", "epoch", "step", "rng") if k not in state]
    if lacking:
        raise CheckpointError(f"the training state lacks {', '.join(lacking)}: not a complete state saved by "
                              "this project's train scripts")
    problem = state_dict_mismatch(unwrap(model).state_dict(), state["model"])
    if problem:
        raise CheckpointError(f"the training state's model does not fit this model (other flags than the run "
                              f"it came from?): {problem}")
    saved_groups = state["optimizer"].get("param_groups", [])
    own_groups = optimizer.param_groups
    if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in own_groups]:
        raise CheckpointError("the training state's optimiser holds other parameters than this model's "
                              "(other flags than the run it came from?)")
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["epoch"]) + 1, int(state["step"])

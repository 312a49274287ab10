"""The run folder: <checkpoints_dir>/<exp_name>/ with args.json, log.txt, tensorboard/, models/NNNN.pth,
training_states/ (latest.pth and NNNN.pth) and visualisations/. Only rank 0 writes.

Default run names are the reference's: `HyperCUT_<f_func>_<g_func>_2frames_dim<out_dim>_<dataset>` and
`Blur2Vid_<backbone>_<loss_type>_2frames_<dataset>` (the "2frames" is the reference's own constant).
"""
from __future__ import annotations

import bisect
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from utils.checkpoint import (CheckpointError, atomic_write_text, load_checkpoint, remove_orphan_temps, rng_state,
                              save_checkpoint, set_rng_state, state_dict_mismatch, write_error)
from utils.cli import output_problem
from utils.distributed import DistInfo, unwrap
from utils.errors import FlagError, RunFolderError
from utils.lock import LOCK_NAME, FolderLock
from utils.outputs import Inputs, check_folder_outputs


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


# --- what --resume may change -------------------------------------------------------------------------
# A resumed run continues with the flags it was saved with; resume_changes lists the differences. These may
# differ freely (they change how long, where and how verbosely the run goes, not what it computes):
RESUME_FREE = {"epochs", "max_steps", "time_limit", "device", "num_workers", "val_epoch", "state_every", "train_step",
               "display_step", "img_log_freq", "quick_check", "channels_last", "skip_nonfinite", "checkpoints_dir",
               "exp_name", "dataset_name", "resume", "load_epoch", "allow_changes"}
# the run folder's own records, not flags
RESUME_RECORDS = {"resume_history", "resolved_paths", "trained_crop"}
# fixed by the saved weights: the model and which of its parts train (a --center_path network is frozen)
RESUME_FIXED = {"backbone", "width_mult", "center_width_mult", "stage", "middle_frame", "train_decoder", "train_center",
                "center_path", "out_dim", "f_func", "g_func", "slope", "lowpass"}
# these only choose a new run's starting weights; a resumed run takes its weights from the saved state
STARTUP_ONLY = ("pretrained_path", "stage1_path")
PATH_FLAGS = ("metadata_root", "data_root", "hypercut_path", "center_path") + STARTUP_ONLY
# applied by restore_training_state: the optimiser and its schedule
OPTIMISER_FLAGS = {"optimizer", "lr", "weight_decay", "decay_type", "lr_decay", "gamma"}


def _resolved(value) -> str | None:
    """A path flag as one absolute real path (a dataset root means its metadata.json), so that the same file
    named differently (relative, through a link) is the same."""
    if value in (None, ""):
        return None
    path = os.path.realpath(str(value))
    meta = os.path.join(path, "metadata.json")
    return meta if os.path.isdir(path) and os.path.isfile(meta) else path


def resolved_paths(flags: dict) -> dict:
    return {k: _resolved(flags[k]) for k in PATH_FLAGS if flags.get(k) not in (None, "")}


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def resume_changes(saved: dict, flags: dict) -> dict:
    """{flag: (the run's value, the value now)} of every flag that differs from `saved` (the arguments the
    training state was saved with) and may change what the run computes. Path flags compare as real paths;
    flags the saved arguments do not know are not compared."""
    paths = saved.get("resolved_paths") or {}
    changes = {}
    for key, now in sorted(flags.items()):
        if key in RESUME_FREE or key in RESUME_RECORDS or key in STARTUP_ONLY or key not in saved:
            continue
        before = saved[key]
        if key in PATH_FLAGS:
            same = (paths.get(key) or _resolved(before)) == _resolved(now)
        else:
            same = _plain(before) == _plain(now)
        if not same:
            changes[key] = (before, now)
    return changes


def _flag_names(values) -> set:
    return {str(v).lstrip("-") for v in values or ()}


def check_resume_args(saved: dict, flags: dict, epoch: int, source: str) -> tuple[dict, dict]:
    """Compare the flags with the run's (`saved`, from `source`) before a resume; returns the changes the user
    allowed (--allow_changes), which the caller applies, and the flags the resumed run goes on with. Refused, as
    one FlagError: a change of the model (RESUME_FIXED), a starting-weights flag other than the run's, and any
    other change not allowed. A starting-weights flag left out takes the run's value, so the run's files state
    where it started."""
    allowed = _flag_names(flags.get("allow_changes"))
    unknown = sorted(a for a in allowed if a not in flags or a in RESUME_FREE or a in RESUME_RECORDS)
    if unknown:
        raise FlagError(f"--allow_changes {' '.join(unknown)}: not a flag of this script that a resume compares")
    paths = saved.get("resolved_paths") or {}
    flags = dict(flags)
    for key in STARTUP_ONLY:
        now = flags.get(key)
        if key not in flags or key not in saved:
            continue
        if now in (None, ""):
            flags[key] = saved[key]
        elif (paths.get(key) or _resolved(saved[key])) != _resolved(now):
            raise FlagError(f"--{key} {now}: it only chooses a new run's starting weights, and --resume continues "
                            f"from the saved state (this run started from {saved[key] or 'fresh weights'}); "
                            "leave it out")
    changes = resume_changes(saved, flags)
    fixed = [k for k in changes if k in RESUME_FIXED]
    if fixed:
        k = fixed[0]
        raise FlagError(f"--resume: --{k} {changes[k][1]} differs from the run's {changes[k][0]}, which the saved "
                        "weights and optimiser state are for: give the run's value, or start a new run with --exp_name")
    refused = [k for k in changes if k not in allowed]
    if refused:
        listed = ", ".join(f"--{k} {changes[k][0]} -> {changes[k][1]}" for k in refused)
        raise FlagError(f"--resume: the flags differ from the run's ({source}): {listed}; give the run's values, or "
                        f"pass --allow_changes {' '.join(refused)} to apply the new ones from epoch {epoch + 1} on "
                        "(recorded in the run's files)")
    return changes, flags


RUN_FILES = ("args.json", "args_resume.json", "log.txt", LOCK_NAME)
RUN_FOLDERS = ("models", "training_states", "visualisations", "tensorboard")


class Run:
    """The run folder of a training script (see the module docstring). While a Run is open, rank 0 holds the
    folder's lock (utils/lock.py): a second training or --resume of the same folder is refused, naming the
    process; close() lets go (and so does the end of the process, in any way).

    `record` holds the run's arguments as its files record them (args.json, args_resume.json, the "args" of
    every checkpoint): the flags it was given, with the run's own records added (resolved_paths, and on a
    resume resume_history and the starting weights it was saved with)."""

    def __init__(self, flags: Mapping, dist_info: DistInfo | None = None, inputs: Inputs | None = None):
        """flags: every flag by name, with the script's derived values (exp_name, dataset_name, ...); inputs:
        the files the training reads (datasets.metadata.dataset_inputs); the checkpoint flags are added here.
        The folder must not write over any of them."""
        started = time.time()
        self.dist = dist_info or DistInfo()
        self.record = dict(flags)
        self.dir = Path(flags["checkpoints_dir"]) / flags["exp_name"]
        self.models_dir = self.dir / "models"
        self.states_dir = self.dir / "training_states"
        self.vis_dir = self.dir / "visualisations"
        self.lock = FolderLock(self.dir, "the run folder")
        self.changes: dict = {}
        self._state = None
        resuming = flags["resume"] or flags["load_epoch"] is not None
        problem = output_problem(self.dir, folder=True)
        if problem:
            raise RunFolderError(f"--checkpoints_dir/--exp_name: {problem}")
        if inputs is not None:
            for flag in ("hypercut_path", "center_path") + (() if resuming else STARTUP_ONLY):
                inputs.add_checkpoint(f"--{flag}", flags.get(flag))
            check_folder_outputs("the run folder", self.dir, RUN_FILES, RUN_FOLDERS, inputs)
        orphans = []
        if self.dist.is_main:
            self.lock.acquire()  # before anything in the folder is read or written
        try:
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
                if not (resuming and (self.dir / "args.json").exists()):
                    # args.json keeps the arguments the run started with; a resume records its own in
                    # args_resume.json once its flags are checked (resume_state)
                    self.record["resolved_paths"] = resolved_paths(self.record)
                    atomic_write_text(self.dir / "args.json", _args_json(self.record))
            self.logger = self._make_logger()
        except BaseException:
            self.lock.release()
            raise
        self._writer = None
        if self.dist.is_main and orphans:
            self.log(f"removed {len(orphans)} unfinished temporary file(s) of an interrupted save: "
                     + ", ".join(p.name for p in orphans[:3]) + (", ..." if len(orphans) > 3 else ""))
        if self.dist.is_main and self.lock.taken_over:
            self.log(f"took over the run folder's lock left by process {self.lock.taken_over}, which no longer runs")

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
            fh = _LogFile(self.dir / "log.txt")
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
            folder = self.dir / "tensorboard"
            _quiet_tensorboard_thread_errors()
            try:
                self._writer = _CheckedCalls(SummaryWriter(log_dir=str(folder)), folder)
            except OSError as e:
                raise write_error(folder, e) from None
        return self._writer

    def scalars(self, values: dict, step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, float(v), step)

    def close(self) -> None:
        """Flush the log and TensorBoard, and let go of the run folder's lock; safe to call twice."""
        try:
            for h in self.logger.handlers:
                h.flush()
            if self._writer is not None:
                writer, self._writer = self._writer, None
                writer.close()
        finally:
            self.lock.release()

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

    def resume_state(self) -> dict | None:
        """The training state to continue from, or None for a fresh run. The flags are compared with those the
        state was saved with (check_resume_args) first: changes are refused unless --allow_changes names them,
        in which case they are recorded (resume_history in self.record; args_resume.json and the log by
        record_resume, once the state is restored) and self.changes holds them for restore_training_state."""
        if self._state is not None:
            return self._state
        if self.record["load_epoch"] is not None:
            path = self.states_dir / f"{self.record['load_epoch']:04d}.pth"
        elif self.record["resume"]:
            path = self.states_dir / "latest.pth"
        else:
            return None
        if not path.exists():
            raise CheckpointError(f"no training state to resume at {path}: is --exp_name right? "
                                  f"(saved states: {sorted(p.name for p in self.states_dir.glob('*.pth')) or 'none'})")
        state = load_checkpoint(path)
        saved, source = state.get("args") if isinstance(state, dict) else None, f"saved in {path.name}"
        if not isinstance(saved, dict):
            saved, source = self._started_args(), "args.json"
        epoch = int(state.get("epoch", 0)) if isinstance(state, dict) else 0
        record = self.record
        if saved is not None:
            self.changes, record = check_resume_args(saved, record, epoch, source)
        history = list(saved.get("resume_history") or []) if saved else []
        if self.changes:
            changed = {k: [_plain(a), _plain(b)] for k, (a, b) in self.changes.items()}
            history.append({"epoch": epoch, "changed": changed})
        record = {**record, "resume_history": history}
        started_from = {k: v for k, v in ((saved or {}).get("resolved_paths") or {}).items()
                        if k in STARTUP_ONLY and record.get(k) == saved.get(k)}
        self.record = {**record, "resolved_paths": {**resolved_paths(record), **started_from}}
        self._resumed_epoch = epoch
        self._state = state
        return state

    def record_resume(self) -> None:
        """Write args_resume.json (and log the changed flags) once the state has been restored: a resume
        refused on the way (another kind of model, say) leaves the run's records as they were."""
        if self._state is None or not self.dist.is_main:
            return
        atomic_write_text(self.dir / "args_resume.json", _args_json(self.record))
        if self.changes:
            self.log("resuming with changed flags (--allow_changes): " + ", ".join(
                f"{k} {a} -> {b}" for k, (a, b) in self.changes.items()) + f", from epoch {self._resumed_epoch + 1} on")

    def _started_args(self) -> dict | None:
        try:
            saved = json.loads((self.dir / "args.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):  # a state from an older version without its args, and no args.json
            return None
        return saved if isinstance(saved, dict) else None


def _args_json(record: dict) -> str:
    return json.dumps(record, indent=2, default=str, allow_nan=False) + "\n"


class _LogFile(logging.FileHandler):
    """log.txt. A line that cannot be written (a full disk) ends the run with one WriteError line, instead of
    logging's own printed traceback after which the run went on without its log."""

    def handleError(self, record) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            raise write_error(self.baseFilename, error) from None
        super().handleError(record)


def _quiet_tensorboard_thread_errors() -> None:
    """TensorBoard's writer thread prints the traceback of a write that failed (a full disk), and the next call
    in the main thread raises the same error, which _CheckedCalls turns into one line: the thread prints
    nothing. Every other thread's error is printed as before. Installed once per process."""
    previous = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return

    def hook(args):
        if type(args.thread).__name__ == "_AsyncWriterThread" and issubclass(args.exc_type, OSError):
            return
        previous(args)
    hook.quiet_tensorboard = True
    threading.excepthook = hook


class _CheckedCalls:
    """TensorBoard's writer, whose file errors (raised from its writer thread on a later call) become one
    WriteError line naming the folder."""

    def __init__(self, target, folder):
        self._target = target
        self._folder = folder

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except OSError as e:
                raise write_error(self._folder, e) from None
        return call


def plain_args(record: dict) -> dict:
    """A run's record (Run.record: the flags with resolved paths and resume history) as plain values (what
    torch.load(weights_only=True) can read back)."""
    return {k: v for k, v in record.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))}


def training_payload(model, optimizer, scheduler, epoch: int, step: int, record: dict, extra: dict) -> dict:
    return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step,
            "args": plain_args(record), **extra}


def restore_training_state(state: dict, model, optimizer, scheduler, config=None, changes=()) -> tuple[int, int]:
    """Load a saved training state into the model, optimiser and scheduler and restore the RNG streams;
    returns (next epoch, global step). A state that lacks a part, or does not fit, is one CheckpointError.
    `changes` (flags allowed to differ on --resume, see check_resume_args) that concern the optimiser are
    applied from `config` (utils.training.TrainConfig: its lr and weight_decay): another --optimizer starts
    with a fresh optimiser state; another --lr, --gamma, --decay_type or --lr_decay sets the schedule those
    flags give at the saved epoch; another --weight_decay replaces the saved one."""
    lacking = [k for k in ("model", "optimizer", "scheduler", "epoch", "step", "rng") if k not in state]
    if lacking:
        raise CheckpointError(f"the training state lacks {', '.join(lacking)}: not a complete state saved by "
                              "this project's train scripts")
    problem = state_dict_mismatch(unwrap(model).state_dict(), state["model"])
    if problem:
        raise CheckpointError(f"the training state's model does not fit this model (other flags than the run "
                              f"it came from?): {problem}")
    changed = set(changes) & OPTIMISER_FLAGS
    if "optimizer" not in changed:
        saved_groups = state["optimizer"].get("param_groups", [])
        own_groups = optimizer.param_groups
        if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in own_groups]:
            raise CheckpointError("the training state's optimiser holds other parameters than this model's "
                                  "(other flags than the run it came from?)")
    unwrap(model).load_state_dict(state["model"])
    if "optimizer" not in changed:
        optimizer.load_state_dict(state["optimizer"])
    if changed & {"optimizer", "lr", "decay_type", "lr_decay", "gamma"}:
        _set_schedule(scheduler, int(state["scheduler"].get("last_epoch", state["epoch"])), config.lr)
    else:
        scheduler.load_state_dict(state["scheduler"])
    if "weight_decay" in changed:
        for group in optimizer.param_groups:
            group["weight_decay"] = config.weight_decay
    set_rng_state(state["rng"])
    return int(state["epoch"]) + 1, int(state["step"])


def _set_schedule(scheduler, last_epoch: int, base_lr: float) -> None:
    """Put a StepLR or MultiStepLR (built from the flags) at `last_epoch` completed steps, with the learning
    rate its flags give there (the closed form: base_lr x gamma^(decays so far))."""
    if isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR):
        decays = bisect.bisect_right(sorted(scheduler.milestones.elements()), last_epoch)
    else:
        decays = last_epoch // scheduler.step_size
    lr = base_lr * scheduler.gamma ** decays
    scheduler.base_lrs = [base_lr for _ in scheduler.optimizer.param_groups]
    for group in scheduler.optimizer.param_groups:
        group["initial_lr"] = base_lr
        group["lr"] = lr
    scheduler.last_epoch = last_epoch
    scheduler._last_lr = [lr for _ in scheduler.optimizer.param_groups]

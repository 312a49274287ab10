"""What the train scripts share besides the run folder (utils/run.py): the run's configuration (TrainConfig),
optimiser and schedule (the reference's choices), seeds, the training loader, progress bars, and the training
loop (fit: train_one_epoch, evaluate_and_save, one non-finite policy).

Exact resume: the shuffle order is a function of (seed, epoch) (DistributedSampler with set_epoch, also
with one process) and the augmentation of (seed, epoch, index) (see datasets/blur2vid.py); the state
saved at the end of every epoch holds the model, optimiser, scheduler and RNG states, so `--resume`
continues with the same losses an uninterrupted run would give (on CPU).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from utils.checkpoint import CheckpointError
from utils.cli import at_least, parse_decay
from utils.device import out_of_memory_hint
from utils.distributed import DistInfo
from utils.errors import FlagError
from utils.run import plain_args, restore_training_state, training_payload


def build_optimizer(params, config) -> torch.optim.Optimizer:
    """--optimizer with the reference's settings; ADAMax (betas 0.9/0.999, eps 1e-8) is the default."""
    kind, lr, wd = config.optimizer, config.lr, config.weight_decay
    if kind == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if kind == "ADAM":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    if kind == "RMSprop":
        return torch.optim.RMSprop(params, lr=lr, eps=1e-8, weight_decay=wd)
    if kind == "ADAMax":
        return torch.optim.Adamax(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    raise FlagError(f"--optimizer {kind!r}: use SGD, ADAM, RMSprop or ADAMax")


def build_scheduler(optimizer, config):
    """Stepped once per epoch."""
    kind, value = parse_decay(config.decay_type, config.lr_decay)
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=value, gamma=config.gamma)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=value, gamma=config.gamma)


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


class EpochSampler(Sampler):
    """Wraps a DistributedSampler and yields (epoch, index) keys: the dataset draws its augmentation from
    the key's epoch, so persistent workers (whose dataset copies never see set_epoch) stay exact."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def make_loader(dataset, batch_size: int, *, train: bool, num_workers: int, seed: int,
                dist_info: DistInfo | None = None, device: torch.device | None = None) -> DataLoader:
    """The training loader: a (seed, epoch) permutation split over ranks; call set_epoch(loader, e) before
    each epoch. The dataset must accept (epoch, index) keys (datasets.blur2vid.Blur2VidDataset does)."""
    dist_info = dist_info or DistInfo()
    sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                 shuffle=train, seed=seed, drop_last=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(sampler), num_workers=num_workers,
                      drop_last=train and len(dataset) >= batch_size * dist_info.world_size,
                      pin_memory=device is not None and device.type == "cuda",
                      persistent_workers=num_workers > 0)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


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


# --- mixed precision --------------------------------------------------------------------------------

def add_speed_args(parser) -> None:
    g = parser.add_argument_group("speed")
    g.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"),
                   help="mixed precision of the forward pass (auto: bf16 on CUDA when supported, else off); "
                        "losses are computed in float32")
    g.add_argument("--channels_last", action="store_true", help="channels-last memory format (pays on GPUs)")
    g.add_argument("--skip_nonfinite", type=at_least(0), default=0,
                   help="skip up to N batches whose loss is not finite (default: 0, the first one stops the run)")


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of --amp on this device (None: float32)."""
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if mode == "off":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


class Amp:
    """autocast for the forward pass and, with float16, a GradScaler whose state is saved with the run.
    Call `amp()` for the context: `with amp(): pred = model(x)`; compute the loss outside it, in float32."""

    def __init__(self, mode: str, device: torch.device):
        self.device = device
        self.dtype = amp_dtype(mode, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None

    def __call__(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """loss.backward() and the optimiser step, through the GradScaler with float16."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()

    def state(self) -> dict:
        """What a training state saves of it: the GradScaler's state, with float16."""
        return {"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def __str__(self) -> str:
        return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


# --- the run's configuration ------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig:
    """What the training loop reads, built once from a train script's parsed and checked flags (from_args);
    nothing downstream changes it, nor the flags. `flags` holds every flag with the values the script derived
    from them: what the run folder records (utils.run.Run)."""
    epochs: int
    max_steps: int | None
    time_limit: float | None  # minutes
    batch_size: int
    crop_size: int
    num_workers: int
    seed: int
    optimizer: str
    lr: float
    weight_decay: float
    decay_type: str
    lr_decay: int
    gamma: float
    val_epoch: int
    state_every: int
    train_step: int
    display_step: int
    amp: str
    channels_last: bool
    skip_nonfinite: int
    flags: Mapping[str, Any]

    @classmethod
    def from_args(cls, args, **derived) -> TrainConfig:
        """The configuration of the parsed flags `args`; `derived`: what the script computed from them (a
        default run name, the dataset's name, the crop size the network really trains on), recorded as flags."""
        flags = {**vars(args), **derived}
        loop = {f.name: flags[f.name] for f in dataclasses.fields(cls) if f.name != "flags"}
        return cls(**loop, flags=MappingProxyType(flags))


# --- non-finite losses ------------------------------------------------------------------------------

class NonFiniteLoss(FlagError):
    """A training loss that is not finite: the run stops (the last good checkpoint is kept)."""


class NonFinitePolicy:
    """The one rule for a loss that is not finite: skip its batch while --skip_nonfinite allows, else stop the
    run (NonFiniteLoss, one line naming the step and the term; the last saved state is kept).

    Where it looks: on the CPU, or with --skip_nonfinite, at every step before its optimiser step (a host
    sync, free on the CPU); on a GPU without it, at the end of each epoch, in the epoch's one host sync
    (before anything of that epoch is saved)."""

    def __init__(self, allowed: int, every_step: bool, dist_info, log):
        self.allowed, self.every_step, self.dist_info, self.log = allowed, every_step, dist_info, log
        self.skipped = 0

    def skip(self, values: torch.Tensor, names: list, step: int, epoch: int) -> bool:
        """Before the optimiser step of `step` (values: its terms): whether to skip its batch."""
        return self.every_step and self._decide(values[None], names, step, epoch)

    def check_epoch(self, rows: torch.Tensor, names: list, first_step: int, epoch: int) -> None:
        """At the end of an epoch (rows: the terms of its steps, from `first_step` on), unless every step was
        checked."""
        if not self.every_step:
            self._decide(rows, names, first_step, epoch)

    def _decide(self, rows: torch.Tensor, names: list, first_step: int, epoch: int) -> bool:
        """False when every term of every row (steps first_step, first_step + 1, ...) is finite on every rank;
        True to skip the step while the allowance lasts (only ever per step: an allowance checks every step);
        else NonFiniteLoss naming the first bad step."""
        if _all_finite(rows, self.dist_info):
            return False
        bad_rows = (~torch.isfinite(rows)).any(1).nonzero()
        row = int(bad_rows[0]) if len(bad_rows) else len(rows) - 1
        bad = [n for n, v in zip(names, rows[row].tolist()) if not math.isfinite(v)] or ["(on another rank)"]
        step = first_step + row
        if self.skipped < self.allowed:
            self.skipped += 1
            self.log(f"step {step}: loss term(s) {', '.join(bad)} not finite; batch skipped "
                     f"({self.skipped} of --skip_nonfinite {self.allowed})")
            return True
        raise NonFiniteLoss(f"the loss term(s) {', '.join(bad)} became non-finite at step {step} (epoch {epoch}); "
                            "the run stopped and its last saved state is kept: lower --lr, check the data, or pass "
                            "--skip_nonfinite N to skip such batches")


class NonFiniteWeights(FlagError):
    """Weights that stopped being finite although every loss was: nothing is saved from them."""


def _check_weights(model, step: int, epoch: int) -> None:
    """Before anything is saved: every floating-point weight and buffer is finite (one host sync). An
    optimiser step can overflow the weights (a huge --lr or --weight_decay) with every loss finite, and the
    last step of a run has no next loss to show it."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteWeights(f"the model's weights became non-finite by step {step} (epoch {epoch}; "
                               f"{bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}) although every "
                               "loss was finite; nothing was saved from them and the last saved state is kept: "
                               "lower --lr or --weight_decay")


# --- the one training loop --------------------------------------------------------------------------

def fit(config: TrainConfig, *, model, train_set, val_set, step_fn, validate_fn, fields: dict, run, device,
        dist_info, on_display=None, log_model: str = "") -> dict:
    """Train `model` for config.epochs epochs (or config.max_steps steps); the loop of both train scripts.

    step_fn(model, batch, amp) -> (loss, {name: term}) computes one batch's loss (the model call under
        `with amp():`, the loss in float32; model is the DDP wrapper when distributed).
    validate_fn(model, epoch) -> {name: figure}; called on every rank, must reduce over ranks.
    fields: what the script saves beside the weights (backbone description, HyperCUT config); a resumed
        state must hold the same.
    run: the run folder (utils.run.Run, opened on config.flags); on_display(step): called on rank 0 every
        --display_step steps (visualisations).

    Handles resume (model, optimiser, scheduler, GradScaler, RNG), DDP, AMP, the schedule (stepped once per
    complete epoch), --time_limit, and per epoch: train_one_epoch, then evaluate_and_save every --val_epoch
    epochs and at the end, and the training state (latest.pth each complete epoch, NNNN.pth at validation
    epochs). Returns {"losses": [per-step total], "terms": [per-step terms], "val": {epoch: figures}} of this
    call.
    """
    amp = Amp(config.amp, device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], config)
    scheduler = build_scheduler(optimizer, config)
    start_epoch, step = _resume(run, fields, model, optimizer, scheduler, amp, config)
    net = model
    if dist_info.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = make_loader(train_set, config.batch_size, train=True, num_workers=config.num_workers, seed=config.seed,
                         dist_info=dist_info, device=device)
    run.log(f"{log_model}; train {len(train_set)} sequences ({len(loader)} steps/epoch, batch {config.batch_size}"
            f"{f' x {dist_info.world_size} processes' if dist_info.distributed else ''}), val {len(val_set)}; "
            f"device {device}, amp {amp}, epochs {start_epoch}..{config.epochs}")
    timer = Timer()
    nonfinite = NonFinitePolicy(config.skip_nonfinite, device.type != "cuda" or config.skip_nonfinite > 0,
                                dist_info, run.log)

    def out_of_time() -> bool:  # the same answer on every rank
        return config.time_limit is not None and _any_rank(timer.elapsed() >= 60.0 * config.time_limit, dist_info)

    history = {"losses": [], "terms": [], "val": {}}
    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs + 1):
        done = train_one_epoch(net, loader, optimizer, amp, step_fn, config=config, epoch=epoch, step=step,
                               nonfinite=nonfinite, out_of_time=out_of_time, timer=timer, run=run, device=device,
                               dist_info=dist_info, on_display=on_display)
        step = done.step
        if done.rows is not None:
            history["losses"] += done.rows[:, done.names.index("total") if "total" in done.names else 0].tolist()
            history["terms"] += [dict(zip(done.names, row)) for row in done.rows.tolist()]
        _check_weights(model, step, epoch)
        complete = not done.stopped or len(done.rows) + nonfinite.skipped == len(loader)
        if complete:
            scheduler.step()  # once per epoch
        ran_out = done.out_of_time or (epoch < config.epochs and out_of_time())
        if ran_out:
            run.log(f"--time_limit {config.time_limit:g} min reached in epoch {epoch} at step {step} "
                    f"({timer.elapsed():.0f} s): this epoch is the run's last (--resume continues from the last "
                    "complete epoch)")
        last = done.stopped or ran_out or epoch == config.epochs
        if epoch % config.val_epoch == 0 or last:
            history["val"][epoch] = evaluate_and_save(net, model, epoch, step, validate_fn=validate_fn,
                                                      fields=fields, run=run)
        if not complete:  # a state from the middle of an epoch could not resume exactly: keep the last full epoch's
            why = "--time_limit" if ran_out else f"--max_steps {config.max_steps}"
            run.log(f"stopped in epoch {epoch} after {step} steps ({why}); no training state saved for this "
                    "partial epoch")
        elif last or epoch % config.val_epoch == 0 or epoch % config.state_every == 0:
            run.save_state(epoch, training_payload(model, optimizer, scheduler, epoch, step, run.record,
                                                   {**fields, **amp.state()}),
                           numbered=epoch % config.val_epoch == 0 or last)
        if last:
            break
    run.log(f"done: epoch {epoch}, step {step}, {timer.elapsed():.1f} s")
    run.close()
    return history


def _resume(run, fields: dict, model, optimizer, scheduler, amp, config: TrainConfig) -> tuple[int, int]:
    """(first epoch, global step): (1, 0) for a new run; with --resume or --load_epoch, the saved state's, once
    the model, optimiser, schedule, GradScaler and RNG streams are restored from it."""
    state = run.resume_state()
    if state is None:
        return 1, 0
    for key, value in fields.items():
        if key != "input_convention" and state.get(key) != value:
            raise CheckpointError(f"the training state was made with {key} {state.get(key)}, but the flags "
                                  f"ask for {value}")
    start_epoch, step = restore_training_state(state, model, optimizer, scheduler, config, run.changes)
    if amp.scaler is not None and state.get("grad_scaler"):
        amp.scaler.load_state_dict(state["grad_scaler"])
    run.record_resume()
    run.log(f"resumed from epoch {start_epoch - 1} (step {step})")
    return start_epoch, step


@dataclass(frozen=True)
class EpochResult:
    """What train_one_epoch did."""
    rows: torch.Tensor | None  # (steps taken, terms), float64 on the CPU; None when no step was taken
    names: list | None  # of the terms
    step: int  # the global step reached
    stopped: bool  # before the epoch's end: --max_steps or --time_limit
    out_of_time: bool  # --time_limit


def train_one_epoch(net, loader, optimizer, amp, step_fn, *, config: TrainConfig, epoch: int, step: int,
                    nonfinite: NonFinitePolicy, out_of_time, timer: Timer, run, device, dist_info,
                    on_display=None) -> EpochResult:
    """One epoch of optimiser steps after global step `step`: each batch's forward and backward under one
    out-of-memory handler, with the non-finite policy between them; the losses logged (TensorBoard every
    --train_step steps, log.txt every --display_step steps and at the epoch's end). Stops early at
    --max_steps, or when out_of_time() (the same on every rank) says so."""
    set_epoch(loader, epoch)
    net.train()
    epoch_timer, steps, names, stopped, ran_out = Timer(), [], None, False, False

    def doing() -> str:
        return (f"training a batch of {config.batch_size} crops of {config.crop_size}x{config.crop_size} on "
                f"{device}: lower --batch_size or --crop_size")

    for batch in progress(loader, dist_info, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False):
        with out_of_memory_hint(doing):
            loss, terms = step_fn(net, batch, amp)
            values, names = torch.stack([t.detach().float() for t in terms.values()]), list(terms)
            skip = nonfinite.skip(values, names, step + 1, epoch)
            optimizer.zero_grad(set_to_none=True)
            if not skip:
                amp.backward_and_step(loss, optimizer)
        if skip:
            continue
        step += 1
        steps.append(values)
        if step % config.train_step == 0:
            _log_interval(run, names, steps[-config.train_step:], step, optimizer)
        if config.display_step and step % config.display_step == 0:
            recent = torch.stack(steps[-config.display_step:]).double().mean(0).tolist()  # one host sync
            run.log(f"step {step} (epoch {epoch}) | " + " | ".join(f"{k} {v:.5f}" for k, v in zip(names, recent))
                    + f" (mean of the last {min(len(steps), config.display_step)} steps) | "
                      f"{timer.elapsed():.1f} s")
            if on_display is not None and dist_info.is_main:
                on_display(step)
        if config.max_steps is not None and step >= config.max_steps:
            stopped = True
            break
        if out_of_time():
            stopped = ran_out = True
            break
    rows = torch.stack(steps).double().cpu() if steps else None  # the epoch's one host sync
    if rows is not None:
        nonfinite.check_epoch(rows, names, step - len(steps) + 1, epoch)
    means = dict(zip(names, rows.mean(0).tolist())) if rows is not None else {}
    run.log(f"epoch {epoch}/{config.epochs} | step {step} | " + " | ".join(f"{k} {v:.5f}" for k, v in means.items())
            + f" | lr {optimizer.param_groups[0]['lr']:.3g} | {epoch_timer.elapsed():.1f} s "
              f"(total {timer.elapsed():.1f} s)"
            + (f" | {nonfinite.skipped} batches skipped" if nonfinite.skipped else ""))
    return EpochResult(rows, names, step, stopped, ran_out)


def evaluate_and_save(net, model, epoch: int, step: int, *, validate_fn, fields: dict, run) -> dict:
    """Validation (validate_fn, on every rank; figures to TensorBoard and the log) and the model saved by rank
    0 (models/NNNN.pth, with the run's record and `fields`); returns the figures."""
    figures = validate_fn(net, epoch)
    run.scalars({f"val/{k}": v for k, v in figures.items()}, step)
    run.log(f"val epoch {epoch} | " + " | ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    path = run.save_model(epoch, {"model": model.state_dict(), "epoch": epoch, "step": step,
                                  "args": plain_args(run.record), **fields})
    if path is not None:
        run.log(f"saved {path}")
    return figures


def _on_every_rank(flag, dist_info, every: bool) -> bool:
    """Whether `flag` (a bool or a 0-d tensor) holds on every rank (every=True) or on any rank, so that
    all ranks take the same decision (one that stopped alone would leave the others waiting forever)."""
    if not dist_info.distributed:
        return bool(flag)
    import torch.distributed as dist
    t = torch.as_tensor(flag).to(torch.int32)
    if dist.get_backend() == "nccl":
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t, op=dist.ReduceOp.MIN if every else dist.ReduceOp.MAX)
    return bool(t)


def _any_rank(flag: bool, dist_info) -> bool:
    return _on_every_rank(flag, dist_info, every=False)


def _all_finite(values: torch.Tensor, dist_info) -> bool:
    """Whether every value is finite on every rank."""
    return _on_every_rank(torch.isfinite(values).all(), dist_info, every=True)


def _log_interval(run, names, values, step, optimizer) -> None:
    """TensorBoard scalars: the mean of each term over the last --train_step steps, and the lr."""
    if run.writer is None:
        return
    mean = torch.stack(values).mean(0).tolist()
    run.scalars({**{f"train/{k}": v for k, v in zip(names, mean)}, "train/lr": optimizer.param_groups[0]["lr"]}, step)

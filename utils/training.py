"""What the train scripts share besides the run folder (utils/run.py): optimiser and schedule (the
reference's choices), seeds, the training loader, progress bars.

Exact resume: the shuffle order is a function of (seed, epoch) (DistributedSampler with set_epoch, also
with one process) and the augmentation of (seed, epoch, index) (see datasets/blur2vid.py); the state
saved at the end of every epoch holds the model, optimiser, scheduler and RNG states, so `--resume`
continues with the same losses an uninterrupted run would give (on CPU).
"""
from __future__ import annotations

import contextlib
import math
import random
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from utils.cli import at_least, parse_decay
from utils.device import out_of_memory_hint
from utils.distributed import DistInfo
from utils.errors import FlagError


def build_optimizer(params, args) -> torch.optim.Optimizer:
    """--optimizer with the reference's settings; ADAMax (betas 0.9/0.999, eps 1e-8) is the default."""
    kind, lr, wd = args.optimizer, args.lr, args.weight_decay
    if kind == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if kind == "ADAM":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    if kind == "RMSprop":
        return torch.optim.RMSprop(params, lr=lr, eps=1e-8, weight_decay=wd)
    if kind == "ADAMax":
        return torch.optim.Adamax(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    raise FlagError(f"--optimizer {kind!r}: use SGD, ADAM, RMSprop or ADAMax")


def build_scheduler(optimizer, args):
    """Stepped once per epoch."""
    kind, value = parse_decay(args.decay_type, args.lr_decay)
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=value, gamma=args.gamma)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=value, gamma=args.gamma)


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

    def __str__(self) -> str:
        return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


class NonFiniteLoss(FlagError):
    """A training loss that is not finite: the run stops (the last good checkpoint is kept)."""


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

def fit(args, *, model, train_set, val_set, step_fn, validate_fn, fields: dict, run, device, dist_info,
        on_display=None, log_model: str = "") -> dict:
    """Train `model` for args.epochs epochs (or args.max_steps steps); the loop of both train scripts.

    step_fn(model, batch, amp) -> (loss, {name: term}) computes one batch's loss (the model call under
        `with amp():`, the loss in float32; model is the DDP wrapper when distributed).
    validate_fn(model, epoch) -> {name: figure}; called on every rank, must reduce over ranks.
    fields: what the script saves beside the weights (backbone description, HyperCUT config); a resumed
        state must hold the same.
    on_display(step): called on rank 0 every args.display_step steps (visualisations).

    Handles resume (model, optimiser, scheduler, GradScaler, RNG), DDP, AMP, the schedule (stepped once per
    complete epoch), validation and model saving every --val_epoch epochs and at the end, training states
    (latest.pth each complete epoch, NNNN.pth at validation epochs), logging every --train_step steps, and
    non-finite losses (stop, naming the step and the term; or --skip_nonfinite N batches).
    Returns {"losses": [per-step total], "terms": [per-step terms], "val": {epoch: figures}} of this call.
    """
    amp = Amp(args.amp, device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], args)
    scheduler = build_scheduler(optimizer, args)

    from utils.checkpoint import CheckpointError
    from utils.run import restore_training_state, training_payload, plain_args
    start_epoch, step = 1, 0
    state = run.resume_state(args)
    if state is not None:
        for key, value in fields.items():
            if key != "input_convention" and state.get(key) != value:
                raise CheckpointError(f"the training state was made with {key} {state.get(key)}, but the flags "
                                      f"ask for {value}")
        start_epoch, step = restore_training_state(state, model, optimizer, scheduler, args, run.changes)
        if amp.scaler is not None and state.get("grad_scaler"):
            amp.scaler.load_state_dict(state["grad_scaler"])
        run.log(f"resumed from epoch {start_epoch - 1} (step {step})")

    net = model
    if dist_info.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = make_loader(train_set, args.batch_size, train=True, num_workers=args.num_workers, seed=args.seed,
                         dist_info=dist_info, device=device)
    run.log(f"{log_model}; train {len(train_set)} sequences ({len(loader)} steps/epoch, batch {args.batch_size}"
            f"{f' x {dist_info.world_size} processes' if dist_info.distributed else ''}), val {len(val_set)}; "
            f"device {device}, amp {amp}, epochs {start_epoch}..{args.epochs}")

    def extra():
        return {**fields, **({"grad_scaler": amp.scaler.state_dict()} if amp.scaler is not None else {})}

    history = {"losses": [], "terms": [], "val": {}}
    timer, skipped, epoch = Timer(), 0, start_epoch - 1
    time_limit = None if getattr(args, "time_limit", None) is None else 60.0 * args.time_limit  # seconds
    out_of_time = False
    per_step_check = device.type != "cuda" or args.skip_nonfinite > 0  # a host sync: free on the CPU
    for epoch in range(start_epoch, args.epochs + 1):
        set_epoch(loader, epoch)
        net.train()
        epoch_timer, steps, stopped, names = Timer(), [], False, None
        for batch in progress(loader, dist_info, desc=f"epoch {epoch}/{args.epochs}", unit="batch", leave=False):
            with out_of_memory_hint(lambda: f"training a batch of {args.batch_size} crops of {args.crop_size}x"
                                            f"{args.crop_size} on {device}: lower --batch_size or --crop_size"):
                loss, terms = step_fn(net, batch, amp)
            values = torch.stack([t.detach().float() for t in terms.values()])
            names = list(terms)
            if per_step_check and not _all_finite(values, dist_info):
                bad = [n for n, v in zip(names, values.tolist()) if not math.isfinite(v)] or ["(on another rank)"]
                if skipped < args.skip_nonfinite:
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                    run.log(f"step {step + 1}: loss term(s) {', '.join(bad)} not finite; batch skipped "
                            f"({skipped} of --skip_nonfinite {args.skip_nonfinite})")
                    continue
                raise NonFiniteLoss(f"the loss term(s) {', '.join(bad)} became non-finite at step {step + 1} "
                                    f"(epoch {epoch}); the run stopped and its last saved state is kept: lower "
                                    "--lr, check the data, or pass --skip_nonfinite N to skip such batches")
            optimizer.zero_grad(set_to_none=True)
            with out_of_memory_hint(lambda: f"training a batch of {args.batch_size} crops of {args.crop_size}x"
                                            f"{args.crop_size} on {device}: lower --batch_size or --crop_size"):
                if amp.scaler is not None:
                    amp.scaler.scale(loss).backward()
                    amp.scaler.step(optimizer)
                    amp.scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
            step += 1
            steps.append(values)
            if step % args.train_step == 0:
                _log_interval(run, names, steps[-args.train_step:], step, optimizer)
            if args.display_step and step % args.display_step == 0:
                recent = torch.stack(steps[-args.display_step:]).double().mean(0).tolist()  # one host sync
                run.log(f"step {step} (epoch {epoch}) | " + " | ".join(f"{k} {v:.5f}" for k, v in zip(names, recent))
                        + f" (mean of the last {min(len(steps), args.display_step)} steps) | "
                          f"{timer.elapsed():.1f} s")
                if on_display is not None and dist_info.is_main:
                    on_display(step)
            if args.max_steps is not None and step >= args.max_steps:
                stopped = True
                break
            if time_limit is not None and _any_rank(timer.elapsed() >= time_limit, dist_info):
                stopped = out_of_time = True
                break
        if steps:
            per_step = torch.stack(steps).double().cpu()  # the epoch's one host sync
            if not _all_finite(per_step, dist_info):
                bad_rows = (~torch.isfinite(per_step)).any(1).nonzero()
                row = int(bad_rows[0]) if len(bad_rows) else len(steps) - 1
                bad = [n for n, v in zip(names, per_step[row].tolist()) if not math.isfinite(v)] or ["(on another rank)"]
                raise NonFiniteLoss(f"the loss term(s) {', '.join(bad)} became non-finite at step "
                                    f"{step - len(steps) + row + 1} (epoch {epoch}); the run stopped and its "
                                    "last saved state is kept: lower --lr or check the data")
            history["losses"] += per_step[:, names.index("total") if "total" in names else 0].tolist()
            history["terms"] += [dict(zip(names, row)) for row in per_step.tolist()]
            means = dict(zip(names, per_step.mean(0).tolist()))
        else:
            means = {}
        run.log(f"epoch {epoch}/{args.epochs} | step {step} | " + " | ".join(f"{k} {v:.5f}" for k, v in means.items())
                + f" | lr {optimizer.param_groups[0]['lr']:.3g} | {epoch_timer.elapsed():.1f} s "
                  f"(total {timer.elapsed():.1f} s)" + (f" | {skipped} batches skipped" if skipped else ""))
        _check_weights(model, step, epoch)
        complete = not stopped or len(steps) + skipped == len(loader)
        if complete:
            scheduler.step()  # once per epoch
        if not out_of_time and time_limit is not None and epoch < args.epochs:
            out_of_time = _any_rank(timer.elapsed() >= time_limit, dist_info)
        if out_of_time:
            run.log(f"--time_limit {args.time_limit:g} min reached in epoch {epoch} at step {step} "
                    f"({timer.elapsed():.0f} s): this epoch is the run's last (--resume continues from the last "
                    "complete epoch)")
        last = stopped or out_of_time or epoch == args.epochs
        if epoch % args.val_epoch == 0 or last:
            figures = validate_fn(net, epoch)
            history["val"][epoch] = figures
            run.scalars({f"val/{k}": v for k, v in figures.items()}, step)
            run.log(f"val epoch {epoch} | " + " | ".join(f"{k} {v:.4f}" for k, v in figures.items()))
            path = run.save_model(epoch, {"model": model.state_dict(), "epoch": epoch, "step": step,
                                          "args": plain_args(args), **fields})
            if path is not None:
                run.log(f"saved {path}")
        if complete:
            if last or epoch % args.val_epoch == 0 or epoch % getattr(args, "state_every", 1) == 0:
                run.save_state(epoch, training_payload(model, optimizer, scheduler, epoch, step, args, extra()),
                               numbered=epoch % args.val_epoch == 0 or last)
        else:  # a state from the middle of an epoch could not resume exactly: keep the last full epoch's
            why = "--time_limit" if out_of_time else f"--max_steps {args.max_steps}"
            run.log(f"stopped in epoch {epoch} after {step} steps ({why}); no training state saved for this "
                    "partial epoch")
        if stopped or out_of_time:
            break
    run.log(f"done: epoch {epoch}, step {step}, {timer.elapsed():.1f} s")
    run.close()
    return history


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

"""Train a deblurring backbone (image -> 7 frames) with --loss_type naive, order_inv or hypercut (SPEC 7).

  python train_blur2vid.py --metadata_root data/synthetic --exp_name jin_naive --loss_type naive
  python train_blur2vid.py --metadata_root data/synthetic --exp_name jin_hc --loss_type hypercut \\
      --hypercut_path checkpoints/hypercut_syn/models/0100.pth
  python train_blur2vid.py ... --exp_name jin_hc --resume                  # continue the latest state
  torchrun --nproc_per_node 4 train_blur2vid.py ...                       # one process per GPU (DDP)

Jin et al.'s four networks (middle frame, N8 pair, two N9 pairs) are trained jointly with one loss, as
HyperCUT does (Jin et al. trained them one after another). `hypercut` puts each ground-truth sequence
in the canonical order of a frozen HyperCUT and adds alpha * R, which pushes the predicted pairs to the
canonical side; with another loss, --hypercut_path only adds hit/con of the predictions at validation.

Writes <checkpoints_dir>/<exp_name>/: args.json, log.txt, tensorboard/ (every loss term, lr, val
pPSNR/pSSIM/PSNR/SSIM, hit/con, image strips), visualisations/ (blur | prediction | ground truth strips
every --display_step steps and at every validation), models/NNNN.pth (weights + backbone description,
loadable by models.load_backbone, test_blur2vid.py and inference.py) every --val_epoch epochs and at the
last epoch, and training_states/ (latest.pth every epoch, NNNN.pth at validation epochs) from which
--resume continues with the same losses as an uninterrupted run (on CPU).
"""
from __future__ import annotations

import argparse
import sys

import torch

from datasets.blur2vid import Blur2VidDataset
from datasets.metadata import MetadataError
from datasets.transforms import AugmentConfig
from losses import LOSS_TYPES, build_loss
from models import backbone_checkpoint_fields, backbone_names, build_backbone
from models.hypercut import load_hypercut
from utils.checkpoint import CheckpointError
from utils.evaluation import evaluate, make_sharded_eval_loader
from utils.images import make_strip, save_png
from utils.metrics import SequenceMetrics
from utils.training import (Run, Timer, add_common_args, add_data_args, build_optimizer, build_scheduler,
                            denormals_flushed, error_line, fail, make_loader, plain_args, progress,
                            restore_training_state, run_training_main, seed_everything, set_epoch,
                            setup_process, training_payload, unwrap, validate_common_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    add_common_args(parser, epochs=100, batch_size=8, lr=5e-4, crop_size=256, val_epoch=5)
    g = parser.add_argument_group("deblurring")
    g.add_argument("--backbone", default="Jin", choices=backbone_names())
    g.add_argument("--width_mult", type=float, default=1.0,
                   help="scale the backbone's internal widths (1.0: the official architecture)")
    g.add_argument("--loss_type", default="naive", choices=LOSS_TYPES)
    g.add_argument("--hypercut_path", default=None,
                   help="a HyperCUT checkpoint (ours or the authors' state dict): needed by --loss_type "
                        "hypercut; with another loss, adds hit/con of the predictions at validation")
    g.add_argument("--alpha", type=float, default=0.2, help="weight of the HyperCUT regulariser R")
    g.add_argument("--display_step", type=int, default=500,
                   help="write a blur | prediction | ground-truth strip every N steps (0: never)")
    g.add_argument("--p_mode", default="pair", choices=("pair", "sequence"),
                   help="pPSNR/pSSIM: the paper's per-pair formula or the reference's whole-sequence one")
    return parser


def check_args(args) -> None:
    validate_common_args(args)
    problems = []
    if not args.width_mult > 0:
        problems.append(f"--width_mult must be > 0 (got {args.width_mult})")
    if args.alpha < 0:
        problems.append(f"--alpha must be >= 0 (got {args.alpha})")
    if args.display_step < 0:
        problems.append(f"--display_step must be >= 0 (got {args.display_step})")
    if args.loss_type == "hypercut" and not args.hypercut_path:
        problems.append("--loss_type hypercut needs --hypercut_path (a trained HyperCUT checkpoint)")
    if problems:
        raise ValueError("; ".join(problems))


def build_datasets(args, num_frames: int):
    if args.no_augment:  # crop only
        augment = AugmentConfig(crop_size=args.crop_size, affine_p=0.0, jitter_p=0.0, noise_p=0.0)
    else:
        augment = AugmentConfig(crop_size=args.crop_size)
    common = dict(target_frames=args.target_frames, data_root=args.data_root, seed=args.seed)
    train_set = Blur2VidDataset(args.metadata_root, "train", augment=augment, **common)
    val_set = Blur2VidDataset(args.metadata_root, "val", augment=None, **common)
    if len(train_set.target_frames) != num_frames:
        raise ValueError(f"the {args.backbone} backbone predicts {num_frames} frames, but the data gives "
                         f"{len(train_set.target_frames)} (frames {train_set.target_frames}); pick {num_frames} "
                         "with --target_frames")
    return train_set, val_set


def load_frozen_hypercut(args, device, train_set, val_set):
    """The HyperCUT of --hypercut_path, frozen, after checking that the images are large enough for f."""
    if not args.hypercut_path:
        return None
    hypercut = load_hypercut(args.hypercut_path, map_location=device).requires_grad_(False)
    need = hypercut.f_func.min_size
    checks = [("training crops", train_set)] if args.loss_type == "hypercut" else []
    for what, dataset in checks + [("val images", val_set)]:
        h, w = dataset[0]["blur"].shape[-2:]
        if min(h, w) < need:
            raise ValueError(f"HyperCUT needs images of at least {need}x{need} pixels, but the {what} are "
                             f"{h}x{w} (raise --crop_size or use larger images)")
    return hypercut


def validate(model, loader, device, args, hypercut, run, epoch, dist_info) -> dict:
    """pPSNR/pSSIM/PSNR/SSIM (no LPIPS) and, with a HyperCUT, hit/con of the predictions on the val split;
    the first batch's strip goes to visualisations/ and TensorBoard."""
    metrics = SequenceMetrics(lpips=None, mode=args.p_mode)
    shown = []

    def show(batch, pred):
        if not shown and dist_info.is_main:
            strip = make_strip(batch["blur"], pred, batch["frames"])
            save_png(strip, run.vis_dir / f"val_epoch{epoch:04d}.png")
            if run.writer is not None:
                run.writer.add_image("val/strip", strip, epoch)
            shown.append(True)

    hitcon = evaluate(model, loader, device, metrics, hypercut=hypercut, on_batch=show, desc="val",
                      dist_info=dist_info)
    figures = {name: metrics.mean(name) for name in ("pPSNR", "pSSIM", "PSNR", "SSIM")}
    if hitcon is not None:
        figures.update({k: v for k, v in hitcon.items() if k != "num_sequences"})
    return figures


def train(args) -> dict:
    """The whole run; returns {"losses": [per-step total], "terms": [per-step terms], "val": {epoch: figures}}
    of this call."""
    device, dist_info = setup_process(args.device)
    with denormals_flushed():
        return _train(args, device, dist_info)


def _train(args, device, dist_info) -> dict:
    seed_everything(args.seed)
    run = Run(args, dist_info)
    model = build_backbone(args.backbone, width_mult=args.width_mult).to(device)
    train_set, val_set = build_datasets(args, model.num_frames)
    if dist_info.world_size > len(val_set):
        raise ValueError(f"the val split has {len(val_set)} sequences, fewer than the {dist_info.world_size} processes")
    hypercut = load_frozen_hypercut(args, device, train_set, val_set)
    loss_fn = build_loss(args.loss_type, hypercut=hypercut, alpha=args.alpha).to(device)
    fields = backbone_checkpoint_fields(model)
    run.log(f"backbone {fields['backbone']}, input convention {model.input_convention}, "
            f"{sum(p.numel() for p in model.parameters()):,} parameters; loss {args.loss_type}"
            + (f" (alpha {args.alpha})" if args.loss_type == "hypercut" else "")
            + (f"; HyperCUT {args.hypercut_path}" if hypercut is not None else ""))
    optimizer = build_optimizer(model.parameters(), args)
    scheduler = build_scheduler(optimizer, args)

    start_epoch, step = 1, 0
    state = run.resume_state(args)
    if state is not None:
        if state.get("backbone") != fields["backbone"]:
            raise CheckpointError(f"the training state holds backbone {state.get('backbone')}, but the flags "
                                  f"ask for {fields['backbone']}")
        start_epoch, step = restore_training_state(state, model, optimizer, scheduler)
        run.log(f"resumed from epoch {start_epoch - 1} (step {step})")

    if dist_info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    train_loader = make_loader(train_set, args.batch_size, train=True, num_workers=args.num_workers,
                               seed=args.seed, dist_info=dist_info, device=device)
    val_loader = make_sharded_eval_loader(val_set, args.batch_size, args.num_workers, device, dist_info)
    run.log(f"train {len(train_set)} sequences ({len(train_loader)} steps/epoch), val {len(val_set)}; "
            f"device {device}, epochs {start_epoch}..{args.epochs}")

    history = {"losses": [], "terms": [], "val": {}}
    timer = Timer()
    epoch = start_epoch - 1
    for epoch in range(start_epoch, args.epochs + 1):
        set_epoch(train_loader, epoch)
        model.train()
        loss_fn.train()
        sums, count, epoch_timer, stopped = None, 0, Timer(), False
        for batch in progress(train_loader, dist_info, desc=f"epoch {epoch}/{args.epochs}", unit="batch", leave=False):
            blur = batch["blur"].to(device, non_blocking=True)
            gt = batch["frames"].to(device, non_blocking=True)
            pred = model(blur)
            total, terms = loss_fn(pred, gt)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            step += 1

            values = torch.stack([v.detach().double() for v in terms.values()]).cpu()  # one device sync
            sums = values if sums is None else sums + values
            count += 1
            named = dict(zip(terms, values.tolist()))
            history["losses"].append(named["total"])
            history["terms"].append(named)
            run.scalars({**{f"train/{k}": v for k, v in named.items()},
                         "train/lr": optimizer.param_groups[0]["lr"]}, step)
            if args.display_step and step % args.display_step == 0 and dist_info.is_main:
                strip = make_strip(blur, pred, gt)
                save_png(strip, run.vis_dir / f"train_step{step:07d}.png")
                run.writer.add_image("train/strip", strip, step)
            if args.max_steps is not None and step >= args.max_steps:
                stopped = True
                break
        means = dict(zip(terms, (sums / max(count, 1)).tolist())) if count else {}
        run.log(f"epoch {epoch}/{args.epochs} | step {step} | "
                + " | ".join(f"{k} {v:.5f}" for k, v in means.items())
                + f" | lr {optimizer.param_groups[0]['lr']:.3g} | {epoch_timer.elapsed():.1f} s "
                  f"(total {timer.elapsed():.1f} s)")
        if not stopped:
            scheduler.step()  # once per epoch

        last = stopped or epoch == args.epochs
        if epoch % args.val_epoch == 0 or last:
            figures = validate(model, val_loader, device, args, hypercut, run, epoch, dist_info)
            history["val"][epoch] = figures
            run.scalars({f"val/{k}": v for k, v in figures.items()}, step)
            run.log(f"val epoch {epoch} | " + " | ".join(f"{k} {v:.4f}" for k, v in figures.items()))
            path = run.save_model(epoch, {"model": unwrap(model).state_dict(), "epoch": epoch, "step": step,
                                          "args": plain_args(args), **fields})
            if path is not None:
                run.log(f"saved {path}")
        if stopped:
            # A state saved in the middle of an epoch could not resume exactly: keep the last full epoch's.
            run.log(f"stopped after --max_steps {args.max_steps} steps (no training state saved for this partial epoch)")
            break
        run.save_state(epoch, training_payload(model, optimizer, scheduler, epoch, step, args, fields),
                       numbered=epoch % args.val_epoch == 0 or last)
    run.log(f"done: epoch {epoch}, step {step}, {timer.elapsed():.1f} s")
    run.close()
    return history


def main(argv=None) -> int:
    return run_training_main(build_parser, check_args, train, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Train the HyperCUT ordering model (SPEC 4) on the sharp frames of a dataset.

  python train_hypercut.py --metadata_root data/synthetic --exp_name hypercut_syn
  python train_hypercut.py --metadata_root data/synthetic --exp_name hypercut_syn --resume
  torchrun --nproc_per_node 4 train_hypercut.py ...       # one process per GPU (DDP)

Each training sequence (B, 7, 3, H, W) gives the pairs P1 = (x1, x7), P2 = (x2, x6), P3 = (x3, x5) and
their reverses; the six pairs go through f in one batched call, and the loss pushes each pair and its
reverse to opposite sides of the fixed hyperplane while keeping the three nested pairs on one side.
Only the sharp frames are used. Training frames get the SPEC 9 augmentations (the same draw for every
frame of a sequence); validation uses full images without augmentation.

The model takes the reference's input convention (BGR, ImageNet mean/std), recorded in every
checkpoint, so our checkpoints and the authors' released ones are interchangeable.

Writes <checkpoints_dir>/<exp_name>/: args.json, log.txt, tensorboard/, models/NNNN.pth (loadable by
models.hypercut.load_hypercut, test_hypercut.py and generate_order.py) every --val_epoch epochs and at
the last epoch, and training_states/ (latest.pth every epoch, NNNN.pth at validation epochs) from
which --resume continues with the same losses as an uninterrupted run (on CPU).

Learning rate. The default is the reference's (Adamax 5e-4, SPEC 9). With the released activation
(slope 1.0) f is linear up to its residual blocks, and Adamax's first steps move every weight by about
lr, so at 5e-4 (and 1e-4) the first steps rescale all scores by large factors; the loss then settles in
its saddle at zero scores (loss ln 2 = 0.693, val hit near 0), where the gradients vanish and Adamax's
memory of the early large gradients keeps the steps tiny. On small data or short runs use a lower lr;
on the embedded dataset (360 training sequences, crops of 64) 5e-5 and 2e-5 both left the saddle
within 150-350 steps in our trials, and a real slope (0.2) at 1e-4 or 3e-5 stayed in it for 400. The CPU demo (about 5 minutes on 2 cores; test split:
hit 0.99, con@2 0.94, con@3 0.93):

  python prepare_dataset.py synthetic --out data/synthetic
  python train_hypercut.py --metadata_root data/synthetic --exp_name hypercut_syn --device cpu \
      --crop_size 64 --batch_size 8 --lr 5e-5 --epochs 24 --decay_type step_12_18_22 --gamma 0.5 \
      --val_epoch 4 --num_workers 1
  python test_hypercut.py --metadata_root data/synthetic --pretrained_path checkpoints/hypercut_syn/models/0024.pth
"""
from __future__ import annotations

import argparse
import sys

import torch

from datasets.blur2vid import Blur2VidDataset
from datasets.metadata import MetadataError
from datasets.transforms import AugmentConfig
from models.convention import REFERENCE_BGR_IMAGENET
from models.hypercut_ext import OrderingObjective
from models.hypercut import F_FUNCS, G_FUNCS, REFERENCE_SLOPE, HyperCUT, hypercut_loss, sequence_pairs
from utils.checkpoint import CheckpointError
from utils.metrics import hit_con
from utils.training import (ArgumentParser, Run, Timer, add_common_args, add_data_args, build_optimizer,
                            build_scheduler, denormals_flushed, error_line, fail, hypercut_scores,
                            make_eval_loader, make_loader, plain_args, progress, restore_training_state,
                            run_training_main, seed_everything, set_epoch, setup_process, training_payload,
                            unwrap, validate_common_args)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    add_common_args(parser, epochs=100, batch_size=8, lr=5e-4, crop_size=256, val_epoch=5)
    g = parser.add_argument_group("HyperCUT")
    g.add_argument("--out_dim", type=int, default=128, help="embedding size D (the hyperplane has D+1 values)")
    g.add_argument("--f_func", default="ResnetIm2Vec", choices=sorted(F_FUNCS), help="pair encoder f")
    g.add_argument("--g_func", default="Concat", choices=sorted(G_FUNCS), help="pair joiner g")
    g.add_argument("--slope", type=float, default=REFERENCE_SLOPE,
                   help="negative slope of f's LeakyReLUs; 1.0 (identity) is the released model's")
    x = parser.add_argument_group("our extensions (docs/ordering.md; off by default)")
    x.add_argument("--subcrop_size", type=int, default=None,
                   help="train on --subcrops random crops of this size taken from each training crop")
    x.add_argument("--subcrops", type=int, default=2, help="sub-crops per sequence (with --subcrop_size)")
    x.add_argument("--crop_consistency", type=float, default=0.0,
                   help="weight of the term asking a sequence's sub-crops to land on one side (0: the paper)")
    return parser


def check_args(args) -> None:
    validate_common_args(args)
    problems = []
    if args.out_dim < 1:
        problems.append(f"--out_dim must be >= 1 (got {args.out_dim})")
    if args.target_frames is not None and len(args.target_frames) < 6:
        problems.append(f"--target_frames: HyperCUT needs at least 6 frames (three nested pairs), "
                        f"got {len(args.target_frames)}")
    if args.subcrop_size is not None and not 1 <= args.subcrop_size <= args.crop_size:
        problems.append(f"--subcrop_size must be in 1..--crop_size ({args.crop_size}), got {args.subcrop_size}")
    if args.subcrops < 1 or args.crop_consistency < 0:
        problems.append("--subcrops must be >= 1 and --crop_consistency >= 0")
    elif args.crop_consistency > 0 and (args.subcrop_size is None or args.subcrops < 2):
        problems.append("--crop_consistency needs --subcrop_size and --subcrops >= 2")
    if problems:
        raise ValueError("; ".join(problems))


def build_model(args) -> HyperCUT:
    # Reference convention (BGR, ImageNet statistics) so checkpoints match the released ones.
    return HyperCUT(out_dim=args.out_dim, f_func=args.f_func, g_func=args.g_func, slope=args.slope,
                    input_convention=REFERENCE_BGR_IMAGENET)


def build_datasets(args):
    if args.no_augment:  # crop only
        augment = AugmentConfig(crop_size=args.crop_size, affine_p=0.0, jitter_p=0.0, noise_p=0.0)
    else:
        augment = AugmentConfig(crop_size=args.crop_size)
    common = dict(target_frames=args.target_frames, data_root=args.data_root, seed=args.seed)
    train_set = Blur2VidDataset(args.metadata_root, "train", augment=augment, **common)
    val_set = Blur2VidDataset(args.metadata_root, "val", augment=None, **common)
    sequence_pairs(len(train_set.target_frames))  # fails early on sequences shorter than 6 frames
    return train_set, val_set


def validate(model, loader, device) -> dict:
    """Loss and hit/consistency of the val split (full images, no augmentation)."""
    scores = hypercut_scores(model, loader, device, desc="val")
    total, l_diff, l_same = hypercut_loss(scores.double())
    return {"loss": total.item(), "diff": l_diff.item(), "same": l_same.item(), **hit_con(scores)}


def train(args) -> dict:
    """The whole run; returns {"losses": [per-step total loss], "val": {epoch: figures}} of this call."""
    device, dist_info = setup_process(args.device)
    with denormals_flushed():  # confidently ordered pairs underflow into slow CPU denormals
        return _train(args, device, dist_info)


def _train(args, device, dist_info) -> dict:
    seed_everything(args.seed)
    train_set, val_set = build_datasets(args)  # data and flag errors surface before the run folder exists
    model = build_model(args).to(device)
    if args.crop_size < model.f_func.min_size:
        raise ValueError(f"--crop_size {args.crop_size} is too small: f needs at least {model.f_func.min_size} pixels")
    run = Run(args, dist_info)
    run.log(f"model: {model.config}, input convention {model.input_convention}, "
            f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} trained parameters")
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], args)
    scheduler = build_scheduler(optimizer, args)

    start_epoch, step = 1, 0
    state = run.resume_state(args)
    if state is not None:
        saved = state.get("hypercut_config")
        if saved is not None and saved != model.config:
            raise CheckpointError(f"the training state was made with {saved}, but the flags ask for {model.config}")
        start_epoch, step = restore_training_state(state, model, optimizer, scheduler)
        run.log(f"resumed from epoch {start_epoch - 1} (step {step})")

    if dist_info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_loader = make_loader(train_set, args.batch_size, train=True, num_workers=args.num_workers,
                               seed=args.seed, dist_info=dist_info, device=device)
    val_loader = make_eval_loader(val_set, args.batch_size, args.num_workers, device)
    run.log(f"train {len(train_set)} sequences ({len(train_loader)} steps/epoch), val {len(val_set)}; "
            f"device {device}, epochs {start_epoch}..{args.epochs}")

    objective = OrderingObjective(args.subcrop_size, args.subcrops, args.crop_consistency, args.seed)
    history = {"losses": [], "val": {}}
    timer = Timer()
    epoch = start_epoch - 1
    for epoch in range(start_epoch, args.epochs + 1):
        set_epoch(train_loader, epoch)
        model.train()
        sums, count, epoch_timer = torch.zeros(3, dtype=torch.float64), 0, Timer()
        stopped = False
        for batch in progress(train_loader, dist_info, desc=f"epoch {epoch}/{args.epochs}", unit="batch", leave=False):
            frames = batch["frames"].to(device, non_blocking=True)
            # the paper's loss on scores (B, 6) of d1, dbar1, d2, dbar2, d3, dbar3, plus our optional crop term
            total, l_diff, l_same, l_crop = objective(model, frames, step)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            step += 1
            values = torch.stack([total, l_diff, l_same]).detach().double().cpu()
            sums += values
            count += 1
            history["losses"].append(values[0].item())
            run.scalars({"train/total": values[0], "train/diff": values[1], "train/same": values[2],
                         **({"train/crop": l_crop.item()} if args.crop_consistency else {}),
                         "train/lr": optimizer.param_groups[0]["lr"]}, step)
            if args.max_steps is not None and step >= args.max_steps:
                stopped = True
                break
        mean = (sums / max(count, 1)).tolist()
        run.log(f"epoch {epoch}/{args.epochs} | step {step} | loss {mean[0]:.5f} (diff {mean[1]:.5f}, "
                f"same {mean[2]:.5f}) | lr {optimizer.param_groups[0]['lr']:.3g} | "
                f"{epoch_timer.elapsed():.1f} s (total {timer.elapsed():.1f} s)")
        complete = count == len(train_loader)  # False only when --max_steps ended the epoch early
        if complete:
            scheduler.step()  # once per epoch

        last = stopped or epoch == args.epochs
        if epoch % args.val_epoch == 0 or last:
            if dist_info.is_main:
                figures = validate(model, val_loader, device)
                history["val"][epoch] = figures
                run.scalars({"val/loss": figures["loss"], "val/hit": figures["hit"],
                             "val/con@2": figures["con@2"], "val/con@3": figures["con@3"]}, step)
                run.log(f"val epoch {epoch} | loss {figures['loss']:.5f} | hit {figures['hit']:.4f} | "
                        f"hit_x2_x6 {figures['hit_x2_x6']:.4f} | hit_x3_x5 {figures['hit_x3_x5']:.4f} | "
                        f"con@2 {figures['con@2']:.4f} | con@3 {figures['con@3']:.4f}")
                path = run.save_model(epoch, {"model": unwrap(model).state_dict(), "epoch": epoch, "step": step,
                                              "args": plain_args(args),
                                              **unwrap(model).checkpoint_fields()})
                run.log(f"saved {path}")
            if dist_info.distributed:
                torch.distributed.barrier()
        if complete:
            run.save_state(epoch, training_payload(model, optimizer, scheduler, epoch, step, args,
                                                   unwrap(model).checkpoint_fields()),
                           numbered=epoch % args.val_epoch == 0 or last)
        else:  # a state from the middle of an epoch could not resume exactly: keep the last full epoch's
            run.log(f"stopped in epoch {epoch} after --max_steps {args.max_steps} steps; "
                    "no training state saved for this partial epoch")
        if stopped:
            break
    run.log(f"done: epoch {epoch}, step {step}, {timer.elapsed():.1f} s")
    run.close()
    return history


def main(argv=None) -> int:
    return run_training_main(build_parser, check_args, train, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Learning curves of the narrow Jin: dB over the blur against optimiser steps, on any dataset with motion.

  python -m lab.experiments.learning_curves --data data/deadleaves --part center --steps 2000 --output_json c.json
  python -m lab.experiments.learning_curves --data data/deadleaves --part chain --order oracle --center_path \\
      weights/jin_centre_w025_deadleaves.pth --steps 800 --output_json oracle.json

Trains in one process on random crops held in memory (no augmentation, no loader), the loop stripped to
what the question needs, and every --eval_every steps scores the test split (whole images) as test_blur2vid.py
does (pair mode): frame 4 and the mean of frames 1 and 7, each minus the blur's figure. --part center trains
the middle network alone (JinCenter); --part chain the whole Jin, optionally from a middle network
(--center_path, frozen unless --train_center) or given the true middle frame (--gt_center: the outer networks
alone). --default_init keeps PyTorch's initialisation of the inner networks' last convolution instead of
starting each as its reference frame (models.backbones.jin.start_as_reference).
"""
from __future__ import annotations

import sys
import time

import torch

from datasets.blur2vid import Blur2VidDataset
from datasets.ordering import entry_motion
from models.backbones.jin import JinBackbone, load_middle_network
from utils.cli import SEED, ArgumentParser, above, at_least, check_flags, run_main
from utils.metrics.sequence import SequenceMetrics
from utils.report import write_json


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Learning curves of the narrow Jin (dB over the blur against steps).",
                       epilog="example:\n  python -m lab.experiments.learning_curves --data data/deadleaves --part center "
                              "--steps 500")
    p.add_argument("--data", required=True, help="dataset root with recorded motion (prepare_dataset.py synthetic)")
    p.add_argument("--part", default="chain", choices=("center", "chain"),
                   help="the middle network alone, or the whole Jin")
    p.add_argument("--order", default="oracle", choices=("oracle", "random", "stored"),
                   help="order of the training sequences (random: a seeded coin per sequence)")
    p.add_argument("--steps", type=at_least(1), default=800, help="optimiser steps")
    p.add_argument("--eval_every", type=int, default=100, help="score the test split every N steps")
    p.add_argument("--lr", type=above(0), default=3e-3, help="learning rate")
    p.add_argument("--optimizer", default="ADAM", choices=("ADAM", "ADAMax"), help="optimiser")
    p.add_argument("--batch_size", type=at_least(1, 2 ** 31 - 1), default=8, help="crops per batch")
    p.add_argument("--crop_size", type=at_least(1), default=40, help="random training crop")
    p.add_argument("--width_mult", type=above(0, 4.0), default=0.25, help="width of the narrow Jin")
    p.add_argument("--center_path", default=None, help="start the middle network from this checkpoint")
    p.add_argument("--train_center", action="store_true", help="fine-tune the loaded middle network")
    p.add_argument("--gt_center", action="store_true", help="give the outer networks the true middle frame")
    p.add_argument("--default_init", action="store_true", help="PyTorch's initialisation of every last conv")
    p.add_argument("--train_limit", type=at_least(1), default=None, help="first N training sequences (default: all)")
    p.add_argument("--test_limit", type=at_least(1), default=64, help="first N test sequences")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the weights and crops")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--output_json", default=None, help="write the curve here")
    return p


def load_split(root, split: str, limit, order: str, seed: int):
    """(blur (N, 3, H, W), frames (N, 7, 3, H, W)) of a split, frames put in the asked order."""
    ds = Blur2VidDataset(root, split, augment=None, limit=limit)
    blur = torch.stack([ds[i]["blur"] for i in range(len(ds))])
    frames = torch.stack([ds[i]["frames"] for i in range(len(ds))])
    if order == "oracle":
        flip = torch.tensor([entry_motion(e.raw, i)[0] < 0 for i, e in enumerate(ds.entries)])
        flip ^= torch.tensor(ds.reversed)
    elif order == "random":
        flip = torch.rand(len(ds), generator=torch.Generator().manual_seed(seed)) < 0.5
    else:
        flip = torch.zeros(len(ds), dtype=torch.bool)
    frames[flip] = frames[flip].flip(1)
    return blur, frames


def figures(pred: torch.Tensor, gt: torch.Tensor) -> dict:
    m = SequenceMetrics(lpips=None, mode="pair")
    m.update(pred, gt)
    per = m.per_frame("pPSNR")
    return {"frame_4": per[len(per) // 2], "frames_1_7": (per[0] + per[-1]) / 2} if len(per) > 1 else {"frame_4": per[0]}


def main_body(args) -> dict:
    check_flags(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    blur, frames = load_split(args.data, "train", args.train_limit, args.order, args.seed)
    tblur, tframes = load_split(args.data, "test", args.test_limit, "stored", args.seed)
    model = JinBackbone(args.width_mult, reference_start=not args.default_init)
    if args.center_path:
        load_middle_network(model.center, args.center_path)
    frozen_center = args.part == "chain" and (args.gt_center or (args.center_path and not args.train_center))
    model.center.requires_grad_(not frozen_center)
    if args.part == "center":
        for net in (model.frame3, model.frame5, model.frame26, model.frame17):
            net.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.Adam if args.optimizer == "ADAM" else torch.optim.Adamax)(params, lr=args.lr)

    def predict(b, f):
        if args.part == "center":
            return model.center(b)[:, None]
        return model(b, f[:, 3] if args.gt_center else None)["frames"]

    def targets(f):
        return f[:, 3:4] if args.part == "center" else f

    blur_ref = figures(tblur[:, None].expand(-1, 7, -1, -1, -1), tframes)
    curve = []

    def evaluate(step, loss):
        model.eval()
        with torch.no_grad():
            pred = torch.cat([predict(b, f) for b, f in zip(tblur.split(16), tframes.split(16))])
        model.train()
        figs = figures(pred.clamp(0, 1), targets(tframes))
        row = {"step": step, "loss": loss, **{f"{k}_over_blur": v - blur_ref[k] for k, v in figs.items()}}
        curve.append(row)
        print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)

    gen = torch.Generator().manual_seed(args.seed)
    losses, started = [], time.time()
    size = blur.shape[-1]
    crop = min(args.crop_size, size)
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(blur), (args.batch_size,), generator=gen)
        y, x = torch.randint(0, size - crop + 1, (2,), generator=gen).tolist()
        b = blur[idx, :, y:y + crop, x:x + crop]
        f = frames[idx, :, :, y:y + crop, x:x + crop]
        loss = torch.sqrt((predict(b, f) - targets(f)) ** 2 + 1e-6).mean()  # the naive (Charbonnier) loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step, sum(losses[-args.eval_every:]) / len(losses[-args.eval_every:]))
    result = {"args": {k: v for k, v in vars(args).items()}, "blur": blur_ref, "curve": curve,
              "seconds": time.time() - started}
    if args.output_json:
        write_json(args.output_json, result)
    return result


def main(argv=None) -> int:
    return run_main(build_parser, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())

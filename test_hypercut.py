"""Evaluate a HyperCUT ordering model on a split: hit and consistency rates (SPEC 4).

  python test_hypercut.py --metadata_root data/synthetic --pretrained_path checkpoints/hc/models/0100.pth
  python test_hypercut.py --metadata_root data/reds --pretrained_path hypercut_reds.pth --output_json r.json

--pretrained_path takes our checkpoints (models/NNNN.pth of train_hypercut.py, which record the model's
config and input convention) or the authors' plain state dict (BGR/ImageNet input, slope 1.0).

The frames are evaluated as the dataset loads them: full images, no augmentation, and each entry's
`order` applied (reverse flips the sequence; random is drawn once per entry from --seed), which is what
the reference's test did. Reversing a sequence swaps d_k and dbar_k, so hit figures do not depend on
`order`; con@2/con@3 change only for sequences where some pair misses (h(d_k) and h(dbar_k) of one
sign). Only generate_order.py ignores `order` (it judges the frames as stored).

Figures, over the split's sequences: hit = share with h(d1) h(dbar1) < 0; hit_x2_x6 and hit_x3_x5 the
same for P2 = (x2, x6) and P3 = (x3, x5); con@2 = share with sign h(d1) = sign h(d2); con@3 = share with
all three signs equal.
"""
from __future__ import annotations

import argparse
import sys

from datasets.blur2vid import Blur2VidDataset
from datasets.metadata import PARTITIONS, MetadataError
from models.hypercut import load_hypercut
from utils.checkpoint import CheckpointError
from utils.device import resolve_device
from utils.metrics import hit_con
from utils.report import markdown_table, write_json
from utils.training import ArgumentParser, check_eval_loader_args, error_line, fail, hypercut_scores, make_eval_loader

FIGURES = ("hit", "hit_x2_x6", "hit_x3_x5", "con@2", "con@3", "num_sequences")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metadata_root", required=True, help="dataset root holding metadata.json (or the file itself)")
    p.add_argument("--data_root", default=None, help="resolve relative paths against this folder instead")
    p.add_argument("--pretrained_path", required=True, help="our checkpoint or the reference's state dict")
    p.add_argument("--split", default="test", choices=PARTITIONS)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=42, help="seed of the draws for entries with order 'random'")
    p.add_argument("--output_json", default=None, help="also write the figures to this JSON file")
    return p


def evaluate(args) -> dict:
    device = resolve_device(args.device)
    model = load_hypercut(args.pretrained_path, map_location=device)
    dataset = Blur2VidDataset(args.metadata_root, args.split, data_root=args.data_root, augment=None, seed=args.seed)
    if len(dataset.target_frames) < 6:
        raise ValueError(f"HyperCUT needs sequences of at least 6 frames, this dataset has {len(dataset.target_frames)}")
    loader = make_eval_loader(dataset, args.batch_size, args.num_workers, device)
    scores = hypercut_scores(model, loader, device, desc=f"{args.split}")
    return hit_con(scores)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_eval_loader_args(args)
        figures = evaluate(args)
    except (MetadataError, CheckpointError, ValueError) as e:
        fail(error_line(e))
    print(markdown_table(FIGURES, [[figures[k] for k in FIGURES]]))
    if args.output_json:
        result = {k: figures[k] for k in FIGURES}
        result.update(split=args.split, metadata_root=str(args.metadata_root), pretrained_path=str(args.pretrained_path))
        path = write_json(args.output_json, result)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Give every sequence of a dataset its canonical order with a trained HyperCUT (SPEC 2 and 4).

  python generate_order.py --metadata_root data/synthetic --pretrained_path checkpoints/hc/models/0100.pth \
      --save_path data/synthetic/metadata_ordered.json
  python generate_order.py --metadata_root data/synthetic --oracle --save_path data/synthetic/metadata_oracle.json

--oracle (embedded dataset only) orders by the camera motion that prepare_dataset.py synthetic records
in each entry (`motion: [dx, dy]`, frame 1 -> frame 7): `reverse` iff dx < 0. It is the ceiling of
a learnable canonical order (datasets/ordering.py), to compare HyperCUT's order with.

Every entry of every split is judged on its frames as stored on disk (full images, no augmentation;
the entry's current `order` is ignored; entries with a `bbox` are cropped around it as at test time): with u_k = h(f(g(P_k))) for P1 = (x1, x7), P2 = (x2, x6),
P3 = (x3, x5), the entry becomes `reverse` iff u1 < 0 and u1 u2 > 0 and u1 u3 > 0, and `ignore`
otherwise. The output is the input metadata with only `order` changed: entries in their order, every
other field and top-level key as it was. Running it on its own output therefore changes nothing.
(The reference judged frames after applying the old order, and its train split after random
augmentation; both made the result depend on the input's orders and on chance.)

Relative paths in metadata.json resolve against the file's folder, and this script changes nothing but
`order`, so --save_path must be in the same folder as the input (unless every path is absolute). It
never writes over an existing file (the input metadata.json included) without --overwrite.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import torch

from datasets.blur2vid import Blur2VidDataset
from datasets.ordering import oracle_orders
from datasets.metadata import MetadataError, check_files, frame_key, metadata_file, parse_entries, read_metadata, \
    with_orders, write_metadata
from models.hypercut import load_hypercut, order_decisions
from utils.checkpoint import CheckpointError
from utils.device import resolve_device
from utils.report import markdown_table
from utils.training import ArgumentParser, check_eval_loader_args, error_line, fail, hypercut_scores, make_eval_loader


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metadata_root", required=True, help="dataset root holding metadata.json (or the file itself)")
    p.add_argument("--pretrained_path", default=None, help="our checkpoint or the reference's state dict")
    p.add_argument("--oracle", action="store_true",
                   help="order by each entry's recorded camera motion (reverse iff dx < 0) instead of HyperCUT")
    p.add_argument("--save_path", required=True,
                   help="output metadata file, in the dataset root (a folder means <folder>/metadata.json)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--overwrite", action="store_true",
                   help="allow replacing an existing --save_path, the input metadata.json included")
    return p


def _relative_paths(meta: dict, frame_per_seq: int) -> list:
    keys = ["blur_path", "bbox"] + [frame_key(k) for k in range(1, frame_per_seq + 1)]
    return [e[k] for e in meta["data"] for k in keys
            if isinstance(e, dict) and isinstance(e.get(k), str) and not Path(e[k]).is_absolute()]


def output_path(args, source: Path, meta: dict) -> Path:
    """Where to write, after the checks that protect the input and keep relative paths valid."""
    out = Path(args.save_path)
    if out.is_dir():
        out = metadata_file(out)
    if out.exists() and out.is_dir():
        raise ValueError(f"--save_path {out} is a folder")
    if not out.parent.is_dir():
        raise ValueError(f"--save_path {out}: folder {out.parent} does not exist")
    if out.exists() and not args.overwrite:
        if os.path.samefile(out, source):
            raise ValueError(f"--save_path {out} is the input metadata {source}; pass --overwrite to replace it, "
                             f"or write beside it (e.g. {source.parent / 'metadata_ordered.json'})")
        raise ValueError(f"--save_path {out} already exists; pass --overwrite to replace it")
    if out.parent.resolve() != source.parent.resolve():
        rel = _relative_paths(meta, meta.get("frame_per_seq", 7))
        if rel:
            raise ValueError(f"--save_path {out} is outside the dataset root {source.parent}, against which the "
                             f"metadata's relative paths (e.g. {rel[0]!r}) resolve; save it inside that folder "
                             f"(e.g. {source.parent / out.name})")
    return out


def judge(args, device, meta: dict, source: Path) -> torch.Tensor:
    """Scores (N, 6) of every entry, in metadata order, on the frames as stored."""
    entries = parse_entries(meta, source.parent, source=str(source))  # every split, metadata order
    if not entries:
        raise MetadataError(f"{source}: no entries")
    check_files(entries, progress=True)
    # Judge the frames as stored: the entries' current order is not applied.
    entries = [dataclasses.replace(e, order="keep") for e in entries]
    dataset = Blur2VidDataset(None, "all", entries=entries, frame_per_seq=meta.get("frame_per_seq", 7), augment=None)
    if len(dataset.target_frames) < 6:
        raise ValueError(f"HyperCUT needs sequences of at least 6 frames, this dataset has {len(dataset.target_frames)}")
    model = load_hypercut(args.pretrained_path, map_location=device)
    loader = make_eval_loader(dataset, args.batch_size, args.num_workers, device)
    return hypercut_scores(model, loader, device, desc="ordering")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_eval_loader_args(args)
        if args.oracle == (args.pretrained_path is not None):
            raise ValueError("give either --pretrained_path (HyperCUT's order) or --oracle (the recorded motion)")
        source = metadata_file(args.metadata_root)
        meta = read_metadata(source)
        out = output_path(args, source, meta)  # check before the (long) scoring
        if args.oracle:
            orders = oracle_orders(meta)
            reverse = torch.tensor([orders[i] == "reverse" for i in range(len(meta["data"]))], dtype=torch.bool)
            consistent = torch.ones_like(reverse)
        else:
            device = resolve_device(args.device)
            scores = judge(args, device, meta, source)
            reverse = order_decisions(scores)
            u = scores[:, 0::2]
            consistent = ((u[:, 0] * u[:, 1] > 0) & (u[:, 0] * u[:, 2] > 0))
            orders = {i: "reverse" if r else "ignore" for i, r in enumerate(reverse.tolist())}
        write_metadata(out, with_orders(meta, orders))
    except (MetadataError, CheckpointError, ValueError, OSError) as e:
        fail(error_line(e))

    partitions = [e["partition"] for e in meta["data"]]
    rows = []
    for split in ("train", "val", "test", "all"):
        mask = torch.tensor([split == "all" or p == split for p in partitions])
        if mask.any():
            rows.append([split, int(mask.sum()), int(reverse[mask].sum()), int((~consistent[mask]).sum())])
    print(markdown_table(["split", "sequences", "reversed", "inconsistent"], rows))
    print(f"reversed {int(reverse.sum())} of {len(reverse)} sequences; {int((~consistent).sum())} inconsistent "
          f"(signs of u1, u2, u3 not all equal; kept as stored); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

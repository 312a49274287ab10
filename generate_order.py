"""Give every sequence of a dataset its canonical order with a trained HyperCUT.

  python generate_order.py --dataset_name syn --metadata_root data/synthetic \
      --pretrained_path checkpoints/hc/models/0100.pth --save_path data/synthetic/metadata_ordered.json
  python generate_order.py --metadata_root data/synthetic --pretrained_path hc.pth --save_path orders/syn.json
  python generate_order.py --metadata_root data/synthetic --oracle --save_path data/synthetic/metadata_oracle.json

--oracle (embedded dataset only) orders by the camera motion that prepare_dataset.py synthetic records
in each entry (`motion: [dx, dy]`, frame 1 -> frame 7): `reverse` iff dx < 0. It is the ceiling of
a learnable canonical order (datasets/ordering.py), to compare HyperCUT's order with.

Every entry of every split is judged on its frames as stored on disk (full images, no augmentation;
the entry's current `order` is ignored; entries with a `bbox` are cropped around it as at test time): with u_k = h(f(g(P_k))) for P1 = (x1, x7), P2 = (x2, x6),
P3 = (x3, x5), the entry becomes `reverse` iff u1 < 0 and u1 u2 > 0 and u1 u3 > 0, and `ignore`
otherwise. The output is the input metadata with only `order` changed (and relative paths rebased when it is
written to another folder): entries in their order, every other field and top-level key as it was. Running it on its own output therefore changes nothing.
(The reference judged frames after applying the old order, and its train split after random
augmentation; both made the result depend on the input's orders and on chance.)

--save_path may be anywhere: relative image paths (which resolve against the input's folder, or
--data_root) are rewritten relative to the output's folder, so the new file reads the same images;
absolute paths stay as they are. It never writes over an existing file (the input metadata.json
included) without --overwrite, and the file is written to a temporary name and renamed. Without
--pretrained_path, the latest model of the run train_hypercut.py names for the same flags is used.
"""
from __future__ import annotations

import utils.threads  # noqa: F401  (first: OpenMP's wait policy, before torch loads)

import dataclasses
import os
import sys
from pathlib import Path

import torch

from datasets.blur2vid import Blur2VidDataset, check_image_sizes
from datasets.ordering import oracle_orders
from datasets.metadata import (MetadataError, check_files, dataset_inputs, dataset_name, metadata_file, parse_entries,
                               read_metadata, rebased, with_orders, write_metadata)
from models.hypercut import F_FUNCS, G_FUNCS, load_hypercut, order_decisions
from utils.cli import (ArgumentParser, add_checkpoint_args, add_data_args, add_runtime_args, at_least, check_flags,
                       long_name, output_problem, run_main)
from utils.device import resolve_device
from utils.errors import FlagError, RunFolderError
from utils.evaluation import hypercut_scores, make_eval_loader
from utils.outputs import check_outputs
from utils.report import markdown_table
from utils.run import hypercut_run_name, resolve_pretrained


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Write a dataset's metadata with every sequence in its canonical order, as a trained HyperCUT "
                    "judges it (or, with --oracle, as its recorded camera motion says).",
        epilog="examples:\n"
               "  python generate_order.py --metadata_root data/synthetic \\\n"
               "      --pretrained_path checkpoints/hypercut_syn/models/0024.pth \\\n"
               "      --save_path data/synthetic/metadata_hc.json\n"
               "  python generate_order.py --metadata_root data/synthetic --oracle "
               "--save_path data/synthetic/metadata_oracle.json")
    add_data_args(p, limits=(), target_frames=False)
    add_runtime_args(p, batch_size=8, num_workers=0)
    add_checkpoint_args(p, "our HyperCUT checkpoint or the reference's state dict")
    p.add_argument("--oracle", action="store_true",
                   help="order by each entry's recorded camera motion (reverse iff dx < 0) instead of HyperCUT")
    p.add_argument("--save_path", required=True,
                   help="output metadata file (a folder means <folder>/metadata.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow replacing an existing --save_path, the input metadata.json included")
    g = p.add_argument_group("HyperCUT (for the default run name)")
    g.add_argument("--out_dim", type=at_least(1, 1024), default=128, help="embedding size D of the run")
    g.add_argument("--f_func", default="ResnetIm2Vec", choices=F_FUNCS.names(), help="pair encoder f of the run")
    g.add_argument("--g_func", default="Concat", choices=G_FUNCS.names(), help="pair joiner g of the run")
    return p


def output_path(args, source: Path) -> Path:
    """Where to write, after the checks that protect existing files."""
    out = Path(args.save_path)
    too_long = long_name(out)
    if too_long:
        raise FlagError(f"--save_path {out} cannot be created: {too_long}")
    if out.is_dir():
        out = metadata_file(out)
    if out.exists() and out.is_dir():
        raise FlagError(f"--save_path {out} is a folder")
    if not out.parent.is_dir():
        raise FlagError(f"--save_path {out}: folder {out.parent} does not exist")
    problem = output_problem(out, folder=False)
    if problem:
        raise FlagError(f"--save_path {problem}")
    if out.exists() and not args.overwrite:
        if os.path.samefile(out, source):
            raise FlagError(f"--save_path {out} is the input metadata {source}; pass --overwrite to replace it, "
                            f"or write beside it (e.g. {source.parent / 'metadata_ordered.json'})")
        raise FlagError(f"--save_path {out} already exists; pass --overwrite to replace it")
    return out


def check_inputs_kept(checkpoint, out: Path, meta: dict, source: Path, root: Path) -> None:
    """--save_path is none of the files the ordering reads: an image, a bbox file, the HyperCUT `checkpoint`
    (whether it may replace the input metadata is output_path's rule)."""
    inputs = dataset_inputs(source, parse_entries(meta, root, source=str(source)), with_metadata=False)
    check_outputs([("--save_path", out)], inputs.add_checkpoint("--pretrained_path", checkpoint))


def judge(args, checkpoint, device, meta: dict, source: Path, root: Path) -> torch.Tensor:
    """Scores (N, 6) of the HyperCUT of `checkpoint` for every entry, in metadata order, on the frames as stored."""
    entries = parse_entries(meta, root, source=str(source))  # every split, metadata order
    if not entries:
        raise MetadataError(f"{source}: no entries")
    check_files(entries, progress=True, decode=not args.quick_check)
    # Judge the frames as stored: the entries' current order is not applied.
    entries = [dataclasses.replace(e, order="keep") for e in entries]
    dataset = Blur2VidDataset(None, "all", entries=entries, frame_per_seq=meta.get("frame_per_seq", 7), augment=None)
    if len(dataset.target_frames) < 6:
        raise FlagError(f"HyperCUT needs sequences of at least 6 frames, this dataset has {len(dataset.target_frames)}")
    model = load_hypercut(checkpoint, map_location=device)
    check_image_sizes(None, None, dataset, eval_need={"HyperCUT's f": model.f_func.min_size})
    loader = make_eval_loader(dataset, args.batch_size, args.num_workers, device)
    return hypercut_scores(model, loader, device, desc="ordering")


def main_body(args) -> None:
    check_flags(args)
    source = metadata_file(args.metadata_root)
    meta = read_metadata(source)
    root = Path(args.data_root) if args.data_root else source.parent
    out = output_path(args, source)  # checked before the (long) scoring
    if args.oracle:
        if args.pretrained_path:
            raise FlagError("give either --pretrained_path (HyperCUT's order) or --oracle (the recorded motion)")
        check_inputs_kept(None, out, meta, source, root)
        orders = oracle_orders(meta)
        reverse = torch.tensor([orders[i] == "reverse" for i in range(len(meta["data"]))], dtype=torch.bool)
        consistent = torch.ones_like(reverse)
    else:
        run_name = hypercut_run_name(args.f_func, args.g_func, args.out_dim, dataset_name(source, args.dataset_name))
        try:
            checkpoint = str(resolve_pretrained(args, run_name))
        except RunFolderError as e:
            raise RunFolderError(f"{e}; or pass --oracle to order by the recorded motion") from None
        check_inputs_kept(checkpoint, out, meta, source, root)
        device = resolve_device(args.device)
        scores = judge(args, checkpoint, device, meta, source, root)
        reverse = order_decisions(scores)
        u = scores[:, 0::2]
        consistent = ((u[:, 0] * u[:, 1] > 0) & (u[:, 0] * u[:, 2] > 0))
        orders = {i: "reverse" if r else "ignore" for i, r in enumerate(reverse.tolist())}
    # without --overwrite the file is created only if nothing is there at that moment (another process may have
    # written it meanwhile)
    write_metadata(out, rebased(with_orders(meta, orders), root, out.parent), overwrite=args.overwrite)

    partitions = [e["partition"] for e in meta["data"]]
    rows = []
    for split in ("train", "val", "test", "all"):
        mask = torch.tensor([split == "all" or p == split for p in partitions])
        if mask.any():
            rows.append([split, int(mask.sum()), int(reverse[mask].sum()), int((~consistent[mask]).sum())])
    print(markdown_table(["split", "sequences", "reversed", "inconsistent"], rows))
    print(f"reversed {int(reverse.sum())} of {len(reverse)} sequences; {int((~consistent).sum())} inconsistent "
          f"(signs of u1, u2, u3 not all equal; kept as stored); wrote {out}")


def main(argv=None) -> int:
    return run_main(build_parser, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())

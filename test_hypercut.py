"""Evaluate a HyperCUT ordering model on a split: hit and consistency rates.

  python test_hypercut.py --dataset_name syn --metadata_root data/synthetic --pretrained_path checkpoints/hc/models/0100.pth
  python test_hypercut.py --metadata_root data/reds --pretrained_path hypercut_reds.pth --output_json r.json
  python test_hypercut.py --dataset_name syn --metadata_root data/synthetic      # the latest model of the default run

--pretrained_path takes our checkpoints (models/NNNN.pth of train_hypercut.py, which record the model's
config and input convention) or the authors' plain state dict (BGR/ImageNet input, slope 1.0). Without
it, the latest model (or --load_epoch's) of the run train_hypercut.py names for the same flags
(HyperCUT_<f_func>_<g_func>_2frames_dim<out_dim>_<dataset_name>), or of --exp_name.

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

import utils.threads  # noqa: F401  (first: OpenMP's wait policy, before torch loads)

import sys

from datasets.blur2vid import Blur2VidDataset, check_image_sizes, file_check
from datasets.metadata import PARTITIONS, dataset_inputs, dataset_name
from models.hypercut import F_FUNCS, G_FUNCS, hit_con, load_hypercut
from utils.cli import (ArgumentParser, add_checkpoint_args, add_data_args, add_eval_args, add_runtime_args,
                       at_least, check_flags, run_main)
from utils.device import resolve_device
from utils.errors import FlagError
from utils.evaluation import hypercut_scores, make_eval_loader
from utils.outputs import check_outputs
from utils.report import markdown_table, write_json
from utils.run import hypercut_run_name, resolve_pretrained

FIGURES = ("hit", "hit_x2_x6", "hit_x3_x5", "con@2", "con@3", "num_sequences")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Evaluate a HyperCUT ordering model on a split: hit and consistency rates (a table, and "
                    "--output_json).",
        epilog="example:\n"
               "  python test_hypercut.py --metadata_root data/synthetic "
               "--pretrained_path checkpoints/hypercut_syn/models/0024.pth")
    add_data_args(p, limits=("test",), target_frames=False)
    add_runtime_args(p, batch_size=8, num_workers=0)
    add_checkpoint_args(p, "our HyperCUT checkpoint or the reference's state dict")
    add_eval_args(p, PARTITIONS)
    g = p.add_argument_group("HyperCUT (for the default run name)")
    g.add_argument("--out_dim", type=at_least(1, 1024), default=128, help="embedding size D of the run")
    g.add_argument("--f_func", default="ResnetIm2Vec", choices=F_FUNCS.names(), help="pair encoder f of the run")
    g.add_argument("--g_func", default="Concat", choices=G_FUNCS.names(), help="pair joiner g of the run")
    return p


def evaluate(args) -> dict:
    """hit/con of the HyperCUT of --pretrained_path (default: the latest model of the run --exp_name names) on
    --split, with what they are of ("dataset_name", "pretrained_path")."""
    check_flags(args)
    device = resolve_device(args.device)
    data_name = dataset_name(args.metadata_root, args.dataset_name)
    path = str(resolve_pretrained(args, hypercut_run_name(args.f_func, args.g_func, args.out_dim, data_name)))
    model = load_hypercut(path, map_location=device)
    dataset = Blur2VidDataset(args.metadata_root, args.split, data_root=args.data_root, augment=None, seed=args.seed,
                              limit=args.test_limit, check_files=file_check(args))
    if len(dataset.target_frames) < 6:
        raise FlagError(f"HyperCUT needs sequences of at least 6 frames, this dataset has {len(dataset.target_frames)}")
    check_image_sizes(None, None, dataset, eval_need={"HyperCUT's f": model.f_func.min_size})
    check_outputs([("--output_json", args.output_json)],
                  dataset_inputs(args.metadata_root, data_root=args.data_root).add_checkpoint("--pretrained_path", path))
    loader = make_eval_loader(dataset, args.batch_size, args.num_workers, device)
    scores = hypercut_scores(model, loader, device, desc=f"{args.split}")
    return {**hit_con(scores), "dataset_name": data_name, "pretrained_path": path}


def main_body(args) -> None:
    figures = evaluate(args)
    print(markdown_table(FIGURES, [[figures[k] for k in FIGURES]]))
    if args.output_json:
        result = {k: figures[k] for k in FIGURES}
        result.update(split=args.split, dataset_name=figures["dataset_name"], metadata_root=str(args.metadata_root),
                      pretrained_path=figures["pretrained_path"])
        path = write_json(args.output_json, result)
        print(f"wrote {path}")


def main(argv=None) -> int:
    return run_main(build_parser, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())

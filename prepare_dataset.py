"""Build a dataset in the seed layout (root/<seq>/blur, root/<seq>/sharp, root/metadata.json).

  python prepare_dataset.py synthetic --out data/synthetic            # the embedded dataset
  python prepare_dataset.py frames --src REDS_120fps/train --out data/reds --window 49
  python prepare_dataset.py summary --out data/synthetic              # print what a dataset holds
"""
from __future__ import annotations

import utils.threads  # noqa: F401  (first: OpenMP's wait policy, before torch loads)

import os
import sys
from collections import Counter
from pathlib import Path

from datasets.metadata import PARTITIONS, load_split, metadata_file, parse_entries, read_metadata
from utils.cli import SEED, ArgumentParser, above, at_least, check_flags, run_main
from utils.errors import FlagError


def print_summary(root, check=True) -> dict:
    """Validate a dataset (check: True decodes every image, "headers" reads the headers only) and print
    what it holds."""
    root = Path(root)
    meta = read_metadata(root)
    # every entry's fields first (one line on the first bad one), then each split's files
    parsed = parse_entries(meta, metadata_file(root).parent, source=str(metadata_file(root)))
    counts = Counter(e.partition for e in parsed)
    orders = Counter(e.order for e in parsed)
    sizes = {}
    for split in PARTITIONS:
        if counts.get(split):
            _, entries = load_split(root, split, check=check, progress=True)
            h, w = entries[0].size
            sizes[split] = f"{h}x{w}"
    print(f"dataset {meta.get('name', '?')} at {root.resolve()}")
    print(f"  frames per sequence: {meta.get('frame_per_seq', 7)}")
    print("| split | sequences | size (HxW) |")
    print("|---|---|---|")
    for split in PARTITIONS:
        print(f"| {split} | {counts.get(split, 0)} | {sizes.get(split, '-')} |")
    print(f"  orders: {dict(orders)}")
    return {"counts": dict(counts), "sizes": sizes}


def restore_interrupted_replacement(out) -> None:
    """A replacement of the dataset killed in the middle of its final moves left the old dataset aside in
    OUT/.replaced/: put it back (or finish the replacement), holding the folder's lock meanwhile."""
    from datasets.writer import REPLACED, finish_replacement
    from utils.lock import FolderLock
    if (Path(out) / REPLACED).is_dir():
        with FolderLock(out, "the dataset folder"):
            if finish_replacement(out):
                print(f"put back the dataset at {out}, whose replacement was interrupted", file=sys.stderr)


def check_src_and_out(src, out) -> None:
    """The videos are read from --src and the dataset written to --out: neither may hold the other."""
    src_real, out_real = os.path.realpath(src), os.path.realpath(out)
    if src_real == out_real or out_real.startswith(src_real + os.sep) or src_real.startswith(out_real + os.sep):
        raise FlagError(f"--out {out} and --src {src} are the same folder or one holds the other: the dataset "
                        "would be written among the videos it is made from; choose an --out outside --src")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Build or check a dataset in the seed layout (root/<seq>/blur, root/<seq>/sharp, "
                    "root/metadata.json); `prepare_dataset.py MODE --help` for each mode.",
        epilog="examples:\n"
               "  python prepare_dataset.py synthetic --out data/synthetic            # the embedded dataset\n"
               "  python prepare_dataset.py frames --src REDS_120fps/train --out data/reds --window 49\n"
               "  python prepare_dataset.py summary --out data/synthetic              # what a dataset holds")
    sub = parser.add_subparsers(dest="mode", required=True)

    syn = sub.add_parser(
        "synthetic", help="render an embedded dataset: scikit-image's photographs or dead-leaves textures",
        description="Render an embedded dataset (nothing is downloaded): scikit-image's photographs or dead-leaves "
                    "textures under a camera motion recorded in each entry.",
        epilog="example:\n  python prepare_dataset.py synthetic --out data/deadleaves --scene deadleaves "
               "--motion translation --workers 2")
    syn.add_argument("--out", required=True, help="output dataset root")
    syn.add_argument("--scene", default="photos", choices=("photos", "deadleaves"),
                     help="photos: windows over scikit-image's bundled photographs (split by photograph); "
                          "deadleaves: a new procedural texture for every sequence")
    syn.add_argument("--motion", default="trajectory", choices=("trajectory", "translation"),
                     help="trajectory: a smooth path with a little rotation and zoom, and moving foreground "
                          "patches (--foreground_p); translation: one global translation per sequence, uniform "
                          "direction")
    syn.add_argument("--radii", type=above(0, 1000.0), nargs=2, default=[1.5, 0.5], metavar=("MIN", "MAX"),
                     help="deadleaves: smallest disc radius in pixels and largest as a fraction of --size")
    syn.add_argument("--size", type=at_least(32, 4096), default=128, help="image size (square)")
    syn.add_argument("--num_train", type=at_least(0), default=360, help="training sequences")
    syn.add_argument("--num_val", type=at_least(0), default=40, help="validation sequences")
    syn.add_argument("--num_test", type=at_least(0), default=100, help="test sequences")
    syn.add_argument("--subframes", type=at_least(5, 99), default=7, help="sub-frames per frame slot (odd, >= 5)")
    syn.add_argument("--travel", type=at_least(0, 1000.0, kind=float), nargs=2, default=[8.0, 22.0],
                     metavar=("MIN", "MAX"),
                     help="camera travel over the exposure, drawn uniformly per sequence, in pixels of the photo at "
                          "about one per output pixel (x0.85-1.15 per sequence)")
    syn.add_argument("--foreground_p", type=at_least(0, 1.0, kind=float), default=0.4,
                     help="share of sequences with a moving patch")
    syn.add_argument("--seed", type=SEED, default=0, help="seed of the rendering")
    syn.add_argument("--workers", type=at_least(1, 256), default=1, help="rendering processes (the output is the same)")
    syn.add_argument("--overwrite", action="store_true", help="replace a dataset already at --out")

    fr = sub.add_parser(
        "frames", help="from folders of consecutive high-frame-rate frames, one per video",
        description="Build a dataset from folders of consecutive high-frame-rate frames, one per video: each "
                    "window of frames averaged into a blurry image, 7 of them kept as its sharp frames.",
        epilog="example:\n  python prepare_dataset.py frames --src REDS_120fps/train --out data/reds --window 49")
    fr.add_argument("--src", required=True, help="folder holding one sub-folder of frames per video")
    fr.add_argument("--out", required=True, help="output dataset root")
    fr.add_argument("--window", type=at_least(1), default=49, help="frames averaged into one blurry image")
    fr.add_argument("--stride", type=at_least(1), default=None, help="frames between window starts (default: window)")
    fr.add_argument("--num_frames", type=at_least(2), default=7, help="sharp frames per sequence")
    fr.add_argument("--no_linear", action="store_true", help="average in sRGB instead of linear light")
    fr.add_argument("--val_fraction", type=at_least(0, 1.0, kind=float), default=0.1,
                    help="share of the videos for val, unless --val_videos names them")
    fr.add_argument("--test_fraction", type=at_least(0, 1.0, kind=float), default=0.1,
                    help="share of the videos for test, unless --test_videos names them")
    fr.add_argument("--val_videos", nargs="*", default=[], help="video folder names for val")
    fr.add_argument("--test_videos", nargs="*", default=[], help="video folder names for test")
    fr.add_argument("--seed", type=SEED, default=0, help="seed of the shuffle that splits the videos")
    fr.add_argument("--overwrite", action="store_true", help="replace a dataset already at --out")

    sm = sub.add_parser("summary", help="validate a dataset and print its summary",
                        description="Validate a dataset (metadata and every image) and print what it holds.",
                        epilog="example:\n  python prepare_dataset.py summary --out data/synthetic --quick_check")
    sm.add_argument("--out", required=True, help="dataset root")
    sm.add_argument("--quick_check", action="store_true",
                    help="read only the image headers instead of decoding every image in full")

    return parser


def main_body(args) -> None:
    check_flags(args)
    if args.mode == "summary":
        restore_interrupted_replacement(args.out)
        print_summary(args.out, check="headers" if args.quick_check else True)
        return
    from datasets.writer import DatasetWriter
    # the configuration is checked before anything is created at --out
    if args.mode == "synthetic":
        from datasets.synthetic import SyntheticConfig, generate
        cfg = SyntheticConfig(size=args.size, subframes=args.subframes, seed=args.seed, scene=args.scene,
                              motion=args.motion, radii=tuple(args.radii),
                              foreground_p=args.foreground_p, shift=tuple(args.travel),
                              counts={"train": args.num_train, "val": args.num_val, "test": args.num_test})
    else:
        from datasets import from_frames
        check_src_and_out(args.src, args.out)
        cfg = from_frames.FramesConfig(window=args.window, stride=args.stride, frames=args.num_frames,
                                       linear=not args.no_linear, val_fraction=args.val_fraction,
                                       test_fraction=args.test_fraction, val_videos=tuple(args.val_videos),
                                       test_videos=tuple(args.test_videos), seed=args.seed)
    writer = DatasetWriter(args.out, overwrite=args.overwrite)
    try:
        if args.mode == "synthetic":
            meta = generate(cfg, writer, progress=sys.stderr.isatty(), workers=args.workers)
        else:
            meta = from_frames.generate(args.src, cfg, writer, progress=sys.stderr.isatty())
    except BaseException:
        writer.abort()  # nothing half-written is left at --out
        raise
    writer.commit(meta)
    if writer.kept:
        shown = ", ".join(writer.kept[:6]) + (f" and {len(writer.kept) - 6} more" if len(writer.kept) > 6 else "")
        print(f"note: --overwrite kept what {args.out} held beside the new dataset ({shown}): the new "
              "metadata.json does not list it, and order files made for the old data no longer describe this one; "
              "delete what belonged to the old dataset", file=sys.stderr)
    try:
        print_summary(args.out)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (utils.cli.Terminated), which keeps its exit code
        raise type(e)(f"interrupted while checking the new dataset; it was written completely to "
                      f"{args.out} (check it with: python prepare_dataset.py summary --out {args.out})") from None


def main(argv=None) -> int:
    return run_main(build_parser, main_body, argv,
                    interrupted="interrupted; nothing was written to --out (run the command again)")


if __name__ == "__main__":
    sys.exit(main())

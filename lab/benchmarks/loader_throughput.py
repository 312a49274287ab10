"""Training-loader throughput: samples/s for crops of (blur + T sharp frames), against a plain PIL loader.

Builds a dataset of realistic-size frames (REDS-like 720x1280 by default) in a temporary folder with
`prepare_dataset.py frames` (photographs from scikit-image, panned over the window, with a little sensor
grain so the PNGs compress like camera frames), then times, in the same run and on the same files:

  pil        the plain loader a person writes first: PIL open + convert("RGB") + numpy + torch,
             one random crop shared by the stack, no augmentation
  decode     our Blur2VidDataset with the crop only (affine, jitter and noise off): decode-only figure
  train      our Blur2VidDataset with the reference's training augmentation (affine p 0.6, jitter p 0.6,
             noise p 0.4)
  train_all  the same with every augmentation forced on (p = 1): the worst case

each with DataLoader num_workers in --workers. Ratios are against `pil` at the same worker count.

  python -m lab.benchmarks.loader_throughput                              # 720x1280, 24 sequences
  python -m lab.benchmarks.loader_throughput --height 480 --width 640 --batches 4 --workers 0 2
  python -m lab.benchmarks.loader_throughput --no_write                   # print only
"""
from __future__ import annotations

import contextlib
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lab.benchmarks.machine import cpu_name
from utils.cli import ArgumentParser

REPO = Path(__file__).resolve().parents[2]

RESULTS = REPO / "lab" / "benchmarks" / "results" / "loader_throughput.md"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def make_videos(src: Path, videos: int, frames: int, height: int, width: int, seed: int = 0) -> None:
    """One folder of `frames` PNGs per video: a photograph scaled to cover the frame and panned."""
    import skimage.data
    import torchvision.transforms.v2.functional as TF
    from torchvision.io import write_png

    gen = torch.Generator().manual_seed(seed)
    for v in range(videos):
        img = getattr(skimage.data, PHOTOS[v % len(PHOTOS)])()
        photo = torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1).float().div(255)
        pan = 2 * frames  # pixels of travel over the video
        scale = max((height + pan) / photo.shape[1], (width + pan) / photo.shape[2])
        photo = TF.resize(photo, [int(photo.shape[1] * scale) + 1, int(photo.shape[2] * scale) + 1], antialias=True)
        dy, dx = (1, 2) if v % 2 == 0 else (-1, 2)
        y0 = 0 if dy > 0 else photo.shape[1] - height
        folder = src / f"video{v:03d}"
        folder.mkdir(parents=True)
        for f in range(frames):
            crop = photo[:, y0 + dy * f:y0 + dy * f + height, dx * f:dx * f + width]
            grain = torch.randn(crop.shape, generator=gen) * (2.0 / 255)
            write_png((crop + grain).clamp(0, 1).mul(255).round().to(torch.uint8), str(folder / f"{f:05d}.png"))


class PILCropDataset(Dataset):
    """The baseline: PIL decode of every image, one shared random crop, no augmentation."""

    def __init__(self, entries, crop: int, seed: int = 0):
        self.entries, self.crop, self.seed = entries, crop, seed

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        e = self.entries[index]
        arrays = [np.asarray(Image.open(p).convert("RGB")) for p in [e.blur_path] + list(e.frame_paths)]
        h, w = arrays[0].shape[:2]
        ch, cw = min(self.crop, h), min(self.crop, w)
        rng = np.random.default_rng((self.seed, index))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        stack = torch.stack([torch.from_numpy(a[top:top + ch, left:left + cw].copy()) for a in arrays])
        stack = stack.permute(0, 3, 1, 2).float().div_(255.0)
        return {"blur": stack[0], "frames": stack[1:]}


def measure(dataset, workers: int, batch_size: int, batches: int) -> tuple:
    """(samples/s of wall time, CPU ms per sample or None) over `batches` batches, after one warm-up
    batch (worker start excluded). CPU time is measured with workers=0 only (all work in this process):
    unlike wall time it hardly moves when other jobs share the machine."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)
    start, cpu = time.perf_counter(), time.process_time()
    n = 0
    for _ in range(batches):
        batch = next(it)
        n += batch["blur"].shape[0]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    del it
    return n / elapsed, (1000.0 * cpu / n if workers == 0 else None)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Training-loader throughput (samples/s of blur + sharp-frame crops) against a plain PIL loader, "
                    "on frames of a realistic size; appends to lab/benchmarks/results/loader_throughput.md.",
        epilog="example:\n  python -m lab.benchmarks.loader_throughput --height 480 --width 640 --batches 4 "
               "--workers 0 2 --no_write")
    p.add_argument("--height", type=int, default=720, help="frame height")
    p.add_argument("--width", type=int, default=1280, help="frame width")
    p.add_argument("--videos", type=int, default=4, help="videos rendered")
    p.add_argument("--windows", type=int, default=6, help="sequences per video (7 frames each)")
    p.add_argument("--crop", type=int, default=256, help="training crop (square)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader num_workers to time")
    p.add_argument("--batch_size", type=int, default=4, help="sequences per batch")
    p.add_argument("--batches", type=int, default=5, help="timed batches per figure (after one warm-up batch)")
    p.add_argument("--repeats", type=int, default=2, help="rounds over all loaders; the best round counts")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the main process (workers use 1)")
    p.add_argument("--loaders", nargs="+", default=["pil", "decode", "train", "train_all"],
                   choices=["pil", "decode", "train", "train_all"], help="loaders to time")
    p.add_argument("--data", default=None,
                   help="reuse (or keep) the generated dataset in this folder (default: a temporary one)")
    p.add_argument("--no_write", action="store_true", help=f"do not update {RESULTS.relative_to(REPO)}")
    p.add_argument("--label", default="", help="a note for the results section (e.g. 'before'; default: none)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)

    import prepare_dataset
    from datasets.blur2vid import Blur2VidDataset
    from datasets.metadata import load_split
    from datasets.transforms import AugmentConfig

    tmp = None
    root = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="loader_bench_"))
    try:
        if not (root / "data" / "metadata.json").is_file():
            t0 = time.perf_counter()
            make_videos(root / "videos", args.videos, 7 * args.windows, args.height, args.width)
            with contextlib.redirect_stdout(sys.stderr):
                rc = prepare_dataset.main(["frames", "--src", str(root / "videos"), "--out", str(root / "data"),
                                           "--window", "7", "--val_fraction", "0", "--test_fraction", "0",
                                           "--overwrite"])
            if rc != 0:
                raise SystemExit(f"prepare_dataset failed ({rc})")
            shutil.rmtree(root / "videos")
            print(f"dataset built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        if not args.data:
            tmp = root
        _, entries = load_split(root / "data", "train")
        png_mb = np.mean([e.blur_path.stat().st_size for e in entries]) / 1e6
        with Image.open(entries[0].blur_path) as im:
            w, h = im.size
        t = len(entries[0].frame_paths)

        off = AugmentConfig(crop_size=args.crop, affine_p=0.0, jitter_p=0.0, noise_p=0.0)
        on = AugmentConfig(crop_size=args.crop, affine_p=1.0, jitter_p=1.0, noise_p=1.0)
        datasets = {"pil": PILCropDataset(entries, args.crop),
                    "decode": Blur2VidDataset(None, "train", entries=entries, augment=off, frame_per_seq=t),
                    "train": Blur2VidDataset(None, "train", entries=entries, augment=AugmentConfig(crop_size=args.crop),
                                             frame_per_seq=t),
                    "train_all": Blur2VidDataset(None, "train", entries=entries, augment=on, frame_per_seq=t)}
        best, cpu_ms = {}, {}
        load = []
        for r in range(args.repeats):
            for workers in args.workers:
                for name in args.loaders:
                    ds = datasets[name]
                    need = args.batch_size * (args.batches + 1 + 2 * workers)  # timed + warm-up + prefetched
                    if len(ds) < need:  # small datasets: go round more than once (files stay in the page cache)
                        ds = torch.utils.data.ConcatDataset([ds] * (1 + need // len(ds)))
                    rate, cpu = measure(ds, workers, args.batch_size, args.batches)
                    load.append(os.getloadavg()[0])
                    best[name, workers] = max(best.get((name, workers), 0.0), rate)
                    if cpu is not None:
                        cpu_ms[name] = min(cpu_ms.get(name, float("inf")), cpu)
                    print(f"round {r + 1}: {name:9s} workers={workers}: {rate:6.2f} samples/s"
                          + (f", {cpu:6.1f} CPU ms/sample" if cpu is not None else ""), file=sys.stderr)

        has_pil = "pil" in args.loaders
        header = ["loader"] + (["CPU ms/sample"] if cpu_ms else []) + [f"workers={w} (samples/s)" for w in args.workers]
        if has_pil:
            header += (["CPU vs pil"] if cpu_ms else []) + [f"vs pil, workers={w}" for w in args.workers]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in args.loaders:
            row = [name] + ([f"{cpu_ms[name]:.0f}"] if cpu_ms else []) + [f"{best[name, w]:.2f}" for w in args.workers]
            if has_pil:
                # CPU: pil's cost over ours (above 1 means ours is cheaper); wall: our rate over pil's
                row += ([f"{cpu_ms['pil'] / cpu_ms[name]:.2f}x"] if cpu_ms else [])
                row += [f"{best[name, w] / best['pil', w]:.2f}x" for w in args.workers]
            lines.append("| " + " | ".join(row) + " |")
        table = "\n".join(lines)
        command = "python -m lab.benchmarks.loader_throughput " + shlex.join(argv if argv is not None else sys.argv[1:])
        machine = (f"{cpu_name()}, {os.cpu_count()} logical cores visible; "
                   f"Python {platform.python_version()}, torch {torch.__version__}, "
                   f"torchvision {torchvision.__version__}, Pillow {Image.__version__}")
        setup = (f"{len(entries)} sequences of {t} sharp frames + blur, {h}x{w} PNG (mean {png_mb:.2f} MB), "
                 f"{args.crop}x{args.crop} crops, batch {args.batch_size}, {args.batches} timed batches after one "
                 f"warm-up, best of {args.repeats} rounds, torch threads in the main process {args.threads}; "
                 f"1-min load average during the run {min(load):.1f}..{max(load):.1f}"
                 + (" (above the core count: other jobs shared the CPU, so wall figures are noisy)"
                    if max(load) > (os.cpu_count() or 1) else ""))
        print(f"\nmachine: {machine}\nsetup: {setup}\n\n{table}")
        if not args.no_write:
            section = (f"## {time.strftime('%Y-%m-%d')} {args.label}".rstrip() + "\n\n"
                       f"- machine: {machine}\n- setup: {setup}\n- command: `{command.strip()}`\n\n{table}\n")
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            intro = ("# Loader throughput\n\nSamples/s of training crops (blur + sharp frames), from "
                     "`lab/benchmarks/loader_throughput.py`. Loaders: `pil` plain PIL decode + shared random crop "
                     "(baseline), `decode` ours with the crop only, `train` ours with the reference's augmentation, "
                     "`train_all` ours with every augmentation forced on. `CPU ms/sample` is the process CPU time "
                     "per sample with workers=0 (robust to other jobs on the machine); samples/s are wall-clock "
                     "DataLoader rates. Figures of one section come from the same run.\n\n")
            old = RESULTS.read_text() if RESULTS.is_file() else intro
            RESULTS.write_text(old.rstrip("\n") + "\n\n" + section)
            print(f"\nwrote {RESULTS.relative_to(REPO)}", file=sys.stderr)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

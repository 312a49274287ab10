"""Build the seed layout from folders of consecutive high-frame-rate frames (REDS 120 fps, GoPro,
Adobe240: one folder per video). A window of K consecutive frames becomes one blurry image (their
mean, optionally in linear light) and `frames` evenly spaced sharp frames: the frame at the centre of
each of `frames` equal slots of the window."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from datasets.synthetic import linear_light_mean
from datasets.transforms import ImageReadError, read_image
from utils.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def list_videos(src) -> dict:
    """{video name: sorted frame paths} for every sub-folder of src holding images."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"--src {src} is not a folder of video folders")
    videos = {}
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        frames = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if frames:
            videos[folder.name] = frames
    if not videos:
        raise UserError(f"--src {src} holds no sub-folders with images (expected one folder per video)")
    return videos


def sharp_indices(window: int, frames: int) -> list:
    """Index of the centre frame of each of `frames` equal slots of a window of `window` frames."""
    if window < frames:
        raise UserError(f"--window {window} must be at least the number of sharp frames ({frames})")
    return [min(window - 1, int(((k + 0.5) * window) / frames)) for k in range(frames)]


@dataclass
class FramesConfig:
    window: int = 49
    stride: int | None = None  # default: window (non-overlapping)
    frames: int = 7
    linear: bool = True
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    val_videos: tuple = ()
    test_videos: tuple = ()
    seed: int = 0


def assign_splits(names: list, cfg: FramesConfig) -> dict:
    """Video name -> split. Named videos go where named; the rest are shuffled (seeded) and split by
    fraction, with at least one video in train."""
    named = {n: "val" for n in cfg.val_videos}
    for n in cfg.test_videos:
        if named.get(n) == "val":
            raise UserError(f"video {n} is named for both val and test")
        named[n] = "test"
    unknown = sorted(set(named) - set(names))
    if unknown:
        raise UserError(f"videos not found under --src: {', '.join(unknown)}")
    rest = [n for n in names if n not in named]
    random.Random(cfg.seed).shuffle(rest)
    n_val = round(len(rest) * cfg.val_fraction) if not cfg.val_videos else 0
    n_test = round(len(rest) * cfg.test_fraction) if not cfg.test_videos else 0
    if n_val + n_test >= len(rest) and rest:
        n_val, n_test = min(n_val, max(0, len(rest) - 1)), max(0, min(n_test, len(rest) - 1 - n_val))
    splits = dict(named)
    for i, n in enumerate(rest):
        splits[n] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return splits


def generate(src, cfg: FramesConfig, writer, progress: bool = True) -> dict:
    from tqdm import tqdm

    videos = list_videos(src)
    splits = assign_splits(list(videos), cfg)
    stride = cfg.stride or cfg.window
    picks = sharp_indices(cfg.window, cfg.frames)
    jobs = [(name, start) for name, paths in videos.items()
            for start in range(0, len(paths) - cfg.window + 1, stride)]
    if not jobs:
        raise UserError(f"no video under {src} has {cfg.window} frames (--window)")
    for v, (name, start) in enumerate(tqdm(jobs, desc="windows", unit="seq", disable=not progress)):
        paths = videos[name][start:start + cfg.window]
        try:
            frames = [read_image(p) for p in paths]
        except ImageReadError as e:
            raise UserError(f"video {name}: {e}") from None
        odd = next((p for p, f in zip(paths, frames) if f.shape != frames[0].shape), None)
        if odd is not None:
            raise UserError(f"video {name}: frame {odd.name} is not the size of {paths[0].name}; "
                            "all frames of a video must have one size")
        imgs = torch.stack(frames)
        blur = linear_light_mean(imgs, 0) if cfg.linear else imgs.mean(0)
        folder = f"{list(videos).index(name):03d}_{_safe(name)}"
        stem = f"{start:06d}"
        writer.add_sequence(f"{folder}/{stem}", splits[name], folder, blur, imgs[picks], stem=stem,
                            extra={"video": name, "source_frames": [paths[i].name for i in picks]})
    return {"name": Path(src).name, "frame_per_seq": cfg.frames,
            "generator": {"kind": "frames", "window": cfg.window, "stride": stride,
                          "linear_light": cfg.linear, "splits": splits}}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)

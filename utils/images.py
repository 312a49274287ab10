"""Writing result images: atomic 8-bit PNGs, one output folder per input, and the blur | prediction |
ground-truth strips."""
from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import torch
from torchvision.io import encode_png

from utils.checkpoint import atomic_write_bytes, atomic_write_files
from utils.errors import UserError


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """RGB float [0, 1] -> uint8, rounded."""
    return x.clamp(0, 1).mul(255.0).round_().to(torch.uint8)


def png_bytes(image: torch.Tensor, compression_level: int = 6) -> bytes:
    """RGB float [0, 1] (3, H, W) (or uint8) encoded as an 8-bit PNG."""
    img = image if image.dtype == torch.uint8 else to_uint8(image.detach())
    return encode_png(img.cpu().contiguous(), compression_level=compression_level).numpy().tobytes()


def save_png(image: torch.Tensor, path, compression_level: int = 6) -> Path:
    """Write RGB float [0, 1] (3, H, W) (or uint8) as an 8-bit PNG: a temporary file, then a rename."""
    atomic_write_bytes(path, png_bytes(image, compression_level))
    return Path(path)


def save_frames(frames: torch.Tensor, folder, prefix: str = "frame_") -> list[Path]:
    """frames (T, 3, H, W) -> folder/frame_1.png .. frame_T.png, written as one (all new frames, or after a
    failure such as a full disk, the earlier files as they were)."""
    folder = Path(folder)
    files = [(folder / f"{prefix}{k}.png", png_bytes(f)) for k, f in enumerate(frames, start=1)]
    atomic_write_files(files)
    return [path for path, _ in files]


def entry_folder(entry_id, index: int) -> str:
    """A folder name for a metadata entry id, one-to-one: every character outside letters, digits and
    `_ . - ~` is percent-escaped (`seq/1` -> `seq%2F1`, `seq_1` stays, `%` -> `%25`) and a leading `.` too,
    so urllib.parse.unquote gives the id back and no name is hidden, `.` or `..`. Empty or very long ids
    (file names stop at 255 bytes) become a prefix plus `%%<index>`, which no escaped id contains."""
    name = urllib.parse.quote(str(entry_id), safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if not name or len(name) > 200:
        name = f"{name[:150]}%%{index}"
    return name


class OutputClash(UserError):
    """Two inputs would write into one output folder."""


class OutputFolders:
    """Hands out one output folder per input under `root`, and refuses to give one folder to two inputs,
    also where the file system folds names together (case-insensitive file systems: `A` and `a`). Folders
    are compared by identity (device, inode) after creation, so nothing an earlier input wrote is overwritten."""

    def __init__(self, root):
        self.root = Path(root)
        self._owners: dict = {}

    def folder(self, name: str, owner: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        st = os.stat(path)
        first = self._owners.setdefault((st.st_dev, st.st_ino), owner)
        if first != owner:
            raise OutputClash(f"{owner} and {first} would both write to {path} (the file system does not tell "
                              "their names apart): rename one of them")
        return path


def make_strip(blur: torch.Tensor, pred: torch.Tensor, gt: torch.Tensor | None = None,
               max_items: int = 2, gap: int = 2) -> torch.Tensor:
    """One row per sequence: blur | predicted frames | ground-truth frames, white gaps between the
    three groups. blur (B, 3, H, W), pred and gt (B, T, 3, H, W), RGB [0, 1] -> (3, H', W') on CPU."""
    rows = []
    for b in range(min(max_items, blur.shape[0])):
        groups = [blur[b:b + 1], pred[b]] + ([gt[b]] if gt is not None else [])
        parts = []
        for i, g in enumerate(groups):
            if i:
                parts.append(torch.ones(3, g.shape[-2], gap))
            parts.append(torch.cat(list(g.detach().float().cpu().clamp(0, 1)), dim=-1))
        rows.append(torch.cat(parts, dim=-1))
        rows.append(torch.ones(3, gap, rows[-1].shape[-1]))
    return torch.cat(rows[:-1], dim=-2)

"""The blurry-image-to-video dataset: one blurry image and its T sharp frames per item."""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from torch.utils.data import Dataset

from datasets.metadata import Entry, MetadataError, entry_bbox, load_split, resolve_target_frames
from datasets.transforms import (AugmentConfig, ImageReadError, apply_augment, augment_stack, crop_to_box,
                                 decode_image_file, draw_augment, source_window, to_float_stack)

BOX_SIZE_TRAIN = (192, 192)
BOX_SIZE_EVAL = (192, 160)
BOX_MAX_MARGIN = 0.10


def _seed_for(*parts) -> int:
    """A stable 63-bit seed from any values (independent of PYTHONHASHSEED and worker count)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class Blur2VidDataset(Dataset):
    """Items are dicts: blur (3, H, W) and frames (T, 3, H, W) as RGB float in [0, 1], plus id, index
    (position in the split) and reversed (whether the frames were flipped by `order`).

    order: ignore/keep load the frames as listed; reverse loads them reversed; random reverses with
    probability 1/2, drawn once per entry when the dataset is built from `seed` (as the reference
    does), so an entry keeps its direction across epochs and runs.
    target_frames picks frames (1-based) of the sequence in its loaded direction: with `reverse`,
    target frame k is stored frame N+1-k.
    Training augmentation is drawn per item from (seed, epoch, index): identical across worker counts,
    and an interrupted run resumes with the same draws. Call set_epoch() before each epoch.
    """

    def __init__(self, metadata_root, split: str, target_frames: Sequence[int] | None = None,
                 data_root=None, augment: AugmentConfig | None = None, seed: int = 42,
                 check_files: bool = True, entries: list | None = None, frame_per_seq: int | None = None,
                 limit: int | None = None):
        if entries is None:
            meta, entries = load_split(metadata_root, split, target_frames, data_root, check=check_files,
                                       progress=check_files, limit=limit)
            frame_per_seq = meta.get("frame_per_seq", 7)
        self.entries: list = entries
        self.split = split
        self.frame_per_seq = frame_per_seq or len(entries[0].frame_paths)
        self.target_frames = resolve_target_frames(target_frames, self.frame_per_seq)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        gen = torch.Generator().manual_seed(_seed_for("order", seed))
        coins = torch.rand(len(entries), generator=gen)
        self.reversed = [e.order == "reverse" or (e.order == "random" and bool(c < 0.5))
                         for e, c in zip(entries, coins.tolist())]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def frame_paths(self, index: int) -> list:
        e = self.entries[index]
        n = len(e.frame_paths)
        if self.reversed[index]:
            return [e.frame_paths[n - k] for k in self.target_frames]
        return [e.frame_paths[k - 1] for k in self.target_frames]

    def _decode(self, entry: Entry, path):
        try:
            return decode_image_file(path)
        except ImageReadError as err:
            raise MetadataError(f"entry {entry.id}: {err}") from None

    def __getitem__(self, key) -> dict:
        # key: an index, or (epoch, index) from a training loader's sampler (utils.training.make_loader),
        # which reaches persistent workers whose copy of the dataset never sees set_epoch
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        e = self.entries[index]
        paths = [e.blur_path] + self.frame_paths(index)
        images = [self._decode(e, p) for p in paths]  # integer pixels; float only where needed
        size = tuple(images[0][0].shape[1:])
        for p, (img, _) in zip(paths, images):
            if tuple(img.shape[1:]) != size:
                raise MetadataError(f"entry {e.id}: {p} has size {tuple(img.shape[1:])}, expected {size}")
        train = self.augment is not None
        gen = torch.Generator().manual_seed(_seed_for("aug", self.seed, epoch, index))
        box = entry_bbox(e)
        if box is None and train:
            # Crop (and the affine's source window) before converting to float: on large frames most
            # of the image is never read. Same result as augment_stack on the whole float stack.
            d = draw_augment(size, self.augment, gen)
            y0, y1, x0, x1 = source_window(d, size)
            stack = apply_augment(to_float_stack([(img[:, y0:y1, x0:x1], s) for img, s in images]), d, (y0, x0))
        else:
            stack = to_float_stack(images)
            if box is not None:
                if train:
                    margins = tuple((torch.rand(4, generator=gen) * BOX_MAX_MARGIN).tolist())
                    stack = crop_to_box(stack, box, BOX_SIZE_TRAIN, margins)
                else:
                    # deterministic at val/test: half the largest training margin on every side
                    stack = crop_to_box(stack, box, BOX_SIZE_EVAL, BOX_MAX_MARGIN / 2)
            if train:
                stack = augment_stack(stack, self.augment, gen)
        return {"blur": stack[0], "frames": stack[1:], "id": e.id, "index": index,
                "reversed": self.reversed[index]}

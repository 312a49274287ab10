"""The blurry-image-to-video dataset: one blurry image and its T sharp frames per item."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from datasets.metadata import Entry, MetadataError, entry_bbox, load_split, resolve_target_frames
from datasets.ordering import entry_motion
from utils.errors import FlagError
from utils.seeds import stable_seed
from datasets.transforms import (AugmentConfig, ImageReadError, apply_augment, augment_stack, crop_to_box,
                                 decode_image_file, draw_augment, exif_swaps_axes, source_window, to_float_stack)

BOX_SIZE_TRAIN = (192, 192)
BOX_SIZE_EVAL = (192, 160)
BOX_MAX_MARGIN = 0.10


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
    check_files: True decodes every image once up front (datasets.metadata.check_files), "headers" reads
    only their headers (--quick_check), False skips the check.
    """

    def __init__(self, metadata_root, split: str, target_frames: Sequence[int] | None = None,
                 data_root=None, augment: AugmentConfig | None = None, seed: int = 42,
                 check_files: bool | str = True, entries: list | None = None, frame_per_seq: int | None = None,
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
        gen = torch.Generator().manual_seed(stable_seed("order", seed))
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

    def motion(self, index: int) -> tuple[float, float]:
        """The camera motion (dx, dy) that the synthetic datasets record, frame 1 -> N in the direction the
        entry is loaded (negated when `order` reversed it); MetadataError when the entry has none."""
        dx, dy = entry_motion(self.entries[index].raw, index)
        return (-dx, -dy) if self.reversed[index] else (dx, dy)

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
        gen = torch.Generator().manual_seed(stable_seed("aug", self.seed, epoch, index))
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

    def item_size(self, index: int) -> tuple:
        """(H, W) of item `index` before any training crop: the box's output size for entries with a bbox,
        else the images' size (recorded by the file check, or read from the blurry image's header)."""
        e = self.entries[index]
        if e.bbox is not None:
            return BOX_SIZE_TRAIN if self.augment is not None else BOX_SIZE_EVAL
        if e.size is None:
            from PIL import Image
            with Image.open(e.blur_path) as im:
                w, h = im.size
                e.size = (w, h) if exif_swaps_axes(im) else (h, w)  # as decoded (EXIF orientation applied)
        return e.size

    def smallest(self) -> tuple:
        """(index, (H, W)) of the item with the shortest side."""
        index = min(range(len(self)), key=lambda i: min(self.item_size(i)))
        return index, self.item_size(index)

    def describe(self, index: int) -> str:
        e = self.entries[index]
        h, w = self.item_size(index)
        return f"{e.blur_path} (entry {e.id}) is {h}x{w} (H x W)" + (" after its bbox crop" if e.bbox is not None else "")


def file_check(args):
    """The check_files value of a script's flags: headers only with --quick_check, else a full decode."""
    return "headers" if getattr(args, "quick_check", False) else True


def check_image_sizes(train_set: Blur2VidDataset | None, crop_size: int | None, eval_set: Blur2VidDataset,
                      crop_need: dict | None = None, eval_need: dict | None = None) -> int | None:
    """Before any work, one FlagError naming the image that does not fit:
    - --crop_size must fit the smallest training image (a crop is clamped to its image, so with mixed sizes
      the run would end mid-epoch in a batch of unequal tensors), and be at least what trains on the crops
      needs (crop_need: {what: pixels}). When every training entry has a bbox, every item is its box
      resized to BOX_SIZE_TRAIN, and larger crops take all of it (the reference's protocol);
    - every image of eval_set (val during training, the split of a test script) must be at least what
      evaluating it needs (eval_need: {what: pixels}, e.g. SSIM's window or HyperCUT's f), so a run never
      trains an epoch and then fails at validation.
    Returns the crop size the run will really train on (--crop_size, or less for boxed data)."""
    if train_set is not None and crop_size is not None:
        index, (h, w) = train_set.smallest()
        if all(e.bbox is not None for e in train_set.entries):
            # B-AIST++: every item is its box resized to BOX_SIZE_TRAIN, and the crop is at most that
            crop_size = min(crop_size, h, w)
        if crop_size > min(h, w):
            raise FlagError(f"--crop_size {crop_size} is larger than the smallest training image: "
                            f"{train_set.describe(index)}; use --crop_size {min(h, w)} or less, or leave such "
                            "images out of the train split")
        for what, need in (crop_need or {}).items():
            if crop_size < need:
                raise FlagError(f"--crop_size {crop_size} is too small: {what} needs crops of at least "
                                f"{need}x{need} pixels")
    if eval_need:
        index, (h, w) = eval_set.smallest()
        what, need = max(eval_need.items(), key=lambda kv: kv[1])
        where = f"{eval_set.split} split" if eval_set.split in ("train", "val", "test") else "dataset"
        if min(h, w) < need:
            raise FlagError(f"the images of the {where} must be at least {need}x{need} pixels for {what}, but "
                            f"{eval_set.describe(index)}; leave it out of the {where} or use larger images")
    return crop_size

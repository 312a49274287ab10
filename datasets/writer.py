"""Writing a dataset in the seed layout, atomically and only inside the output folder.

Everything is staged in OUT/.incomplete/ and moved into place at the end; metadata.json is written
last by rename. A crash leaves no metadata.json, so a half-written dataset is never mistaken for a
complete one, and nothing outside OUT is touched.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torchvision.io import write_png

from datasets.metadata import METADATA_NAME, write_metadata
from datasets.transforms import to_uint8
from utils.cli import interrupts_deferred, output_problem
from utils.errors import UserError


class DatasetWriter:
    def __init__(self, out, overwrite: bool = False):
        self.out = Path(out).resolve()
        if (self.out / METADATA_NAME).exists() and not overwrite:
            raise UserError(f"{self.out} already holds a dataset ({METADATA_NAME}); "
                                  "pass --overwrite to replace it, or choose another --out")
        problem = output_problem(self.out, folder=True)
        if problem:
            raise UserError(f"--out {problem}")
        # commit() replaces folders of the same name as the ones it writes: never do that to a folder
        # of someone else's files unless asked to.
        if not overwrite and self.out.is_dir() and any(p.name != ".incomplete" for p in self.out.iterdir()):
            raise UserError(f"{self.out} is not empty and holds no dataset ({METADATA_NAME}); choose an "
                                  "empty or new --out, or pass --overwrite to write into it anyway")
        self.overwrite = overwrite
        self.stage = self.out / ".incomplete"
        if self.stage.exists():
            shutil.rmtree(self.stage)
        self.stage.mkdir(parents=True)
        self.entries = []

    def _target(self, rel: str) -> Path:
        path = (self.stage / rel).resolve()
        if self.stage not in path.parents:
            raise ValueError(f"refusing to write outside the output folder: {rel}")
        return path

    def save_image(self, rel: str, image: torch.Tensor) -> str:
        """image: RGB float [0, 1] (3, H, W) or uint8. Returns the relative path."""
        path = self._target(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        img = image if image.dtype == torch.uint8 else to_uint8(image)
        write_png(img.contiguous().cpu(), str(path), compression_level=6)
        return rel

    def add_sequence(self, entry_id: str, partition: str, folder: str, blur, frames, order: str = "ignore",
                     extra: dict | None = None, stem: str = "0000") -> dict:
        """Write one sequence as folder/blur/<stem>.png and folder/sharp/<stem>_k.png."""
        entry = {"id": entry_id, "order": order, "partition": partition,
                 "blur_path": self.save_image(f"{folder}/blur/{stem}.png", blur)}
        for k, frame in enumerate(frames, start=1):
            entry[f"frame{k:03d}_path"] = self.save_image(f"{folder}/sharp/{stem}_{k}.png", frame)
        entry.update(extra or {})
        self.entries.append(entry)
        return entry

    def commit(self, meta: dict) -> Path:
        """Move the staged files into OUT and write metadata.json last. A Ctrl-C meanwhile is held until the
        dataset is complete (a few renames), then raised."""
        with interrupts_deferred(f"interrupted; the dataset at {self.out} was completed first"):
            return self._commit(meta)

    def _commit(self, meta: dict) -> Path:
        meta = dict(meta)
        meta["data"] = self.entries
        old_meta = self.out / METADATA_NAME
        if old_meta.exists():  # --overwrite: the old dataset stops being valid before any file moves
            os.unlink(old_meta)
        for item in sorted(self.stage.iterdir()):
            dest = self.out / item.name
            if dest.exists():
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            os.replace(item, dest)
        self.stage.rmdir()
        write_metadata(self.out / METADATA_NAME, meta)
        return self.out / METADATA_NAME

    def abort(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)

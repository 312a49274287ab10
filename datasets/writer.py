"""Writing a dataset in the seed layout, atomically and only inside the output folder.

Everything is staged in OUT/.incomplete/ (every image written in full or one error naming it and the reason,
e.g. a full disk) and put in place at the end: the staged files are checked against what was written, the
new metadata.json is staged too, and then, with Ctrl-C and SIGTERM held, the old dataset's metadata.json and
each folder the new one replaces are moved aside into OUT/.replaced/, the new folders moved in, and the new
metadata.json renamed into place last: that rename is the moment the new dataset exists. Only then is the
old one deleted. Whatever fails or is killed before it, the old dataset comes back (at once, or when the next
writer opens OUT); a half-written dataset is never mistaken for a complete one, and nothing outside OUT is
touched. While a writer works, OUT is locked (utils/lock.py): a second writer is refused, naming the process.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torchvision.io import encode_png

from datasets.metadata import METADATA_NAME, write_metadata
from utils.checkpoint import WriteError, atomic_write_text, write_error, write_new_file
from utils.cli import interrupts_deferred, output_problem
from utils.errors import UserError
from utils.images import to_uint8
from utils.lock import LOCK_NAME, FolderLock

STAGE = ".incomplete"
REPLACED = ".replaced"
PLAN = ".plan.json"  # in REPLACED: which top-level names the new dataset brings, and which of them it replaces


class DatasetWriter:
    def __init__(self, out, overwrite: bool = False):
        self.out = Path(out).resolve()
        problem = output_problem(self.out, folder=True)
        if problem:
            raise UserError(f"--out {problem}")
        self.lock = FolderLock(self.out, "the dataset folder")
        self.lock.acquire()
        try:
            self._open(overwrite)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, overwrite: bool) -> None:
        restored = finish_replacement(self.out)
        if (self.out / METADATA_NAME).exists() and not overwrite:
            raise UserError(f"{self.out} already holds a dataset ({METADATA_NAME}"
                            + (", put back from an interrupted replacement" if restored else "")
                            + "); pass --overwrite to replace it, or choose another --out")
        # commit() replaces folders of the same name as the ones it writes: never do that to a folder
        # of someone else's files unless asked to.
        if not overwrite and any(p.name not in (STAGE, LOCK_NAME) for p in self.out.iterdir()):
            raise UserError(f"{self.out} is not empty and holds no dataset ({METADATA_NAME}); choose an "
                            "empty or new --out, or pass --overwrite to write into it anyway")
        self.overwrite = overwrite
        self.kept: list[str] = []  # names in OUT that the new dataset neither writes nor replaces (commit)
        self.stage = self.out / STAGE
        if self.stage.exists():  # left by a killed writer (the lock says none works here now)
            shutil.rmtree(self.stage)
        try:
            self.stage.mkdir(parents=True)
        except OSError as e:
            raise write_error(self.stage, e) from None
        self.entries = []
        self.sizes: dict = {}  # staged path -> bytes written, checked before the dataset is put in place

    def _target(self, rel: str) -> Path:
        path = (self.stage / rel).resolve()
        if self.stage not in path.parents:
            raise ValueError(f"refusing to write outside the output folder: {rel}")
        return path

    def save_image(self, rel: str, image: torch.Tensor) -> str:
        """image: RGB float [0, 1] (3, H, W) or uint8. Returns the relative path."""
        path = self._target(rel)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(path, e) from None
        img = image if image.dtype == torch.uint8 else to_uint8(image)
        data = encode_png(img.contiguous().cpu(), compression_level=6).numpy().tobytes()
        write_new_file(path, data)
        self.sizes[path] = len(data)
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

    def verify(self) -> None:
        """Every staged image is on disk with every byte that was written (and flushed to it)."""
        for path, size in self.sizes.items():
            try:
                found = os.stat(path).st_size
            except OSError as e:
                raise write_error(path, e) from None
            if found != size:
                raise WriteError(f"cannot write {path}: {found} of its {size} bytes are on disk; the dataset was not "
                                 f"put in place (an earlier dataset at {self.out} is unchanged)")
        if hasattr(os, "sync"):
            os.sync()  # one flush of everything staged, before the old dataset is touched

    def commit(self, meta: dict) -> Path:
        """Put the staged dataset in place (see the module docstring) and let go of OUT. A Ctrl-C or SIGTERM
        during the moves is held until the dataset is complete (a few renames), then raised."""
        try:
            meta = dict(meta)
            meta["data"] = self.entries
            write_metadata(self.stage / METADATA_NAME, meta)
            self.verify()
            with interrupts_deferred(f"interrupted; the dataset at {self.out} was completed first"):
                self._swap()
        finally:
            try:
                finish_replacement(self.out)  # delete the replaced dataset (or put it back after a failure)
                shutil.rmtree(self.stage, ignore_errors=True)
            finally:
                self.lock.release()
        return self.out / METADATA_NAME

    def _swap(self) -> None:
        replaced = self.out / REPLACED
        names = sorted(p.name for p in self.stage.iterdir() if p.name != METADATA_NAME)
        plan = {"incoming": names, "replaces": [n for n in names if os.path.lexists(self.out / n)]}
        # what OUT held beside the dataset it replaces and the new one does not: kept, and named to the user
        self.kept = sorted(p.name for p in self.out.iterdir()
                           if p.name not in names and p.name not in (METADATA_NAME, STAGE, REPLACED, LOCK_NAME))
        try:
            replaced.mkdir()
            atomic_write_text(replaced / PLAN, json.dumps(plan))
            if (self.out / METADATA_NAME).exists():  # from here the old dataset is no dataset until restored
                os.replace(self.out / METADATA_NAME, replaced / METADATA_NAME)
            for name in names:
                if name in plan["replaces"]:
                    os.replace(self.out / name, replaced / name)
                os.replace(self.stage / name, self.out / name)
            os.replace(self.stage / METADATA_NAME, self.out / METADATA_NAME)  # the new dataset exists
        except OSError as e:
            finish_replacement(self.out)
            raise write_error(self.out, e) from None

    def abort(self) -> None:
        """Remove what was staged (the old dataset, if any, is untouched) and let go of OUT."""
        shutil.rmtree(self.stage, ignore_errors=True)
        self.lock.release()


def finish_replacement(out) -> bool:
    """Finish what a replacement of the dataset at `out` left in OUT/.replaced/ (a failure or a kill during
    commit's moves): before the new metadata.json was in place, the old dataset is put back (True is
    returned); after it, the old files are deleted."""
    out = Path(out)
    replaced = out / REPLACED
    if not replaced.is_dir():
        return False
    if (out / METADATA_NAME).exists() and not (out / STAGE / METADATA_NAME).exists():
        shutil.rmtree(replaced)  # the new metadata.json was renamed into place: what is left is the old dataset's
        shutil.rmtree(out / STAGE, ignore_errors=True)
        return False
    try:
        plan = json.loads((replaced / PLAN).read_text())
    except (OSError, ValueError):
        plan = {"incoming": [], "replaces": []}  # killed before the plan: nothing was moved yet
    for name in plan["incoming"]:
        new, old = out / name, replaced / name
        if name in plan["replaces"] and not os.path.lexists(old):
            continue  # the old one was never moved aside: what is at `new` is still the old one
        if os.path.lexists(new):
            shutil.rmtree(new) if new.is_dir() and not new.is_symlink() else new.unlink()
        if os.path.lexists(old):
            os.replace(old, new)
    if (replaced / METADATA_NAME).exists():
        os.replace(replaced / METADATA_NAME, out / METADATA_NAME)
    shutil.rmtree(replaced)
    shutil.rmtree(out / STAGE, ignore_errors=True)  # what was staged for the replacement
    return True

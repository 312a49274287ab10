"""Outputs against inputs and against one another, checked before any work: no script writes over a file it
reads (the metadata, a checkpoint, a dataset image) or over another of its own outputs (a JSON and its CSV,
an image folder). Files are compared by real path (links and relative names resolved) and, where they exist,
by identity (device and inode), so a hard link or a case-folding file system is caught too.
"""
from __future__ import annotations

import os
from pathlib import Path

from utils.errors import FlagError


def _identity(path) -> tuple:
    """(real path, (device, inode) or None when nothing is there)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return real, None
    return real, (st.st_dev, st.st_ino)


def checkpoint_files(path) -> list:
    """The files a checkpoint flag reads: the file, or every file of a folder (Jin's official weights)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    return [path]


class Inputs:
    """What a script reads, labelled for the message: add(label, path) for files, add_folder(label, path) for
    folders whose whole contents are read (a --src of videos)."""

    def __init__(self):
        self._by_path: dict = {}
        self._by_inode: dict = {}
        self._folders: list = []

    def add(self, label: str, path) -> "Inputs":
        if path in (None, ""):
            return self
        real, inode = _identity(path)
        self._by_path.setdefault(real, label)
        if inode is not None:
            self._by_inode.setdefault(inode, label)
        return self

    def add_checkpoint(self, flag: str, path) -> "Inputs":
        if path not in (None, ""):
            for p in checkpoint_files(path):
                self.add(f"{flag} {p}", p)
        return self

    def add_folder(self, label: str, path) -> "Inputs":
        self._folders.append((os.path.realpath(path) + os.sep, label))
        return self

    def what(self, real: str, inode) -> str | None:
        """The label of the input at this real path / identity, or None."""
        found = self._by_path.get(real) or (self._by_inode.get(inode) if inode is not None else None)
        if found:
            return found
        return next((label for folder, label in self._folders if (real + os.sep).startswith(folder)), None)

    def inside(self, folder) -> str | None:
        """The label of an input file inside `folder` (at any depth), or None."""
        prefix = os.path.realpath(folder) + os.sep
        return next((label for real, label in self._by_path.items() if real.startswith(prefix)), None)


# A file that torch.save wrote: a zip archive (PyTorch >= 1.6) or a bare pickle (older files).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def is_torch_file(path) -> bool:
    """True when `path` is a file that starts as a PyTorch checkpoint or training state does."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return any(head.startswith(magic) for magic in _TORCH_MAGIC)


def check_outputs(outputs, inputs: Inputs | None = None) -> None:
    """outputs: [(label, path)] of every file a script will write (None paths are skipped). One FlagError
    naming the first output that is one of `inputs`, that an earlier output names too, or that exists as a
    PyTorch file (a checkpoint or training state of any run: no script writes its results over one, even
    with --overwrite)."""
    inputs = inputs or Inputs()
    written: dict = {}
    written_inodes: dict = {}
    for label, path in outputs:
        if path in (None, ""):
            continue
        real, inode = _identity(path)
        hit = inputs.what(real, inode)
        if hit:
            raise FlagError(f"{label} {path} would overwrite an input, {hit}: choose another output path")
        if inode is not None and os.path.isfile(real) and is_torch_file(real):
            raise FlagError(f"{label} {path} is a PyTorch checkpoint or training state: results are never written "
                            "over one; choose another output path")
        other = written.get(real) or (written_inodes.get(inode) if inode is not None else None)
        if other:
            raise FlagError(f"{label} {path} and {other} would be written to the same file: choose another path "
                            "for one of them")
        written[real] = label
        if inode is not None:
            written_inodes[inode] = label


def folder_targets(folder, names) -> list:
    """Paths of the files `names` (relative, e.g. 'entry/frame_1.png') under an output folder, its real path
    resolved once."""
    root = os.path.realpath(folder)
    return [os.path.join(root, n) for n in names]


def check_folder_outputs(label: str, folder, files, subfolders, inputs: Inputs) -> None:
    """An output folder that writes `files` (names) in it and anything below `subfolders`: one FlagError when
    one of those is an input."""
    folder = Path(folder)
    for name in files:
        real, inode = _identity(folder / name)
        hit = inputs.what(real, inode)
        if hit:
            raise FlagError(f"{label} {folder} would write {name} over an input, {hit}: choose another folder")
    for name in subfolders:
        hit = inputs.inside(folder / name)
        if hit:
            raise FlagError(f"{label} {folder} writes into {folder / name}, which holds an input, {hit}: choose "
                            "another folder")

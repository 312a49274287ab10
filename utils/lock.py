"""One writer per output folder: an exclusive lock on FOLDER/.lock while a process writes there (a training
in its run folder, prepare_dataset.py in its --out).

The lock is fcntl.flock on that file, which the kernel releases when the holder ends in any way (SIGKILL and
power loss included), so a lock is never left behind; the file holds the holder's process id, for the message
the next writer gets, and is removed when the holder lets go. A file left by a killed holder is not a lock:
the next writer takes it over and says so. Where fcntl does not exist (Windows), nothing is locked.
"""
from __future__ import annotations

import os
from pathlib import Path

from utils.checkpoint import write_error
from utils.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

LOCK_NAME = ".lock"


class FolderBusy(UserError):
    """Another process writes to the folder now."""


def _pid_in(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class FolderLock:
    """lock = FolderLock(folder, "the run folder"); lock.acquire() ... lock.release(). acquire() creates the
    folder if needed and raises FolderBusy (naming the holder's process id) when another process holds it."""

    def __init__(self, folder, what: str):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.fd: int | None = None
        self.taken_over: int | None = None  # pid of a killed holder whose file was left behind

    def acquire(self) -> "FolderLock":
        if fcntl is None or self.fd is not None:
            return self
        for _ in range(20):
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise write_error(self.path, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _pid_in(fd)
                os.close(fd)
                holder = f"process {pid}" if pid else "another process"
                raise FolderBusy(f"{self.what} {self.folder} is in use by {holder} (its lock file {self.path}): "
                                 "wait for it to finish or stop it; two writers would mix their files") from None
            except OSError:  # a file system without locks (some network ones): go on unlocked, as without fcntl
                os.close(fd)
                return self
            # The holder we waited for may have removed the file after we opened it: lock the file at the path.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _pid_in(fd)
            if previous and previous != os.getpid() and not _running(previous):
                self.taken_over = previous
            try:  # the pid is only for the message: a full disk must not stop the run here
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:
                pass
            self.fd = fd
            return self
        raise FolderBusy(f"{self.what} {self.folder}: could not take its lock file {self.path} (it kept changing)")

    def release(self) -> None:
        """Remove the lock file and let go; safe to call twice."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

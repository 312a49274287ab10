"""Checkpoints: atomic writes, safe loads.

A checkpoint is a dict {"model", "optimizer", "scheduler", "epoch", "step", "args",
"input_convention", "rng", ...}. It is written to a temporary file in the same folder and renamed,
so a crash never leaves half a file, and loaded with weights_only=True because checkpoints from
strangers are pickles.

Every file the project writes goes through the writers here (checkpoints, JSON, CSV, PNG, GIF): each
write is checked byte for byte, so a full disk or a file-size limit is one WriteError naming the file
and the reason, with nothing partial left and the file that was there before unchanged; Ctrl-C and
SIGTERM are held until the file is in place.
"""
from __future__ import annotations

import errno
import os
import random
import re
import secrets
import stat
from pathlib import Path

import numpy as np
import torch

from utils.cli import interrupts_deferred
from utils.errors import UserError


class CheckpointError(UserError):
    """A checkpoint file that cannot be used; the message names the file and what is wrong."""


# Temporary files of the atomic writers: `.<target name>.<8 random hex digits>.tmp`, beside the target.
TMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp$")


class WriteError(UserError):
    """A file that could not be written completely (no space left, a file-size limit, a read-only or odd file
    system, a name too long); the message names the file and the reason. Nothing partial is left: the file
    that was there before, if any, is unchanged."""


_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit of the file system or of this process: ulimit -f)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "a name in the path is too long (names stop at 255 bytes)",
    errno.EIO: "input/output error (a failing disk or network file system)",
    errno.ENOENT: "its folder does not exist or takes no new files",
}


def write_error(path, err: OSError) -> WriteError:
    """The one-line WriteError for an OSError met while writing `path`."""
    reason = _REASONS.get(err.errno) or " ".join(str(err.strerror or err).split()).lower()
    return WriteError(f"cannot write {path}: {reason}; nothing was written there (an earlier file of that name is "
                      "unchanged)")


def _write_all(fd: int, data) -> None:
    """Write every byte of `data` to `fd` or raise OSError: os.write may write only part of a buffer (a disk
    filling up, a file-size limit reached mid-buffer); the next call then fails with the reason."""
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    while len(view):
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, f"the system wrote {written} of {len(view)} bytes")
        view = view[written:]


class _CheckedFile:
    """The file object the atomic writers hand out: a write is complete or raises OSError. The first OSError is
    kept, because torch.save turns any exception of its file object into RuntimeError("unexpected pos ...")."""

    def __init__(self, fd: int):
        self.fd = fd
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            _write_all(self.fd, data)
        except OSError as e:
            self.error = self.error or e
            raise
        return memoryview(data).nbytes

    def flush(self) -> None:
        pass


def _temp_name(name: str) -> str:
    """`.<name>.<8 hex digits>.tmp`, the name cut (at a character boundary) so that the whole stays within
    255 bytes: a target whose name is close to the limit still gets a temporary file beside it."""
    budget = 255 - len(".") - len(".00000000.tmp")
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > budget:
        name = raw[:budget].decode("utf-8", "ignore")
    return f".{name}.{secrets.token_hex(4)}.tmp"


def _open_temp(path: Path, mode: int | None) -> tuple:
    """Create the temporary file for `path` in its folder: (file descriptor, temporary path).

    Created with os.open(..., 0o666), so the process umask applies exactly as it does for open() (mkstemp's
    0600 would leave checkpoints and datasets unreadable to a group that shares them). `mode`: permission
    bits to set instead, e.g. those of the file being replaced. Used by every atomic writer here."""
    for _ in range(100):
        tmp = path.parent / _temp_name(path.name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            os.chmod(tmp, mode)
        return fd, tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def _replaced_mode(path: Path) -> int | None:
    """The permission bits of the regular file at `path` (which a replacement keeps), else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _write_temp(path: Path, write) -> Path:
    """write(file object) into a new temporary file beside `path`, complete and fsync'ed; returns its path.
    On any failure the temporary file is removed; an OSError (also one torch.save hid) becomes a WriteError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _open_temp(path, _replaced_mode(path))
    except OSError as e:
        raise write_error(path, e) from None
    fh = _CheckedFile(fd)
    try:
        try:
            write(fh)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as e:
        _unlink_quietly(tmp)
        error = fh.error or (e if isinstance(e, OSError) else None)
        if error is not None:
            raise write_error(path, error) from None
        raise
    return tmp


def _put_in_place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename the finished temporary file to `path`. overwrite=False creates `path` only if nothing is there,
    in one step (a hard link, which fails if the name exists), so two processes never both create it."""
    try:
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: claim the name first, then rename over it
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.replace(tmp, path)
            return
        os.unlink(tmp)
    except FileExistsError:
        _unlink_quietly(tmp)
        raise WriteError(f"{path} already exists (another process created it meanwhile?); nothing was written: "
                         "pass --overwrite to replace it") from None
    except OSError as e:
        _unlink_quietly(tmp)
        raise write_error(path, e) from None


def _atomic_write(path, write, overwrite: bool = True) -> None:
    """write(file object) into a temporary file beside `path`, fsync, rename over `path`. An existing file's
    permission bits are kept; a new file gets the umask's. On any failure the temporary file is removed and
    `path` is untouched; a failed or short write is one WriteError naming the path and the reason. Ctrl-C and
    SIGTERM are held until the file is in place (or removed), then raised."""
    path = Path(path)
    with interrupts_deferred():
        _put_in_place(_write_temp(path, write), path, overwrite)


def atomic_write_bytes(path, data: bytes, overwrite: bool = True) -> None:
    _atomic_write(path, lambda fh: fh.write(data), overwrite)


def atomic_write_text(path, text: str, overwrite: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), overwrite)


def atomic_write_files(files) -> None:
    """Write several files as one: [(path, bytes), ...] all go to temporary files first, and only when every
    one is complete are they renamed into place (a JSON and its CSV, the frames of one image). A failure
    leaves every earlier file as it was."""
    files = [(Path(p), data) for p, data in files]
    with interrupts_deferred():
        temps = []
        try:
            for path, data in files:
                temps.append(_write_temp(path, lambda fh, data=data: fh.write(data)))
        except BaseException:
            for tmp in temps:
                _unlink_quietly(tmp)
            raise
        for i, ((path, _), tmp) in enumerate(zip(files, temps)):
            try:
                _put_in_place(tmp, path, overwrite=True)
            except BaseException:
                for rest in temps[i + 1:]:
                    _unlink_quietly(rest)
                raise


def write_new_file(path, data) -> None:
    """Create `path` (which must not exist) holding `data`, every byte written or one WriteError, and nothing
    left behind on failure. Not atomic and not fsync'ed: for files staged in a folder that is put in place as
    a whole afterwards (datasets.writer)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        _unlink_quietly(path)
        raise write_error(path, e) from None
    except BaseException:
        _unlink_quietly(path)
        raise


def save_checkpoint(obj, path) -> None:
    _atomic_write(path, lambda fh: torch.save(obj, fh))


def remove_orphan_temps(folder, older_than: float) -> list[Path]:
    """Delete the temporary files our atomic writers leave when a process is killed mid-write (SIGKILL,
    power loss): regular files in `folder` (not below it) named `.<name>.<8 hex digits>.tmp` and last
    modified before `older_than` (a time.time() value: the start of this run, so a write in progress now
    is never touched). Nothing else is deleted. Returns the removed paths."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not TMP_PATTERN.match(p.name):
            continue
        try:
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < older_than:
                os.unlink(p)
                removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint safely (no arbitrary unpickling). Errors name the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a folder, expected a .pth file: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or holding objects weights_only refuses
        raise CheckpointError(f"cannot load checkpoint {path}: {_load_failure(e)}") from None


def _load_failure(e: Exception) -> str:
    """What a failed weights-only torch.load means, in one line. torch's own text for a refused pickle goes
    on to suggest weights_only=False, which would run whatever code the pickle carries: we never do that,
    and we don't advise it. Only a pickle that names a refused class or function is called one; garbage
    (random bytes, a truncated or foreign file) is called what it is."""
    text = str(e)
    if re.search(r"unsupported global", text, re.IGNORECASE):
        return ("it holds Python objects other than tensors, numbers and plain containers, which are refused "
                "because unpickling them can run arbitrary code")
    if "weights only load failed" in text.lower():  # the weights-only unpickler met bytes it cannot read
        inner = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
        detail = " ".join(inner.split()) if "WeightsUnpickler error:" in text else ""
    else:
        detail = " ".join(text.split()) or type(e).__name__
        detail = detail if not isinstance(e, KeyError) else f"unreadable data ({type(e).__name__} {detail})"
    detail = detail.split(". ")[0][:200]  # torch's texts go on for several sentences
    return (f"not a readable PyTorch file ({detail or 'unreadable data'}): is it complete (not truncated "
            "by a copy or a download), and a checkpoint of this project, the HyperCUT reference, or Jin et al.?")


def state_dict_mismatch(expected, state) -> str | None:
    """None when `state` has exactly the keys of `expected` (a module's state dict) with the same shapes;
    otherwise one line naming the first missing, unexpected and misshaped keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [k for k in expected if k in state and tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {what} key{'s' * (len(keys) > 1)} ({', '.join(keys[:3])}{', ...' * (len(keys) > 3)})")
    if misshaped:
        k = misshaped[0]
        parts.append(f"{k} has shape {tuple(getattr(state[k], 'shape', ()))} where {tuple(expected[k].shape)} is expected"
                     + (f" (and {len(misshaped) - 1} more)" if len(misshaped) > 1 else ""))
    return "; ".join(parts) or None


def rng_state() -> dict:
    # Plain lists and tensors only, so the state survives torch.load(weights_only=True).
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    if not state:
        return
    if "python" in state:
        py = state["python"]
        # weights_only loading turns the tuple into lists; random.setstate wants tuples
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "numpy" in state:
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu() if torch.is_tensor(state["torch"]) else torch.tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""Checkpoints: atomic writes, safe loads.

A checkpoint is a dict {"model", "optimizer", "scheduler", "epoch", "step", "args",
"input_convention", "rng", ...}. It is written to a temporary file in the same folder and renamed,
so a crash never leaves half a file, and loaded with weights_only=True because checkpoints from
strangers are pickles.
"""
from __future__ import annotations

import os
import random
import re
import secrets
import stat
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError


class CheckpointError(UserError):
    """A checkpoint file that cannot be used; the message names the file and what is wrong."""


# Temporary files of the atomic writers: `.<target name>.<8 random hex digits>.tmp`, beside the target.
TMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp$")


def _open_temp(path: Path, mode: int | None):
    """Create the temporary file for `path` in its folder: (binary file object, temporary path).

    Created with os.open(..., 0o666), so the process umask applies exactly as it does for open() (mkstemp's
    0600 would leave checkpoints and datasets unreadable to a group that shares them). `mode`: permission
    bits to set instead, e.g. those of the file being replaced. Used by every atomic writer here."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            os.chmod(tmp, mode)
        return os.fdopen(fd, "wb"), tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def _replaced_mode(path: Path) -> int | None:
    """The permission bits of the regular file at `path` (which a replacement keeps), else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None


def _atomic_write(path, write) -> None:
    """write(binary file) into a temporary file beside `path`, fsync, rename over `path`. An existing file's
    permission bits are kept; a new file gets the umask's. On any failure (Ctrl-C included) the temporary
    file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh, tmp = _open_temp(path, _replaced_mode(path))
    try:
        with fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


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

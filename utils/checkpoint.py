"""Checkpoints: atomic writes, safe loads.

A checkpoint is a dict {"model", "optimizer", "scheduler", "epoch", "step", "args",
"input_convention", "rng", ...}. It is written to a temporary file in the same folder and renamed,
so a crash never leaves half a file, and loaded with weights_only=True because checkpoints from
strangers are pickles.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError


class CheckpointError(UserError):
    """A checkpoint file that cannot be used; the message names the file and what is wrong."""


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(obj, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only load failed" in msg.lower():
            # torch's own text goes on to suggest weights_only=False, which would run whatever code
            # the pickle carries: we never do that, and we don't advise it.
            msg = ("it holds Python objects other than tensors, numbers and plain containers, which "
                   "are refused because unpickling them can run arbitrary code")
        raise CheckpointError(
            f"cannot load checkpoint {path}: {msg[:300]} (is it a complete PyTorch file from this "
            "project, the HyperCUT reference, or Jin et al.?)") from None


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

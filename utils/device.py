"""Device selection: `--device auto|cpu|cuda|cuda:N|mps`. Nothing else in the project names a device."""
from __future__ import annotations

import contextlib

import torch

from utils.errors import FlagError, UserError


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise FlagError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FlagError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FlagError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise FlagError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    elif dev.type != "cpu":
        raise FlagError(f"--device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return dev


# --- running out of memory ----------------------------------------------------------------------------

class OutOfMemory(UserError):
    """The device (or the host, on the CPU) ran out of memory; the message names the size and the flag."""


def is_out_of_memory(error: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA, MPS), or the RuntimeError the CPU allocator raises ("can't allocate
    memory"; some builds and backends say "out of memory"). Nothing else."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return type(error) is RuntimeError and ("out of memory" in text or "can't allocate memory" in text)


@contextlib.contextmanager
def out_of_memory_hint(what):
    """Turn running out of memory inside the block into one OutOfMemory line: `what()` says what was being
    done, at which size, and which flag to lower. Every other error passes through untouched."""
    try:
        yield
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError; anything else is re-raised as is
        if not is_out_of_memory(e):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemory(f"out of memory {what()}") from None

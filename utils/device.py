"""Device selection: `--device auto|cpu|cuda|cuda:N|mps`. Nothing else in the project names a device."""
from __future__ import annotations

import torch

from utils.errors import FlagError


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

"""One process per device under torchrun (DDP): rank and world size, the process group, reductions.

With one process (no torchrun) every helper here is a no-op, so scripts call them unconditionally.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from utils.device import resolve_device


class DistInfo:
    """Rank and world size from torchrun's environment; one process otherwise."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_process(device_name: str):
    """Resolve the device and, under torchrun, join the process group (nccl on CUDA, gloo on CPU).
    Returns (device, DistInfo)."""
    info = DistInfo()
    device = resolve_device(device_name)
    if info.distributed:
        if device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, info


def cleanup_process() -> None:
    """Leave the process group (torchrun's processes must, before they exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a (N_rank, ...) CPU tensor over all ranks, in rank order (or return it)."""
    if not is_distributed():
        return t
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, t)
    return torch.cat(parts)

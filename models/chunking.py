"""Cache-sized batches for CPU convolutions.

On a CPU, a convolution whose input and output fit the last-level cache runs near the machine's
matmul speed; once a batch's activations overflow it, every layer streams them from memory and the
same work takes longer (measured on HyperCUT's f in inference: one batch of 48 pairs at 128x128 took
1.7x as long as chunks of 6). So the models split large batches into chunks whose largest activation
fits a share of that cache. Every sample is computed alone (no batch statistics), so chunking does
not change the function; autograd sees the chunks as separate graphs joined by a cat.

GPUs want the opposite (big batches hide launch overheads), so there the batch stays whole unless a
byte budget is given explicitly.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

_FALLBACK_CACHE_BYTES = 8 << 20


@functools.lru_cache(maxsize=1)
def cpu_cache_bytes() -> int:
    """Size of the CPU's largest cache (usually L3) from sysfs; 8 MiB where it cannot be read."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes) if sizes else _FALLBACK_CACHE_BYTES


def default_budget(device: torch.device) -> int | None:
    """Bytes that a chunk's largest activation may take: half the last-level cache on a CPU (the rest
    holds the layer's input, its weights and other processes' data); None (no chunking) elsewhere.
    On a 2-core EPYC with 32 MiB of L3, budgets of 12 to 24 MiB were the fastest for HyperCUT's
    training step at 128x128 and 256x256 (1 and 4 MiB, and the unchunked batch, were slower)."""
    if device.type != "cpu":
        return None
    return cpu_cache_bytes() // 2


def chunk_size(batch: int, bytes_per_item: int, budget: int | None) -> int:
    """Items per chunk so that one chunk's activation stays within budget (at least 1; the whole
    batch when budget is None)."""
    if budget is None or batch <= 1:
        return max(batch, 1)
    return max(1, min(batch, budget // max(bytes_per_item, 1)))


def set_chunk_bytes(model: torch.nn.Module, budget: int | None) -> None:
    """Set the chunk budget of every submodule that chunks (`chunk_bytes`); None restores automatic."""
    for module in model.modules():
        if hasattr(module, "chunk_bytes"):
            module.chunk_bytes = budget

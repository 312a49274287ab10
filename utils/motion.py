"""Global motion between two frames by phase correlation (the direction probe's ground truth).

Frames are turned grey, multiplied by a Hann window (so the borders do not dominate the spectrum) and
correlated in the Fourier domain with the magnitudes normalised away; the peak of the inverse
transform is the translation of the content from the first frame to the second, refined to sub-pixel
by a parabola through the peak and its neighbours.
"""
from __future__ import annotations

import torch

_GREY = (0.299, 0.587, 0.114)


def grey(frames: torch.Tensor) -> torch.Tensor:
    """RGB (..., 3, H, W) -> (..., H, W)."""
    w = frames.new_tensor(_GREY).view(3, 1, 1)
    return (frames * w).sum(-3)


def _hann(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.hann_window(n, periodic=False, dtype=like.dtype, device=like.device)


def phase_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8):
    """Translation of the content from a to b, for RGB (B, 3, H, W) or grey (B, H, W) frames.

    Returns (motion (B, 2) as (dx, dy) in pixels, x right and y down; peak (B,), the height of the
    normalised correlation peak: near 1 for a clean translation, near 0 when nothing matches).
    """
    if a.shape != b.shape:
        raise ValueError(f"frames of different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() == 4:
        a, b = grey(a), grey(b)
    if a.dim() != 3:
        raise ValueError(f"expected (B, 3, H, W) or (B, H, W) frames, got shape {tuple(a.shape)}")
    a, b = a.double(), b.double()
    h, w = a.shape[-2:]
    window = _hann(h, a)[:, None] * _hann(w, a)[None, :]
    fa = torch.fft.fft2((a - a.mean((-2, -1), keepdim=True)) * window)
    fb = torch.fft.fft2((b - b.mean((-2, -1), keepdim=True)) * window)
    cross = fb * fa.conj()
    corr = torch.fft.ifft2(cross / (cross.abs() + eps)).real  # (B, H, W), peak at the shift (mod size)
    flat = corr.flatten(1)
    peak, idx = flat.max(1)
    iy, ix = idx // w, idx % w

    def refine(c_minus, c0, c_plus):
        denom = c_minus - 2 * c0 + c_plus
        return torch.where(denom.abs() > 1e-12, 0.5 * (c_minus - c_plus) / denom, torch.zeros_like(c0))

    rows = torch.arange(a.shape[0], device=a.device)
    c0 = corr[rows, iy, ix]
    dx = ix.double() + refine(corr[rows, iy, (ix - 1) % w], c0, corr[rows, iy, (ix + 1) % w])
    dy = iy.double() + refine(corr[rows, (iy - 1) % h, ix], c0, corr[rows, (iy + 1) % h, ix])
    dx = torch.where(dx > w / 2, dx - w, dx)  # shifts past half the size are negative ones
    dy = torch.where(dy > h / 2, dy - h, dy)
    return torch.stack([dx, dy], 1).float(), peak.float()

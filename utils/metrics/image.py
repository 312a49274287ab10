"""PSNR and SSIM per image.

Images arrive as the project passes them between modules: RGB float in [0, 1], shape (B, C, H, W) or
(B, T, C, H, W). Both metrics clamp them to [0, 1] and scale to 0..255 (float, not rounded), keep the
leading dimensions ((B, T, C, H, W) -> (B, T)) and run batched on the tensors' device. SSIM reproduces
scikit-image's structural_similarity(data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False), the conventions of Wang et al. 2004.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_DATA_RANGE = 255.0


# ----------------------------------------------------------------------------------------------------
# helpers


def check_pair(pred: Tensor, target: Tensor) -> None:
    """ValueError unless pred and target have one shape (..., C, H, W)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.dim() < 3:
        raise ValueError(f"expected images shaped (..., C, H, W), got {tuple(pred.shape)}")


def _work_dtype(device: torch.device) -> torch.dtype:
    # float64 where there is one (MPS has none): PSNR is one cheap pass.
    return torch.float32 if device.type == "mps" else torch.float64


def _ssim_dtype(x: Tensor) -> torch.dtype:
    # float32 stays within 1e-4 of scikit-image's float64 (see _ssim_planes) at half the memory traffic;
    # float64 input is computed in float64.
    return torch.float64 if x.dtype == torch.float64 and x.device.type != "mps" else torch.float32


def _out_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _to_255(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.to(dtype).clamp(0.0, 1.0) * _DATA_RANGE


# ----------------------------------------------------------------------------------------------------
# PSNR


def psnr(pred: Tensor, target: Tensor, cap_db: float | None = None) -> Tensor:
    """PSNR in dB per image, data range 255: (..., C, H, W) -> (...).

    Identical images give inf unless `cap_db` is set (values above it are clamped to it).
    Returns float32 (float64 for float64 input) on the inputs' device.
    """
    check_pair(pred, target)
    dt = _work_dtype(pred.device)
    mse = (_to_255(pred, dt) - _to_255(target, dt)).square().flatten(-3).mean(-1)
    out = 10.0 * torch.log10(_DATA_RANGE**2 / mse)  # mse == 0 -> inf
    if cap_db is not None:
        out = out.clamp(max=cap_db)
    return out.to(_out_dtype(pred))


# ----------------------------------------------------------------------------------------------------
# SSIM (scikit-image conventions)

_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # skimage's choice: radius int(3.5 * 1.5 + 0.5) = 5, an 11-tap window
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
# Image planes (one colour of one image) per chunk, in pixels: the five filtered maps of a chunk stay
# within a CPU's cache (measured: 256K pixels was 1.4x faster at 720x1280 than 1M, and 3x faster at
# 128x128 than 4M; lab/benchmarks/results/metrics_speed.md). Also bounds memory for large frames.
_SSIM_CHUNK_PIXELS = 1 << 18


def _ssim_radius() -> int:
    return int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)


SSIM_MIN_SIZE = 2 * _ssim_radius() + 1  # the 11-tap window: the smallest image side SSIM works on


def _gaussian_kernel1d(radius: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    # scipy.ndimage._gaussian_kernel1d
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 / _SSIM_SIGMA**2 * x * x)
    return (k / k.sum()).to(device=device, dtype=dtype)


def _reflect_index(n: int, radius: int, device: torch.device) -> Tensor:
    """Source indices of scipy.ndimage mode 'reflect' (numpy 'symmetric'): d c b a | a b c d | d c b a.

    torch's F.pad(mode='reflect') is numpy 'reflect' (edge not repeated), hence this gather.
    """
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def _pad_symmetric(x: Tensor, r: int, out: Tensor) -> None:
    """out (N, h + 2r, w + 2r) = x (N, h, w) padded as scipy.ndimage mode 'reflect' (edge repeated);
    r <= min(h, w), which SSIM's size check guarantees."""
    h, w = x.shape[-2:]
    out[:, r:r + h, r:r + w] = x
    out[:, r:r + h, :r] = x[:, :, :r].flip(-1)
    out[:, r:r + h, r + w:] = x[:, :, w - r:].flip(-1)
    out[:, :r] = out[:, r:2 * r].flip(-2)
    out[:, r + h:] = out[:, h:h + r].flip(-2)


_FILTER_BLOCK = 64  # outputs per banded-matmul block (a divisor of the length down to half of it if any)
_SCIPY_ON_CPU = True  # float64 on the CPU: scipy's correlate1d; tests switch it off to run the matmuls


def _filter_block(length: int) -> int:
    for b in range(min(_FILTER_BLOCK, length), max(_FILTER_BLOCK // 2, 1) - 1, -1):
        if length % b == 0:
            return b
    return min(_FILTER_BLOCK, length)


def _band(b: int, k: Tensor) -> Tensor:
    """(b + 2r, b) matrix whose column j holds the kernel at rows j..j+2r: x_block @ band filters."""
    taps = k.numel()
    band = torch.zeros(b + taps - 1, b, dtype=k.dtype, device=k.device)
    cols = torch.arange(b, device=k.device)
    for i in range(taps):
        band[cols + i, cols] = k[i]
    return band


def _filter_rows(x: Tensor, k: Tensor) -> Tensor:
    """'valid' filtering of the last axis, (N, A, L + 2r) -> (N, A, L), as one matmul of overlapping
    blocks with a banded matrix (the blocks are copied once into a (rows, b + 2r) matrix)."""
    r = k.numel() // 2
    n, a, length = x.shape[0], x.shape[1], x.shape[2] - 2 * r
    b = _filter_block(length)
    if length % b:
        x = F.pad(x, (0, -length % b))
    out = x.unfold(-1, b + 2 * r, b).reshape(-1, b + 2 * r) @ _band(b, k)
    return out.view(n, a, -1)[..., :length]


def _filter_cols(x: Tensor, k: Tensor) -> Tensor:
    """'valid' filtering of the middle axis, (N, L + 2r, W) -> (N, L, W): the band's transpose times
    blocks of rows, which are strided views of x (no copy)."""
    r = k.numel() // 2
    n, length, w = x.shape[0], x.shape[1] - 2 * r, x.shape[2]
    b = _filter_block(length)
    if length % b:
        x = F.pad(x, (0, 0, 0, -length % b))
    out = _band(b, k).t() @ x.unfold(1, b + 2 * r, b).transpose(-1, -2)  # (N, blocks, b, W)
    return out.flatten(1, 2)[:, :length]


def _ssim_planes(x: Tensor, y: Tensor, dtype: torch.dtype) -> Tensor:
    """Mean SSIM (N,) of image planes x, y (N, h, w) on the 0..1 scale.

    The five local means (x, y, x^2, y^2, xy, Gaussian-weighted) are taken of x and y minus their plane
    means, on the 0..255 scale: variances and covariance do not change under the shifts, the luminance
    term gets the means back, and the squares stay small where the variance is small (the cancellation
    in E[x^2] - E[x]^2 is what float32 would get wrong), which keeps float32 within 1e-4 of
    scikit-image's float64 (measured worst case, near-flat saturated images: 1e-7).
    """
    n, h, w = x.shape
    r = _ssim_radius()
    x, y = _to_255(x, dtype), _to_255(y, dtype)
    mx, my = x.mean(dim=(1, 2), keepdim=True), y.mean(dim=(1, 2), keepdim=True)
    x, y = x.sub_(mx), y.sub_(my)
    k = _gaussian_kernel1d(r, dtype, x.device)
    if x.device.type == "cpu" and dtype == torch.float64 and _SCIPY_ON_CPU:
        # scipy's 1-D correlation (scikit-image's own filter) with 'reflect' borders built in: the
        # fastest float64 filter on a CPU (torch has no fast float64 matmul-free path)
        from scipy.ndimage import correlate1d
        maps = torch.stack([x, y, x * x, y * y, x * y]).numpy()
        kn = k.numpy()
        maps = torch.from_numpy(correlate1d(correlate1d(maps, kn, axis=-1, mode="reflect"), kn, axis=-2, mode="reflect"))
    else:
        # Padding first and filtering 'valid' equals scipy's per-axis filtering with reflect borders,
        # because each 1-D pass commutes with reflecting along the other axis.
        padded = torch.empty(5, n, h + 2 * r, w + 2 * r, dtype=dtype, device=x.device)
        _pad_symmetric(x, r, padded[0])
        _pad_symmetric(y, r, padded[1])
        torch.mul(padded[0], padded[0], out=padded[2])
        torch.mul(padded[1], padded[1], out=padded[3])
        torch.mul(padded[0], padded[1], out=padded[4])
        maps = _filter_cols(_filter_rows(padded.view(5 * n, h + 2 * r, w + 2 * r), k), k).view(5, n, h, w)
    # skimage ignores a (win_size - 1) // 2 = r border; in place from here on, on the kept pixels only
    ux, uy, uxx, uyy, uxy = maps[:, :, r:h - r, r:w - r]
    c1, c2 = (_SSIM_K1 * _DATA_RANGE) ** 2, (_SSIM_K2 * _DATA_RANGE) ** 2
    # population (co)variances, as Wang et al.: 2 vxy + c2 and vx + vy + c2
    cs_num = uxy.addcmul_(ux, uy, value=-1).mul_(2).add_(c2)
    cs_den = uxx.addcmul_(ux, ux, value=-1).add_(uyy).addcmul_(uy, uy, value=-1).add_(c2)
    ux, uy = ux.add_(mx), uy.add_(my)
    num = torch.mul(ux, uy).mul_(2).add_(c1).mul_(cs_num)
    den = ux.square_().add_(uy.square_()).add_(c1).mul_(cs_den)
    return num.div_(den).flatten(1).mean(1, dtype=torch.float64)


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """SSIM per image: (..., C, H, W) -> (...), as scikit-image's structural_similarity(a, b,
    data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    on the HWC images scaled to 0..255 (the mean over channels of each channel's mean SSIM). H and W
    must be at least 11 (the window), as in scikit-image.
    Computed in float32 (within 1e-4 of scikit-image; float64 for float64 input); returns float32
    (float64 for float64 input).
    """
    check_pair(pred, target)
    lead, (c, h, w) = pred.shape[:-3], pred.shape[-3:]
    if h < SSIM_MIN_SIZE or w < SSIM_MIN_SIZE:
        raise ValueError(f"SSIM needs images of at least {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} pixels, got {h}x{w}")
    x, y = pred.reshape(-1, h, w), target.reshape(-1, h, w)
    dt = _ssim_dtype(pred)
    step = max(1, _SSIM_CHUNK_PIXELS // (h * w))
    planes = torch.cat([_ssim_planes(x[i:i + step], y[i:i + step], dt) for i in range(0, x.shape[0], step)])
    return planes.view(-1, c).mean(-1).reshape(lead).to(_out_dtype(pred))


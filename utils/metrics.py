"""Image and ordering metrics shared by test_blur2vid.py and test_hypercut.py.

Images arrive as the project passes them between modules: RGB float in [0, 1], shape (B, C, H, W) or
(B, T, C, H, W). Every metric clamps them to [0, 1] and scales to 0..255 (float, not rounded), keeps the
leading dimensions ((B, T, C, H, W) -> (B, T)) and runs batched on the tensors' device.

- `psnr`, `ssim`: per image. SSIM reproduces scikit-image's
  structural_similarity(data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False), the conventions of Wang et al. 2004.
- `LPIPSMetric`: the `lpips` package, AlexNet, version 0.1. The AlexNet trunk is read from the
  torchvision cache and never downloaded; without it we stop (`LPIPSWeightsMissing`).
- `p_metric` / `frame_scores`: the order-agnostic scores of the paper (pPSNR, pSSIM, pLPIPS).
- `SequenceMetrics`: accumulates batches into per-frame and overall means for a dataset.
- `hit_con`: hit and consistency rates of HyperCUT hyperplane scores.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.errors import UserError

__all__ = [
    "PSNR_CAP_DB",
    "psnr",
    "ssim",
    "ALEXNET_WEIGHTS_FILE",
    "alexnet_weights_path",
    "LPIPSWeightsError",
    "LPIPSWeightsMissing",
    "LPIPSMetric",
    "frame_scores",
    "p_metric",
    "p_scores",
    "SequenceMetrics",
    "hit_con",
]

# A perfect frame has infinite PSNR. `psnr` returns inf unless asked to cap; dataset figures
# (SequenceMetrics) cap each frame at 100 dB before any averaging, so one identical frame cannot turn a
# set's mean into inf, and a pair holding one perfect frame still ranks above any imperfect pair.
PSNR_CAP_DB = 100.0

_DATA_RANGE = 255.0


# ----------------------------------------------------------------------------------------------------
# helpers


def _check_pair(pred: Tensor, target: Tensor) -> None:
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
    _check_pair(pred, target)
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


def min_image_size(lpips: bool = False) -> dict:
    """The smallest image side each metric works on: {what: pixels}. SSIM's 11-tap window; LPIPS's AlexNet
    (an 11x11 stride-4 convolution and two 3x3 stride-2 poolings) needs 31."""
    need = {"SSIM": 2 * _ssim_radius() + 1}
    if lpips:
        need["LPIPS"] = 31
    return need


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
    _check_pair(pred, target)
    lead, (c, h, w) = pred.shape[:-3], pred.shape[-3:]
    win = 2 * _ssim_radius() + 1
    if h < win or w < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win} pixels, got {h}x{w}")
    x, y = pred.reshape(-1, h, w), target.reshape(-1, h, w)
    dt = _ssim_dtype(pred)
    step = max(1, _SSIM_CHUNK_PIXELS // (h * w))
    planes = torch.cat([_ssim_planes(x[i:i + step], y[i:i + step], dt) for i in range(0, x.shape[0], step)])
    return planes.view(-1, c).mean(-1).reshape(lead).to(_out_dtype(pred))


# ----------------------------------------------------------------------------------------------------
# LPIPS

ALEXNET_WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_WEIGHTS_URL = "https://download.pytorch.org/models/" + ALEXNET_WEIGHTS_FILE


class LPIPSWeightsError(UserError):
    """LPIPS cannot run with real weights; the message (one line) names the file and the fix."""


class LPIPSWeightsMissing(LPIPSWeightsError):
    """torchvision's AlexNet weights are neither in the torch hub cache nor downloadable."""


def alexnet_weights_path() -> Path:
    """Where torchvision caches the AlexNet weights: torch.hub.get_dir()/checkpoints (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS_FILE


def _download(url: str, path: Path, timeout_s: float = 20.0) -> None:
    """torchvision's own download (to a temporary name, then renamed), with a socket timeout so an offline
    machine answers at once instead of hanging."""
    import socket
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=False)
    finally:
        socket.setdefaulttimeout(old)


def fetch_alexnet_weights(path: Path | None = None) -> Path:
    """The AlexNet weights file, as torchvision gets it: from its cache, or downloaded into the cache when
    the machine is online. LPIPSWeightsMissing (one line naming the file and where to put it) otherwise."""
    path = Path(path) if path is not None else alexnet_weights_path()
    if path.is_file():
        return path
    try:
        _download(ALEXNET_WEIGHTS_URL, path)
    except Exception as e:  # noqa: BLE001 - offline, proxy, disk: every failure means the same to the user
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise LPIPSWeightsMissing(
            f"LPIPS needs torchvision's AlexNet weights {ALEXNET_WEIGHTS_FILE}, which are not at {path} and "
            f"could not be downloaded ({reason}): copy the file there (from {ALEXNET_WEIGHTS_URL}; TORCH_HOME "
            "moves the cache), or pass --no_lpips to skip LPIPS") from None
    return path


class LPIPSMetric:
    """LPIPS (AlexNet, v0.1) per image: `metric(pred, target)` with (..., 3, H, W) in [0, 1] -> (...).

    The linear layers ship with the `lpips` package; the AlexNet trunk is read from `weights_path`
    (default: torchvision's cache, downloaded there when missing and the machine is online; see
    fetch_alexnet_weights). Without it, `LPIPSWeightsMissing`: we build the lpips model with a random
    trunk (pnet_rand=True, so lpips itself fetches nothing) and load the file ourselves, so random
    weights can never be used by accident.

    `_random_backbone_for_tests=True` keeps that random trunk. It exists only so tests can run the code
    path without the file; its numbers are not LPIPS and must never be reported.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        weights_path: str | Path | None = None,
        *,
        chunk_size: int = 16,
        _random_backbone_for_tests: bool = False,
    ):
        self.device = torch.device(device)
        self.chunk_size = max(1, int(chunk_size))
        self.random_backbone = bool(_random_backbone_for_tests)
        self.weights_path = None if self.random_backbone else fetch_alexnet_weights(weights_path)
        import lpips  # imported late: it pulls in torchvision

        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            # torchvision warns about the deprecated `pretrained=` that lpips passes; the random
            # initialisation of the trunk must not disturb the caller's RNG stream.
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(pretrained=True, net="alex", version="0.1", pnet_rand=True, verbose=False)
        if not self.random_backbone:
            model.net.load_state_dict(self._read_trunk(model.net))
        self.model = model.eval().requires_grad_(False).to(self.device)

    def _read_trunk(self, net: torch.nn.Module) -> dict[str, Tensor]:
        # lpips splits torchvision's `features` into slice1..slice5 keeping the module indices:
        # features.{i}.{param} -> slice{k}.{i}.{param}.
        path = self.weights_path
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file ends in the same one-line message
            raise LPIPSWeightsError(
                f"cannot read {path} ({type(e).__name__}: {e}); replace it with torchvision's "
                f"{ALEXNET_WEIGHTS_FILE}, or pass --no_lpips to skip LPIPS"
            ) from None
        out = {}
        for key, ref in net.state_dict().items():
            src = "features." + key.split(".", 1)[1]
            if not isinstance(state, dict) or src not in state or state[src].shape != ref.shape:
                raise LPIPSWeightsError(
                    f"{path} is not torchvision's AlexNet ({src} missing or misshaped); replace it with "
                    f"{ALEXNET_WEIGHTS_FILE} or pass --no_lpips to skip LPIPS"
                )
            out[key] = state[src]
        return out

    @torch.no_grad()
    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_pair(pred, target)
        lead, chw = pred.shape[:-3], pred.shape[-3:]
        x = pred.reshape(-1, *chw)
        y = target.reshape(-1, *chw)
        out = []
        for i in range(0, x.shape[0], self.chunk_size):
            a = x[i : i + self.chunk_size].to(self.device, torch.float32).clamp(0, 1)
            b = y[i : i + self.chunk_size].to(self.device, torch.float32).clamp(0, 1)
            out.append(self.model(a, b, normalize=True).reshape(-1))  # normalize: [0,1] -> [-1,1]
        return torch.cat(out).reshape(lead)


# ----------------------------------------------------------------------------------------------------
# order-agnostic p-metrics (the paper's pPSNR, pSSIM, pLPIPS)

Metric = Callable[[Tensor, Tensor], Tensor]


def frame_scores(metric: Metric, pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Per-frame scores (B, T) of pred vs gt, and of the time-reversed pred vs gt.

    reversed_[:, t] = metric(pred[:, T-1-t], gt[:, t]).
    """
    if pred.dim() != 5:
        raise ValueError(f"expected sequences shaped (B, T, C, H, W), got {tuple(pred.shape)}")
    return metric(pred, gt), metric(pred.flip(1), gt)


def p_metric(forward: Tensor, reversed_: Tensor, higher_is_better: bool, mode: str = "pair") -> Tensor:
    """Order-agnostic per-frame scores (B, T) from `frame_scores`' two (B, T) tensors.

    "pair" (the paper's formula): for each symmetric pair (k, T+1-k) the better of the two assignments,
    each scored by the mean over the pair's two frames; that mean is reported for both frames. The
    middle frame (odd T) is kept as is.
    "sequence" (the reference code): per sequence, the direction with the better mean over all frames;
    per-frame values from that direction. Ties keep the forward order.
    """
    if forward.shape != reversed_.shape or forward.dim() < 1:
        raise ValueError(f"forward and reversed scores differ in shape: {tuple(forward.shape)} vs {tuple(reversed_.shape)}")
    if mode == "pair":
        t = forward.shape[-1]
        mirror = torch.arange(t - 1, -1, -1, device=forward.device)
        fwd = (forward + forward[..., mirror]) / 2
        rev = (reversed_ + reversed_[..., mirror]) / 2
        out = torch.maximum(fwd, rev) if higher_is_better else torch.minimum(fwd, rev)
        if t % 2 == 1:
            out[..., t // 2] = forward[..., t // 2]
        return out
    if mode == "sequence":
        f, r = forward.mean(-1, keepdim=True), reversed_.mean(-1, keepdim=True)
        use_reversed = r > f if higher_is_better else r < f
        return torch.where(use_reversed, reversed_, forward)
    raise ValueError(f"p-metric mode must be 'pair' or 'sequence', got {mode!r}")


def p_scores(metric: Metric, pred: Tensor, gt: Tensor, higher_is_better: bool, mode: str = "pair") -> Tensor:
    """`p_metric` of `frame_scores`: (B, T, C, H, W) pair -> (B, T)."""
    return p_metric(*frame_scores(metric, pred, gt), higher_is_better=higher_is_better, mode=mode)


class SequenceMetrics:
    """Accumulates predicted vs ground-truth sequences into dataset figures.

    Figures: pPSNR, pSSIM, pLPIPS (order-agnostic, `mode` "pair" or "sequence") and PSNR, SSIM, LPIPS
    (the prediction's own order). LPIPS figures are None when no `lpips` metric is given (--no_lpips).
    PSNR is capped at `psnr_cap_db` (100 dB) per frame before any averaging, see PSNR_CAP_DB.
    A set's figure for frame t is the mean over sequences; the overall figure is the mean over all
    frames of all sequences.
    """

    HIGHER_IS_BETTER = {"PSNR": True, "SSIM": True, "LPIPS": False}

    def __init__(self, lpips: LPIPSMetric | Metric | None = None, mode: str = "pair",
                 psnr_cap_db: float | None = PSNR_CAP_DB):
        if mode not in ("pair", "sequence"):
            raise ValueError(f"p-metric mode must be 'pair' or 'sequence', got {mode!r}")
        self.mode = mode
        self.lpips = lpips
        self.psnr_cap_db = psnr_cap_db
        self.names = ["pPSNR", "pSSIM"] + (["pLPIPS"] if lpips is not None else []) + \
                     ["PSNR", "SSIM"] + (["LPIPS"] if lpips is not None else [])
        self.reset()

    def reset(self) -> None:
        self.num_frames: int | None = None
        self.num_sequences = 0
        self._sums: dict[str, Tensor] = {}

    def _metrics(self) -> dict[str, Metric]:
        out: dict[str, Metric] = {
            "PSNR": lambda p, t: psnr(p, t, cap_db=self.psnr_cap_db),
            "SSIM": ssim,
        }
        if self.lpips is not None:
            out["LPIPS"] = self.lpips
        return out

    @torch.no_grad()
    def update(self, pred: Tensor, gt: Tensor) -> dict[str, Tensor]:
        """Adds a batch (B, T, C, H, W); returns its per-frame values {name: (B, T)} (on CPU, float64)."""
        values: dict[str, Tensor] = {}
        for name, metric in self._metrics().items():
            fwd, rev = frame_scores(metric, pred, gt)
            values["p" + name] = p_metric(fwd, rev, self.HIGHER_IS_BETTER[name], self.mode)
            values[name] = fwd
        values = {k: values[k].detach().to("cpu", torch.float64) for k in self.names}
        self.add(values)
        return values

    def add(self, values: dict[str, Tensor]) -> None:
        """Adds precomputed per-frame values {name: (B, T)} for every name in `self.names`."""
        shapes = {tuple(values[k].shape) for k in self.names}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"expected one (B, T) shape for all of {self.names}, got {shapes}")
        b, t = shapes.pop()
        if self.num_frames is None:
            self.num_frames = t
        elif t != self.num_frames:
            raise ValueError(f"sequences of {t} frames after sequences of {self.num_frames}")
        for k in self.names:
            s = values[k].detach().to("cpu", torch.float64).sum(0)
            self._sums[k] = self._sums[k] + s if k in self._sums else s
        self.num_sequences += b

    def all_reduce(self, num_frames: int | None = None) -> None:
        """Sums the figures of all ranks (torch.distributed), so every rank then holds the set's figures.

        Every rank must call it. A rank that saw no sequence takes part with zeros: pass num_frames
        (T) so it can, otherwise it would leave the others waiting.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.num_frames is None:
            if num_frames is None:
                raise ValueError("all_reduce on a rank without sequences needs num_frames")
            self.num_frames = int(num_frames)
            self._sums = {k: torch.zeros(self.num_frames, dtype=torch.float64) for k in self.names}
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        packed = torch.cat([self._sums[k] for k in self.names] + [torch.tensor([float(self.num_sequences)], dtype=torch.float64)])
        packed = packed.to(device)
        dist.all_reduce(packed)
        packed = packed.cpu()
        t = self.num_frames
        for i, k in enumerate(self.names):
            self._sums[k] = packed[i * t : (i + 1) * t].clone()
        self.num_sequences = int(round(packed[-1].item()))

    def per_frame(self, name: str) -> list[float] | None:
        """Mean over sequences for frames 1..T; None for a figure not computed (LPIPS skipped)."""
        if name not in self.names or self.num_sequences == 0:
            return None
        return (self._sums[name] / self.num_sequences).tolist()

    def mean(self, name: str) -> float | None:
        frames = self.per_frame(name)
        return None if frames is None else sum(frames) / len(frames)

    def summary(self) -> dict:
        """{name: {"per_frame": [T floats], "mean": float} or None} for all six figures, plus the mode,
        the PSNR cap and the number of sequences (the content of --output_json)."""
        out: dict = {"mode": self.mode, "psnr_cap_db": self.psnr_cap_db, "num_sequences": self.num_sequences}
        for name in ("pPSNR", "pSSIM", "pLPIPS", "PSNR", "SSIM", "LPIPS"):
            frames = self.per_frame(name)
            out[name] = None if frames is None else {"per_frame": frames, "mean": sum(frames) / len(frames)}
        return out

    def to_markdown(self, digits: int = 4) -> str:
        """A markdown table, one row per figure, columns frames 1..T and the mean."""
        t = self.num_frames or 0
        lines = ["| metric | " + " | ".join(str(i + 1) for i in range(t)) + " | mean |",
                 "|---|" + "---|" * (t + 1)]
        for name in ("pPSNR", "pSSIM", "pLPIPS", "PSNR", "SSIM", "LPIPS"):
            frames = self.per_frame(name)
            if frames is None:
                cells = ["skipped"] * (t + 1) if name.endswith("LPIPS") else ["-"] * (t + 1)
            else:
                cells = [f"{v:.{digits}f}" for v in frames + [sum(frames) / len(frames)]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# HyperCUT hit / consistency (the paper's hit and con@k)


def ordering_stats(scores: Tensor | Iterable) -> dict[str, Tensor]:
    """Per-sequence BoolTensors (N,) from hyperplane scores (N, 6) ordered h(d1), h(dbar1), h(d2),
    h(dbar2), h(d3), h(dbar3): hit1..hit3 (h(d_k) * h(dbar_k) < 0), con2 (sign h(d1) =
    sign h(d2)) and con3 (all three signs equal). Like the order rule (u1 * u2 > 0), a zero score
    agrees with nothing."""
    s = torch.as_tensor(scores).detach().to("cpu", torch.float64)
    if s.dim() != 2 or s.shape[1] != 6:
        raise ValueError(f"expected hyperplane scores shaped (N, 6), got {tuple(s.shape)}")
    u1, ub1, u2, ub2, u3, ub3 = s.unbind(1)
    return {"hit1": u1 * ub1 < 0, "hit2": u2 * ub2 < 0, "hit3": u3 * ub3 < 0,
            "con2": u1 * u2 > 0, "con3": (u1 * u2 > 0) & (u1 * u3 > 0)}


def hit_con(scores: Tensor | Iterable) -> dict[str, float]:
    """Hit and consistency rates (the shares of ordering_stats) under the paper's names: hit,
    hit_x2_x6, hit_x3_x5 (pairs P1..P3), con@2, con@3, plus num_sequences. With N = 0 the rates are nan."""
    stats = ordering_stats(scores)
    n = stats["hit1"].numel()

    def rate(mask: Tensor) -> float:
        return mask.double().mean().item() if n else math.nan

    return {"hit": rate(stats["hit1"]), "hit_x2_x6": rate(stats["hit2"]), "hit_x3_x5": rate(stats["hit3"]),
            "con@2": rate(stats["con2"]), "con@3": rate(stats["con3"]), "num_sequences": n}

"""The paper's order-agnostic scores (pPSNR, pSSIM, pLPIPS) and `SequenceMetrics`, which accumulates
predicted sequences into a dataset's per-frame and overall figures."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from utils.metrics.image import SSIM_MIN_SIZE, psnr, ssim
from utils.metrics.lpips import LPIPS_MIN_SIZE, LPIPSMetric


# A perfect frame has infinite PSNR. `psnr` returns inf unless asked to cap; dataset figures
# (SequenceMetrics) cap each frame at 100 dB before any averaging, so one identical frame cannot turn a
# set's mean into inf, and a pair holding one perfect frame still ranks above any imperfect pair.
PSNR_CAP_DB = 100.0


def min_image_size(lpips: bool = False) -> dict:
    """The smallest image side each metric works on: {what: pixels}."""
    need = {"SSIM": SSIM_MIN_SIZE}
    if lpips:
        need["LPIPS"] = LPIPS_MIN_SIZE
    return need


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

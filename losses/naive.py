"""`--loss_type naive`: Charbonnier distance per frame, averaged over frames."""
from __future__ import annotations

import torch

from losses.base import LOSSES, SequenceLoss


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """mean sqrt((p - y)^2 + eps): a smooth L1 (eps is added to the square, as in the reference)."""
    return torch.sqrt((pred - target) ** 2 + eps).mean()


def check_sequences(pred: torch.Tensor, gt: torch.Tensor) -> None:
    if pred.dim() != 5 or pred.shape != gt.shape:
        raise ValueError("expected prediction and ground truth of the same shape (B, N, C, H, W), got "
                         f"{tuple(pred.shape)} and {tuple(gt.shape)}")


def naive_loss(pred: torch.Tensor, gt: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Charbonnier over (B, N, C, H, W) sequences, frame by frame, averaged over the N frames."""
    check_sequences(pred, gt)
    # Every frame has the same number of pixels, so the mean of per-frame means is the overall mean.
    return charbonnier(pred, gt, eps)


@LOSSES.register("naive")
class NaiveLoss(SequenceLoss):
    """forward(pred, gt) -> (total, {"total"})."""

    scale_loss = staticmethod(naive_loss)

    def forward(self, pred: torch.Tensor, gt: torch.Tensor):
        total = naive_loss(pred, gt)
        return total, {"total": total.detach()}

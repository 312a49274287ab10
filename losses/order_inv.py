"""`--loss_type order_inv`: a loss that cannot tell a sequence from its reverse.

For each symmetric pair (i, j = N-1-i), |p_i + p_j| and |p_i - p_j| do not change when the two
frames swap, so the loss compares them with the ground truth's and leaves the order free.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from losses.base import LOSSES, SequenceLoss
from losses.naive import charbonnier, check_sequences


def order_inv_terms(pred: torch.Tensor, gt: torch.Tensor):
    """(pair term, middle term) of the order-invariant loss; their sum is the loss."""
    check_sequences(pred, gt)
    n = pred.shape[1]
    pairs = pred.new_zeros(())
    for i in range(n // 2):
        j = n - 1 - i
        pairs = pairs + F.mse_loss((pred[:, i] + pred[:, j]).abs(), (gt[:, i] + gt[:, j]).abs()) / n
        pairs = pairs + F.mse_loss((pred[:, i] - pred[:, j]).abs(), (gt[:, i] - gt[:, j]).abs()) / n
    middle = pred.new_zeros(())
    if n % 2 == 1:
        # The middle frame is its own mirror image: supervise it directly (the reference leaves it
        # unsupervised). Divided by N like every other frame's share, so for N = 1 this is the naive loss.
        m = n // 2
        middle = charbonnier(pred[:, m], gt[:, m]) / n
    return pairs, middle


def order_inv_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Order-invariant loss over (B, N, C, H, W): the same for a prediction and its reverse."""
    pairs, middle = order_inv_terms(pred, gt)
    return pairs + middle


@LOSSES.register("order_inv")
class OrderInvLoss(SequenceLoss):
    """forward(pred, gt) -> (total, {"total", "pairs", "middle"})."""

    scale_loss = staticmethod(order_inv_loss)
    order_free = True

    def forward(self, pred: torch.Tensor, gt: torch.Tensor):
        pairs, middle = order_inv_terms(pred, gt)
        total = pairs + middle
        return total, {"total": total.detach(), "pairs": pairs.detach(), "middle": middle.detach()}

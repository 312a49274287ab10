"""`--loss_type pit`: permutation-invariant training over the two orders of a sequence.

Per sample, the naive (Charbonnier) loss against the ground truth and against its reverse; the smaller
one counts. Unlike order_inv, which compares order-free combinations of frame pairs, this supervises
every frame directly once the network has chosen a direction; the direction it chooses is whatever
it can read from the blur, so pit is the order-free baseline that could learn a readable order itself.
"""
from __future__ import annotations

import torch

from losses.base import LOSSES, SequenceLoss
from losses.naive import check_sequences, naive_loss


def pit_terms(pred: torch.Tensor, gt: torch.Tensor, eps: float = 1e-6):
    """(loss, BoolTensor (B,) True where the reversed ground truth was the closer one)."""
    check_sequences(pred, gt)
    forward = torch.sqrt((pred - gt) ** 2 + eps).flatten(1).mean(1)
    backward = torch.sqrt((pred - gt.flip(1)) ** 2 + eps).flatten(1).mean(1)
    return torch.minimum(forward, backward).mean(), backward < forward


def pit_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return pit_terms(pred, gt)[0]


@LOSSES.register("pit")
class PITLoss(SequenceLoss):
    """forward(pred, gt) -> (total, {"total", "flipped"}): flipped counts the samples of the batch
    matched to the reversed ground truth."""

    scale_loss = staticmethod(naive_loss)

    @torch.no_grad()
    def target(self, pred: torch.Tensor, gt: torch.Tensor):
        """gt in the order closer to pred, per sample, and the BoolTensor (B,) of the reversed ones."""
        _, flipped = pit_terms(pred, gt)
        return torch.where(flipped[:, None, None, None, None], gt.flip(1), gt), flipped

    def forward(self, pred: torch.Tensor, gt: torch.Tensor):
        total, flipped = pit_terms(pred, gt)
        return total, {"total": total.detach(), "flipped": flipped.sum()}

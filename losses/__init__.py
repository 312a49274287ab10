"""Losses for the deblurring network (`--loss_type`).

Each loss type is a SequenceLoss registered in LOSSES beside its definition (losses/base.py; naive.py,
order_inv.py, hypercut.py, pit.py), called as loss(pred, gt) on (B, N, C, H, W) RGB [0, 1] sequences.
build_loss wraps it to take a backbone's output dict (the backbone contract, models/__init__.py) and
scores its "frames", or, for a multi-scale backbone (Purohit), builds losses/multiscale.py's PurohitLoss
around it. Every loss returns (total, dict of detached terms).
"""
from torch import nn

from losses.base import LOSSES, SequenceLoss, build_frames_loss
from losses.hypercut import HyperCUTLoss
from losses.multiscale import PurohitLoss
from losses.naive import NaiveLoss, charbonnier, naive_loss
from losses.order_inv import OrderInvLoss, order_inv_loss, order_inv_terms
from losses.pit import PITLoss, pit_loss


class FramesLoss(nn.Module):
    """A loss of predicted frames, applied to a backbone's output dict: loss(out["frames"], gt)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, out: dict, gt):
        return self.inner(out["frames"], gt)


def build_loss(loss_type: str, hypercut=None, alpha: float = 0.2, *, multiscale: bool = False, **multiscale_kwargs):
    """The loss of a backbone's output dict: multiscale (Purohit: every scale, the flow term and the
    options of PurohitLoss) or the frames loss of --loss_type."""
    if multiscale:
        return PurohitLoss(loss_type, hypercut=hypercut, alpha=alpha, **multiscale_kwargs)
    if multiscale_kwargs:
        raise ValueError(f"options {sorted(multiscale_kwargs)} are for multi-scale backbones only")
    return FramesLoss(build_frames_loss(loss_type, hypercut, alpha))


__all__ = ["LOSSES", "SequenceLoss", "build_loss", "build_frames_loss", "charbonnier", "naive_loss",
           "order_inv_loss", "order_inv_terms", "NaiveLoss", "OrderInvLoss", "HyperCUTLoss", "PurohitLoss",
           "FramesLoss", "PITLoss", "pit_loss"]

"""What a `--loss_type` is: a SequenceLoss subclass registered in LOSSES beside its definition, used as is
on a backbone's frames and, through `target`, `scale_loss` and `regularizer`, at every scale of a
multi-scale backbone (losses/multiscale.py)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from utils.registry import Registry

LOSSES: Registry[type] = Registry("loss type")


class SequenceLoss(nn.Module):
    """forward(pred, gt) -> (total, dict of detached terms), pred and gt RGB [0, 1] sequences (B, N, 3, H, W).

    What the multi-scale loss takes from the same type:
    - scale_loss(pred, target): the photometric distance at one scale;
    - target(pred, gt): gt in the order scale_loss compares with (chosen once, at the finest scale), and
      a BoolTensor (B,) of the reversed sequences, or None for a type that never reverses;
    - order_free: scale_loss is the same for a target and its reverse;
    - regularizer(pred): a term on the finest frames, weighted by the type's `alpha`; None when it has none.
    """

    scale_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    order_free = False

    @classmethod
    def build(cls, hypercut: nn.Module | None = None, alpha: float = 0.2) -> SequenceLoss:
        """The loss from the options of --loss_type (a frozen HyperCUT model and its weight alpha, which only
        the hypercut type uses)."""
        return cls()

    def target(self, pred: torch.Tensor, gt: torch.Tensor):
        return gt, None

    def regularizer(self, pred: torch.Tensor) -> torch.Tensor | None:
        return None


def build_frames_loss(loss_type: str, hypercut: nn.Module | None = None, alpha: float = 0.2) -> SequenceLoss:
    """The loss module of --loss_type on frame tensors; "hypercut" needs a HyperCUT model
    (see models.hypercut.load_hypercut). Every type is registered once the losses package is imported."""
    return LOSSES[loss_type].build(hypercut, alpha)

"""`--loss_type hypercut`: canonical-order supervision plus a pull to the canonical side.

A frozen HyperCUT decides each ground-truth sequence's canonical order (reversed where h(d1) < 0,
d1 = f(g(x1, xN))), the naive loss compares the prediction with the canonically ordered ground
truth, and R = mean_b sum_k softplus(-h(f(g(p_k, p_{N+1-k})))) over the three nested pairs pushes
the prediction's pairs to the positive (canonical) side, with weight alpha.

The reference's blur2vid code instead adds softplus(+h) to an order-invariant loss, behind a flip
test that is always true; that pushes predictions to the negative side, against its own
generate_order (which makes positive canonical). We follow the paper's intent, as above.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from losses.base import LOSSES, SequenceLoss
from losses.naive import check_sequences, naive_loss


@LOSSES.register("hypercut")
class HyperCUTLoss(SequenceLoss):
    """forward(pred, gt) -> (total, {"total", "base", "reg", "flipped"}); pred and gt are RGB [0, 1]
    sequences (B, N, 3, H, W), N >= 6. The HyperCUT model is frozen here (eval mode and
    requires_grad False on its parameters, changed in place); gradients still flow through it to pred.
    """

    scale_loss = staticmethod(naive_loss)

    @classmethod
    def build(cls, hypercut: nn.Module | None = None, alpha: float = 0.2) -> HyperCUTLoss:
        if hypercut is None:
            raise ValueError("--loss_type hypercut needs a HyperCUT model: pass --hypercut_path")
        return cls(hypercut, alpha=alpha)

    def __init__(self, hypercut: nn.Module, alpha: float = 0.2):
        super().__init__()
        hypercut.eval()
        hypercut.requires_grad_(False)
        self.hypercut = hypercut
        self.alpha = float(alpha)

    def train(self, mode: bool = True):
        super().train(mode)
        self.hypercut.eval()  # frozen whatever the surrounding loop does
        return self

    @torch.no_grad()
    def canonicalize(self, gt: torch.Tensor):
        """(gt in canonical order, BoolTensor (B,) of the flipped sequences): flipped where h(d1) < 0."""
        n = gt.shape[1]
        d1 = self.hypercut.embed_pairs(self.hypercut.to_network(gt), [(0, n - 1)])
        flip = self.hypercut.score(d1)[:, 0] < 0
        return torch.where(flip.view(-1, 1, 1, 1, 1), gt.flip(1), gt), flip

    def target(self, pred: torch.Tensor, gt: torch.Tensor):
        return self.canonicalize(gt)

    def regularizer(self, pred: torch.Tensor) -> torch.Tensor:
        """R = batch mean of sum_k softplus(-h(d_k(pred))) over the pairs P1, P2, P3."""
        _, scores = self.hypercut.pair_scores(pred, include_reversed=False)  # (B, 3)
        return F.softplus(-scores).sum(dim=1).mean()

    def forward(self, pred: torch.Tensor, gt: torch.Tensor):
        check_sequences(pred, gt)
        gt_canonical, flip = self.canonicalize(gt)
        base = naive_loss(pred, gt_canonical)
        reg = self.regularizer(pred)
        total = base + self.alpha * reg
        return total, {"total": total.detach(), "base": base.detach(), "reg": reg.detach(),
                       "flipped": flip.sum()}

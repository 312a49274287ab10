"""Losses for the Purohit backbone: each `--loss_type` at 4 scales, plus the flow term.

PurohitLoss(...)(out, gt), with `out` the dict of PurohitBackbone.forward or .autoencode and gt the
ground truth (B, 7, 3, H, W) RGB [0, 1], returns (total, dict of detached terms):

    total = mean_s base(out["scales"][s], pyramid(gt)[s])            "photo", 4 scales averaged
          + mu * mean_s TV(out["flows"][s])                            "tv", mu = 0.02
          + alpha * R(out["frames"])                                   "reg", hypercut only
          + embed_weight * distance(out["embedding"], RVE(gt))         "embed", stage 2, optional
          + center_weight * charbonnier(out["center_pred"], gt[:, 3])  "center", predicted centre only

base and R come from the loss type (losses/base.py): base is its scale_loss against its target, i.e.
the naive (Charbonnier) or order-invariant loss, for hypercut the naive loss against the canonically
ordered ground truth, for pit against the order closer to the finest prediction (losses/naive.py, order_inv.py,
hypercut.py, pit.py). The ground truth is halved per scale by 2x2 means (models.backbones.purohit.pyramid,
which the model also uses for the central frame). R is computed at the finest scale only.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from losses.base import build_frames_loss
from losses.naive import charbonnier
from models.backbones.purohit import pyramid


def flow_tv(flow: torch.Tensor) -> torch.Tensor:
    """Total variation of a flow field (..., H, W), as the mean absolute spatial gradient:
    mean |f(y, x+1) - f(y, x)| + mean |f(y+1, x) - f(y, x)| (anisotropic, forward differences), the
    means over every other dimension (batch, steps, the two flow components). The paper calls its
    regulariser total variation; the reference penalised mean |flow| instead, which pulls every flow
    to zero rather than making it smooth."""
    tv = flow.new_zeros(())
    if flow.shape[-1] > 1:
        tv = tv + (flow[..., :, 1:] - flow[..., :, :-1]).abs().mean()
    if flow.shape[-2] > 1:
        tv = tv + (flow[..., 1:, :] - flow[..., :-1, :]).abs().mean()
    return tv


def multiscale_flow_tv(flows) -> torch.Tensor:
    """flow_tv averaged over the scales (a list of flow tensors)."""
    return sum(flow_tv(f) for f in flows) / len(flows)


def multiscale_loss(scales, gt: torch.Tensor, base: Callable) -> torch.Tensor:
    """base(prediction at scale s, ground truth halved s times), averaged over the scales;
    scales[0] is the full-resolution prediction (B, N, C, H, W)."""
    targets = pyramid(gt, len(scales))
    return sum(base(p, y) for p, y in zip(scales, targets)) / len(scales)


def _embedding_distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample mean |a - b| ("l1") or mean (a - b)^2 ("l2"): shape (B,)."""
    d = (a - b).abs() if kind == "l1" else (a - b) ** 2
    return d.flatten(1).mean(dim=1)


class PurohitLoss(nn.Module):
    """The multi-scale loss of a PurohitBackbone output (see the module docstring).

    loss_type, hypercut, alpha: the loss type and its options (losses.build_frames_loss; "hypercut"
        needs `hypercut`, frozen as in HyperCUTLoss). Stage 1 (autoencode) reproduces the sharp frames
        in their stored order, so it is trained with "naive".
    embed_target: a function sharp frames (B, 7, 3, H, W) -> embedding, e.g. model.encode_video
        (the stage-1 RVE); evaluated without gradients. Needed when embed_weight > 0. It embeds the
        loss type's target (the canonical order for hypercut); for an order-free type (order_inv) the
        nearer of the two orders counts, per sample.
    center_weight: weight of the Charbonnier term on a predicted centre (out["center_pred"],
        present only when the centre network produced it).
    """

    def __init__(self, loss_type: str = "naive", hypercut: nn.Module | None = None, alpha: float = 0.2,
                 mu: float = 0.02, embed_weight: float = 0.0, embed_target: Callable | None = None,
                 embed_distance: str = "l2", center_weight: float = 1.0):
        super().__init__()
        self.frames_loss = build_frames_loss(loss_type, hypercut, alpha)
        if embed_distance not in ("l1", "l2"):
            raise ValueError(f"embed_distance must be 'l1' or 'l2', got {embed_distance!r}")
        if embed_weight > 0 and embed_target is None:
            raise ValueError("embed_weight > 0 needs embed_target (e.g. the model's encode_video)")
        self.mu = float(mu)
        self.embed_weight, self.embed_distance = float(embed_weight), embed_distance
        self.embed_target = embed_target  # a plain attribute: the encoder is the model's, not the loss's
        self.center_weight = float(center_weight)

    def forward(self, out: dict, gt: torch.Tensor):
        if gt.dim() != 5 or tuple(out["frames"].shape) != tuple(gt.shape):
            raise ValueError(f"expected ground truth of the prediction's shape {tuple(out['frames'].shape)}, "
                             f"got {tuple(gt.shape)}")
        terms = {}
        target, flipped = self.frames_loss.target(out["frames"], gt)  # one order for every scale
        if flipped is not None:
            terms["flipped"] = flipped.sum()
        photo = multiscale_loss(out["scales"], target, self.frames_loss.scale_loss)
        tv = multiscale_flow_tv(out["flows"])
        total = photo + self.mu * tv
        terms.update(photo=photo.detach(), tv=tv.detach())
        reg = self.frames_loss.regularizer(out["frames"])
        if reg is not None:
            total = total + self.frames_loss.alpha * reg
            terms["reg"] = reg.detach()
        if self.embed_weight > 0:
            embed = self.embedding_term(out["embedding"], target)
            total = total + self.embed_weight * embed
            terms["embed"] = embed.detach()
        if "center_pred" in out and self.center_weight > 0:
            center = charbonnier(out["center_pred"], gt[:, gt.shape[1] // 2])
            total = total + self.center_weight * center
            terms["center"] = center.detach()
        terms["total"] = total.detach()
        return total, terms

    def embedding_term(self, embedding: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Batch mean of the distance between the BIE's embedding and the RVE's embedding of gt."""
        with torch.no_grad():
            target = self.embed_target(gt)
            reverse = self.embed_target(gt.flip(1)) if self.frames_loss.order_free else None
        d = _embedding_distance(embedding, target, self.embed_distance)
        if reverse is not None:
            d = torch.minimum(d, _embedding_distance(embedding, reverse, self.embed_distance))
        return d.mean()

"""Our extensions to HyperCUT's ordering model (not in the paper; off by default). See lab/ordering.md.

HyperCUT's loss only asks that a pair and its reverse land on opposite sides and that the nested pairs
of a sequence agree. Nothing in it prefers a rule that a deblurring network can read from the blur,
and on the embedded dataset the rules it finds are not readable (a probe reads the paper model's order at
chance, lab/ordering.md section 1). Two additions aim at a rule based on the global motion, which the
blur does show (its axis, if not its sign):

* Crop consistency (`--crop_consistency W`): K random sub-crops of each training sequence must land on
  the same side: W * mean over crop pairs of softplus(-h(d1 of crop a) h(d1 of crop b)) is added to the
  loss (models.hypercut.OrderingObjective). A rule based on local content changes from crop to crop; one based on the camera's motion does
  not.
* A motion-capable f (`--f_func MotionIm2Vec`): the paper's f is linear up to 1/32 resolution (slope
  1.0), so for content that only translates it cannot compute the motion. This f reads, at 1/4, 1/8
  and 1/16 resolution (where a motion of 8-22 pixels is a few pixels at most), the frame difference,
  its products with the spatial gradients of the mean frame (the terms of a Lucas-Kanade motion
  estimate) and the mean frame, through a small ReLU network (3x3 then 1x1 convs, a mean), and
  is antisymmetric by construction: d(a, b) = phi(a, b) - phi(b, a), so a pair and its reverse always
  land on opposite sides (hit 1) and training starts away from the zero-score saddle.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.registries import F_FUNCS


@F_FUNCS.register("MotionIm2Vec")
class MotionIm2Vec(nn.Module):
    """f for g = Concat: (B, 6, H, W) (two frames on the channel axis) -> (B, out_dim), antisymmetric in
    the two frames. `slope` is accepted for HyperCUT's interface; the network uses ReLU."""

    def __init__(self, in_channels: int = 6, out_dim: int = 128, base_width: int = 32,
                 slope: float = 0.0, scales=(4, 8, 16)):
        super().__init__()
        if in_channels % 2:
            raise ValueError(f"MotionIm2Vec takes two frames on the channel axis, got {in_channels} channels")
        c = in_channels // 2
        self.out_dim = out_dim
        self.scales = tuple(scales)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(4 * c, base_width, 3, padding=1), nn.ReLU(inplace=True),
                          nn.Conv2d(base_width, base_width, 1), nn.ReLU(inplace=True))
            for _ in self.scales)
        self.head = nn.Linear(base_width * len(self.scales), out_dim)
        self.min_size = 2 * max(self.scales) + 1

    @staticmethod
    def _features(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[D gx, D gy, D, M] for D = b - a and M = (a + b) / 2 (gx, gy: central differences of M)."""
        diff, mean = b - a, 0.5 * (a + b)
        padded = F.pad(mean, (1, 1, 1, 1), mode="replicate")
        gx = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
        gy = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
        return torch.cat([diff * gx, diff * gy, diff, mean], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"MotionIm2Vec needs images of at least {self.min_size} x {self.min_size} pixels, "
                             f"got {tuple(x.shape[-2:])}")
        c = x.shape[1] // 2
        out = []
        for s, branch in zip(self.scales, self.branches):
            pooled = F.avg_pool2d(x, s)
            feats = self._features(pooled[:, :c], pooled[:, c:])
            # phi(b, a) sees the same mean frame and the negated difference terms: one batched call
            sign = torch.ones(4 * c, device=x.device, dtype=x.dtype)
            sign[:3 * c] = -1
            both = branch(torch.cat([feats, feats * sign.view(1, -1, 1, 1)])).mean((2, 3))
            fwd, bwd = both.chunk(2)
            out.append(fwd - bwd)
        # the head is linear, so head(phi(a, b)) - head(phi(b, a)) = W (phi(a, b) - phi(b, a)): no bias
        return torch.cat(out, 1) @ self.head.weight.t()


@F_FUNCS.register("CorrIm2Vec")
class CorrIm2Vec(nn.Module):
    """f for g = Concat that sees the two frames only through their global correlation at a set of
    shifts (a cost volume, as optical-flow networks build): at 1/4 resolution for shifts up to +-5
    (+-20 pixels) and at 1/8 for shifts up to +-3 (+-24 pixels), on the grey, zero-mean, unit-variance
    frames. An MLP reads the cost volume; d(a, b) = phi(a, b) - phi(b, a), where phi(b, a) reads the
    same cost volume with every shift negated. The peak of the cost volume is the global motion, so
    this f can order by the motion and hardly by anything else."""

    def __init__(self, in_channels: int = 6, out_dim: int = 128, base_width: int = 128,
                 slope: float = 0.0, scales=((4, 5), (8, 3))):
        super().__init__()
        if in_channels % 2:
            raise ValueError(f"CorrIm2Vec takes two frames on the channel axis, got {in_channels} channels")
        self.out_dim = out_dim
        self.scales = tuple(scales)
        n = sum((2 * r + 1) ** 2 for _, r in self.scales)
        self.mlp = nn.Sequential(nn.Linear(n, base_width), nn.ReLU(inplace=True),
                                 nn.Linear(base_width, base_width), nn.ReLU(inplace=True),
                                 nn.Linear(base_width, out_dim, bias=False))
        self.min_size = 4 * max(s for s, _ in self.scales)  # a pooled map of at least 4 x 4

    @staticmethod
    def cost_volume(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
        """(N, 1, H, W) x 2 -> (N, (2r+1)^2): mean of a(x) b(x + s) over x for every shift s (zero outside)."""
        n, _, h, w = a.shape
        k = 2 * radius + 1
        windows = F.unfold(F.pad(b, (radius,) * 4), (h, w))  # (N, H*W, k*k): b shifted by each s
        return (a.flatten(1)[:, :, None] * windows).sum(1) / (h * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"CorrIm2Vec needs images of at least {self.min_size} x {self.min_size} pixels, "
                             f"got {tuple(x.shape[-2:])}")
        c = x.shape[1] // 2
        grey = torch.stack([x[:, :c].mean(1), x[:, c:].mean(1)], 1)  # (N, 2, H, W)
        fwd, bwd = [], []
        for s, r in self.scales:
            p = F.avg_pool2d(grey, s)
            p = (p - p.mean((2, 3), keepdim=True)) / (p.std((2, 3), keepdim=True) + 1e-4)
            a, b = p[:, :1], p[:, 1:]
            fwd.append(self.cost_volume(a, b, r))
            bwd.append(self.cost_volume(b, a, r))
        both = self.mlp(torch.cat([torch.cat(fwd, 1), torch.cat(bwd, 1)]))
        ab, ba = both.chunk(2)
        return ab - ba


@F_FUNCS.register("FlowIm2Vec")
class FlowIm2Vec(CorrIm2Vec):
    """Like CorrIm2Vec, but the MLP reads only the soft-argmax of each cost volume: a global motion
    estimate (dx, dy) per scale, in pixels / 8. d(a, b) = phi(m) - phi(-m), so the order HyperCUT learns
    is an odd function of the estimated motion and of nothing else; which function is still learnt
    by HyperCUT's loss (and the crop-consistency term)."""

    def __init__(self, in_channels: int = 6, out_dim: int = 128, base_width: int = 64,
                 slope: float = 0.0, scales=((4, 5), (8, 3)), temperature: float = 0.05):
        super().__init__(in_channels, out_dim, base_width, slope, scales)
        self.temperature = temperature
        self.mlp = nn.Sequential(nn.Linear(2 * len(self.scales), base_width), nn.ReLU(inplace=True),
                                 nn.Linear(base_width, base_width), nn.ReLU(inplace=True),
                                 nn.Linear(base_width, out_dim, bias=False))
        for s, r in self.scales:
            k = torch.arange(-r, r + 1, dtype=torch.float32) * s / 8.0
            dy, dx = torch.meshgrid(k, k, indexing="ij")
            self.register_buffer(f"shifts_{s}", torch.stack([dx.flatten(), dy.flatten()], 1), persistent=False)

    def motion(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2 * scales): soft-argmax (dx, dy) of each scale's cost volume, in pixels / 8."""
        c = x.shape[1] // 2
        grey = torch.stack([x[:, :c].mean(1), x[:, c:].mean(1)], 1)
        out = []
        for s, r in self.scales:
            p = F.avg_pool2d(grey, s)
            p = (p - p.mean((2, 3), keepdim=True)) / (p.std((2, 3), keepdim=True) + 1e-4)
            weights = torch.softmax(self.cost_volume(p[:, :1], p[:, 1:], r) / self.temperature, dim=1)
            out.append(weights @ getattr(self, f"shifts_{s}"))
        return torch.cat(out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"FlowIm2Vec needs images of at least {self.min_size} x {self.min_size} pixels, "
                             f"got {tuple(x.shape[-2:])}")
        m = self.motion(x)
        ab, ba = self.mlp(torch.cat([m, -m])).chunk(2)
        return ab - ba


def random_subcrops(frames: torch.Tensor, size: int, count: int, seed: int) -> torch.Tensor:
    """count random size x size crops of every sequence (B, T, C, H, W) -> (B, count, T, C, size, size);
    positions drawn from `seed` (independent per sequence and crop)."""
    h, w = frames.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"--subcrop_size {size} is larger than the training crops ({h}x{w}): raise --crop_size")
    gen = torch.Generator().manual_seed(seed)
    b = frames.shape[0]
    tops = torch.randint(0, h - size + 1, (b, count), generator=gen).tolist()
    lefts = torch.randint(0, w - size + 1, (b, count), generator=gen).tolist()
    crops = [torch.stack([frames[i, ..., t:t + size, l:l + size] for t, l in zip(tops[i], lefts[i])])
             for i in range(b)]
    return torch.stack(crops)


def crop_consistency_loss(u1: torch.Tensor) -> torch.Tensor:
    """mean over sequences and crop pairs of softplus(-u1_a u1_b); u1 = h(d1) per crop, (B, K), K >= 2."""
    if u1.dim() != 2 or u1.shape[1] < 2:
        raise ValueError(f"expected scores (B, K >= 2), got shape {tuple(u1.shape)}")
    k = u1.shape[1]
    a, b = torch.triu_indices(k, k, offset=1, device=u1.device)
    return F.softplus(-u1[:, a] * u1[:, b]).mean()

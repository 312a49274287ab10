"""The direction probe: can an order be read from the blurry image alone?

For crops of a dataset's sequences, m is the translation of the content from frame 1 to frame N (phase
correlation on grey, Hann-windowed crops, utils.motion). An order source turns m into a target
direction t = s * m with a sign s per crop:

  stored    s = +1: the frames as the metadata loads them (its `order` applied)
  oracle    s = sign(m_x): every crop moves rightwards (the ceiling: a function of the motion alone)
  hypercut  s = sign(h(x1, xN)) of a HyperCUT judged on the same crop (or on the full frames)

One small CNN (shared trunk, one 2-d head per source) regresses the unit vector of each target from the
blurry crop. On held-out crops, agreement = fraction with pred . t > 0. Near 1: the order can be read
from the blur, so a deblurring network trained on it can follow it; near 0.5: it cannot, and such a
network sees what looks like a random order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import FlagError
from utils.motion import phase_correlation


@dataclass
class ProbeConfig:
    crop_size: int | None = 64  # None: full images
    train_crops: int = 8  # random crops per training sequence
    test_crops: int = 4  # per held-out sequence
    min_motion: float = 1.0  # crops whose |m| is below this (pixels) have no measurable motion: dropped
    steps: tuple = (100, 200, 400)  # report agreement after these steps
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    widths: tuple = field(default_factory=lambda: (16, 32, 64))


def crop_positions(h: int, w: int, size: int | None, count: int, gen: torch.Generator) -> list:
    """count (top, left) positions of size x size crops (one (0, 0) full-image crop when size is None)."""
    if size is None:
        return [(0, 0)]
    if size > h or size > w:
        raise FlagError(f"--crop_size {size} is larger than the images ({h}x{w})")
    tops = torch.randint(0, h - size + 1, (count,), generator=gen).tolist()
    lefts = torch.randint(0, w - size + 1, (count,), generator=gen).tolist()
    return list(zip(tops, lefts))


def collect_crops(dataset, cfg: ProbeConfig, count: int, seed: int, progress=None) -> dict:
    """Crops of every sequence of a Blur2VidDataset (no augmentation): blur (K, 3, s, s), first and
    last frames (K, 3, s, s), m (K, 2) and the sequence index of each crop; crops without measurable
    motion are dropped. Full images (crop_size None) must all have one size."""
    gen = torch.Generator().manual_seed(seed)
    blurs, firsts, lasts, seqs = [], [], [], []
    items = range(len(dataset))
    for i in (progress(items) if progress else items):
        item = dataset[i]
        blur, frames = item["blur"], item["frames"]
        h, w = blur.shape[-2:]
        s = cfg.crop_size
        for top, left in crop_positions(h, w, s, count, gen):
            win = (slice(None), slice(top, top + (s or h)), slice(left, left + (s or w)))
            blurs.append(blur[win])
            firsts.append(frames[0][win])
            lasts.append(frames[-1][win])
            seqs.append(i)
    if len({tuple(b.shape) for b in blurs}) > 1:
        raise FlagError("the images differ in size: give --crop_size to probe on crops")
    out = {"blur": torch.stack(blurs), "first": torch.stack(firsts), "last": torch.stack(lasts),
           "seq": torch.tensor(seqs)}
    m, _ = phase_correlation(out["first"], out["last"])
    keep = m.norm(dim=1) >= cfg.min_motion
    out = {k: v[keep] for k, v in out.items()}
    out["m"] = m[keep]
    out["dropped"] = int((~keep).sum())
    return out


class ProbeNet(nn.Module):
    """Six 3x3 convs (each width a stride-2 conv then a stride-1 conv: 1/8 resolution at the end), ReLU,
    a global mean and one 2-d head per target. Blur of 8-22 pixels is plain at half resolution, so the
    first stride 2 costs the probe nothing and makes it cheap enough for a CPU."""

    def __init__(self, num_targets: int, widths=(16, 32, 64)):
        super().__init__()
        layers, c_in = [], 3
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True)]
            c_in = c
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 2 * num_targets)
        self.num_targets = num_targets

    def forward(self, blur: torch.Tensor) -> torch.Tensor:
        """Blurry RGB [0, 1] (B, 3, H, W) -> predicted directions (B, num_targets, 2)."""
        return self.head(self.trunk(blur - 0.5).mean((2, 3))).view(-1, self.num_targets, 2)


def agreement(pred: torch.Tensor, targets: torch.Tensor) -> list:
    """Per target, the fraction of crops with pred . t > 0; pred and targets (K, T, 2)."""
    return ((pred * targets).sum(-1) > 0).float().mean(0).tolist()


def run_probe(train: dict, test: dict, train_targets: torch.Tensor, test_targets: torch.Tensor,
              cfg: ProbeConfig, device, progress=None) -> dict:
    """Train the probe on (train["blur"], unit targets (K, T, 2)) and return
    {"steps": [...], "agreement": [[per target] per reported step], "train_agreement": [...]}."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = ProbeNet(train_targets.shape[1], cfg.widths).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    unit = F.normalize(train_targets, dim=-1)
    report = sorted(set(int(s) for s in cfg.steps))
    result = {"steps": [], "agreement": [], "train_agreement": []}
    bar = progress(total=report[-1]) if progress else None
    for step in range(1, report[-1] + 1):
        idx = torch.randint(0, len(unit), (cfg.batch_size,), generator=gen)
        pred = net(train["blur"][idx].to(device))
        loss = F.mse_loss(pred, unit[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
        if step in report:
            result["steps"].append(step)
            result["agreement"].append(agreement(predict(net, test["blur"], device), test_targets))
            result["train_agreement"].append(agreement(predict(net, train["blur"][:512], device),
                                                       train_targets[:512]))
    if bar is not None:
        bar.close()
    return result


@torch.no_grad()
def predict(net: ProbeNet, blur: torch.Tensor, device, batch_size: int = 256) -> torch.Tensor:
    was = net.training
    net.eval()
    out = torch.cat([net(blur[k:k + batch_size].to(device)).cpu() for k in range(0, len(blur), batch_size)])
    net.train(was)
    return out


def half_plane_fit(signs: torch.Tensor, m: torch.Tensor, num_angles: int = 360) -> tuple[float, float]:
    """How well an order is a rule of the motion alone: the best agreement, over directions a, of the
    order's signs (K,) with sign(m . a), and that direction in degrees (x right, y down)."""
    angles = torch.arange(num_angles, dtype=torch.float64) * (2 * math.pi / num_angles)
    a = torch.stack([angles.cos(), angles.sin()], 1)  # (A, 2)
    rule = (m.double() @ a.t()) >= 0  # (K, A)
    agree = (rule == (signs > 0)[:, None]).double().mean(0)
    best = int(agree.argmax())
    return float(agree[best]), float(angles[best] * 180 / math.pi)


def crop_agreement(signs: torch.Tensor, seq: torch.Tensor) -> float:
    """Mean over sequences with several crops of the share of its crops on the majority side (1: every
    crop of a sequence is ordered alike)."""
    shares = []
    for i in seq.unique():
        s = signs[seq == i] > 0
        if len(s) > 1:
            p = s.float().mean()
            shares.append(float(torch.maximum(p, 1 - p)))
    return sum(shares) / len(shares) if shares else float("nan")

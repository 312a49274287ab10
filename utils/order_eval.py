"""Which order does a deblurring network's prediction follow, and does HyperCUT judge it honestly?

For each held-out sequence (ground truth in its loaded direction, prediction of the network):

  direction  +1 if the predicted outer frames (1 and N) are closer (Charbonnier) to the ground truth's
             than to its reverse's, -1 otherwise
  oracle     +1 if the ground truth moves rightwards (phase correlation of frames 1 and N: m_x >= 0)
  hc_gt      sign of h(x1, xN) of a HyperCUT on the ground truth
  hc_pred    sign of h(p1, pN) on the prediction

Figures (fractions of sequences): follows_oracle (direction == oracle), follows_hypercut (direction ==
hc_gt: the prediction is in HyperCUT's canonical order), pred_positive (hc_pred > 0: what the
regulariser R asks for) and hc_honest (hc_pred == direction * hc_gt: HyperCUT judges the prediction as
it judges the ground truth in the same direction). R is gamed when pred_positive is high while
follows_hypercut is not: the prediction sits on the positive side without being in canonical order.
"""
from __future__ import annotations

import torch

from utils.motion import phase_correlation


def _outer_distance(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Charbonnier distance of the outer frames, per sequence; (B, T, C, H, W) -> (B,)."""
    idx = [0, pred.shape[1] - 1]
    return torch.sqrt((pred[:, idx] - gt[:, idx]) ** 2 + 1e-6).flatten(1).mean(1)


@torch.no_grad()
def sequence_signs(pred: torch.Tensor, gt: torch.Tensor, hypercut=None) -> dict:
    """The per-sequence signs above (each a (B,) float tensor of +-1) for RGB [0, 1] (B, T, 3, H, W)."""
    pred = pred.float().clamp(0, 1)
    gt = gt.float()
    direction = torch.where(_outer_distance(pred, gt) <= _outer_distance(pred, gt.flip(1)), 1.0, -1.0)
    m, _ = phase_correlation(gt[:, 0].cpu(), gt[:, -1].cpu())
    out = {"direction": direction.cpu(), "oracle": torch.where(m[:, 0] >= 0, 1.0, -1.0)}
    if hypercut is not None:
        n = gt.shape[1]
        for name, seq in (("hc_gt", gt), ("hc_pred", pred)):
            d = hypercut.embed_pairs(hypercut.to_network(seq), [(0, n - 1)])
            out[name] = torch.where(hypercut.score(d)[:, 0] >= 0, 1.0, -1.0).cpu()
    return out


def summarise(signs: dict) -> dict:
    """Fractions from concatenated signs (see the module docstring)."""
    d = signs["direction"]
    out = {"num_sequences": int(d.numel()), "follows_oracle": float((d == signs["oracle"]).float().mean())}
    if "hc_gt" in signs:
        out["follows_hypercut"] = float((d == signs["hc_gt"]).float().mean())
        out["pred_positive"] = float((signs["hc_pred"] > 0).float().mean())
        out["hc_honest"] = float((signs["hc_pred"] == d * signs["hc_gt"]).float().mean())
    return out


@torch.no_grad()
def order_figures(model, loader, device, hypercuts: dict | None = None) -> dict:
    """{name: summarise()} over every sequence of an eval loader (make_eval_loader: lists of batches),
    one entry per HyperCUT of {name: model} (one entry "none" without any); the deblurring network runs
    once per batch."""
    model.eval()
    hypercuts = hypercuts or {"none": None}
    parts: dict = {name: {} for name in hypercuts}
    for batches in loader:
        for batch in batches:
            gt = batch["frames"].to(device)
            pred = model(batch["blur"].to(device))["frames"].float()
            for name, hc in hypercuts.items():
                for k, v in sequence_signs(pred, gt, hc).items():
                    parts[name].setdefault(k, []).append(v)
    return {name: summarise({k: torch.cat(v) for k, v in p.items()}) for name, p in parts.items()}


class BlurAsFrames(torch.nn.Module):
    """The do-nothing baseline: every predicted frame is the blurry image itself."""

    def __init__(self, num_frames: int = 7):
        super().__init__()
        self.num_frames = num_frames

    def forward(self, blur: torch.Tensor, center: torch.Tensor | None = None) -> dict:
        """The backbone contract (models/__init__.py): every frame is the blurry image."""
        return {"frames": blur.unsqueeze(1).expand(-1, self.num_frames, -1, -1, -1), "center": blur}


def outer_frames(values) -> float:
    """Mean of a per-frame figure over the first and last frame (frames 1 and 7): where the order matters."""
    return (values[0] + values[-1]) / 2


def _baseline(loader, device, num_frames: int, predict=None, desc: str = "baseline") -> dict:
    from utils.evaluation import evaluate
    from utils.metrics.sequence import SequenceMetrics
    metrics = SequenceMetrics(lpips=None, mode="pair")
    evaluate(BlurAsFrames(num_frames), loader, device, metrics, desc=desc, predict=predict)
    out = {}
    for name in ("pPSNR", "pSSIM"):
        out[name] = metrics.per_frame(name)
        out[f"{name}_mean"] = metrics.mean(name)
    return out


def blur_baseline(loader, device, num_frames: int = 7) -> dict:
    """Per-frame pPSNR / pSSIM (p_mode pair) of BlurAsFrames on an eval loader, with their means."""
    return _baseline(loader, device, num_frames, desc="blur baseline")


def pair_mean_baseline(loader, device, num_frames: int = 7) -> dict:
    """The same figures for the mean of each symmetric pair of ground-truth frames, (x_k + x_{N+1-k}) / 2
    as frame k and N+1-k (the middle frame exact): the least-squares answer of a network that knows both
    frames of a pair but not which is which, i.e. what training on a random order converges to at best
    under an L2 loss (an L1 loss leaves it anywhere between the two). A canonical order can only pay
    where networks score above this on the outer frames."""
    return _baseline(loader, device, num_frames, predict=lambda net, blur, gt: (gt + gt.flip(1)) / 2,
                     desc="pair-mean baseline")


def shift_images(images: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Move the content of images (B, C, H, W) by displacement (B, 2) pixels [dx, dy] (x right, y down):
    out(x) = images(x - d), bilinear, borders repeated."""
    b, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=images.dtype, device=images.device),
                            torch.arange(w, dtype=images.dtype, device=images.device), indexing="ij")
    d = displacement.to(images)
    gx = (xs[None] - d[:, 0, None, None] + 0.5) / w * 2 - 1
    gy = (ys[None] - d[:, 1, None, None] + 0.5) / h * 2 - 1
    return torch.nn.functional.grid_sample(images, torch.stack([gx, gy], -1), mode="bilinear",
                                           padding_mode="border", align_corners=False)


@torch.no_grad()
def motion_baselines(dataset, device, batch_size: int = 16) -> dict:
    """References that know each sequence's recorded motion (Blur2VidDataset.motion: frame 1 -> N in the
    order the entry is loaded): pPSNR / pSSIM per frame of
      oracle_warp   the blurry image moved along the motion to each frame's time (no deblurring at all:
                    what reading the motion alone buys);
      centre_warp   the true middle frame moved the same way (a perfect centre, then the motion: close to
                    the ceiling of a network that predicts the outer frames from its centre).
    The middle frame of oracle_warp is the blur, of centre_warp the truth. They bound what an order can buy:
    a network trained on an order it can read may approach them, one trained on a random order may not."""
    from utils.metrics.sequence import SequenceMetrics
    n = dataset.frame_per_seq
    # time of each loaded frame relative to the middle, as a fraction of the frame 1 -> N span
    times = torch.tensor([(f - (n + 1) / 2) / (n - 1) for f in dataset.target_frames])
    metrics = {name: SequenceMetrics(lpips=None, mode="pair") for name in ("oracle_warp", "centre_warp")}
    middle = len(times) // 2
    for start in range(0, len(dataset), batch_size):
        idx = range(start, min(start + batch_size, len(dataset)))
        items = [dataset[i] for i in idx]
        motion = torch.tensor([dataset.motion(i) for i in idx])
        blur = torch.stack([it["blur"] for it in items]).to(device)
        gt = torch.stack([it["frames"] for it in items]).to(device)
        for name, source in (("oracle_warp", blur), ("centre_warp", gt[:, middle])):
            pred = torch.stack([shift_images(source, motion * t) for t in times.tolist()], 1)
            metrics[name].update(pred, gt)
    out = {}
    for name, m in metrics.items():
        out[name] = {}
        for fig in ("pPSNR", "pSSIM"):
            out[name][fig] = m.per_frame(fig)
            out[name][f"{fig}_mean"] = m.mean(fig)
    return out

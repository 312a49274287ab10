"""Speed of the evaluation metrics: SSIM three ways, and a whole SequenceMetrics update.

  skimage   scikit-image's structural_similarity, one image at a time (what the reference's users run;
            Gaussian weights, sigma 1.5, data range 255), on HWC float64 arrays
  conv2d    our SSIM as first written: reflect gather + grouped float64 F.conv2d (kept here as the
            baseline; torch has no fast float64 convolution on CPU)
  ours      utils.metrics.image.ssim: batched float32 maps of cache-sized chunks, filtered with blocked banded
            matmuls (float64 input: float64, filtered on the CPU with scipy's correlate1d)

All three give the same values (to 1e-12 between torch ways, to 1e-8 against scikit-image; checked
each run). `update` is SequenceMetrics(mode="pair", no LPIPS).update on the same sequences: PSNR and
SSIM in both directions, the per-pair p-metrics. Figures are process CPU seconds (robust to other
jobs on the machine), best of --repeats, with --threads torch threads.

  python -m lab.benchmarks.metrics_speed                          # 8 x 7 frames of 128x128 and 1 x 7 of 720x1280
  python -m lab.benchmarks.metrics_speed --threads 2 --no_write
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from lab.benchmarks.machine import cpu_name
from utils.cli import ArgumentParser
from utils.metrics import image as M
from utils.metrics.sequence import SequenceMetrics

REPO = Path(__file__).resolve().parents[2]

RESULTS = REPO / "lab" / "benchmarks" / "results" / "metrics_speed.md"


def ssim_conv2d(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The previous implementation: grouped float64 conv2d after a reflect gather."""
    lead, (c, h, w) = pred.shape[:-3], pred.shape[-3:]
    r = M._ssim_radius()
    x = M._to_255(pred.reshape(-1, c, h, w), torch.float64).reshape(-1, 1, h, w)
    y = M._to_255(target.reshape(-1, c, h, w), torch.float64).reshape(-1, 1, h, w)
    ih, iw = M._reflect_index(h, r, x.device), M._reflect_index(w, r, x.device)
    x, y = x[:, :, ih][:, :, :, iw], y[:, :, ih][:, :, :, iw]
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    k = M._gaussian_kernel1d(r, torch.float64, x.device)
    maps = F.conv2d(maps, k.view(1, 1, 1, -1).repeat(5, 1, 1, 1), groups=5)
    maps = F.conv2d(maps, k.view(1, 1, -1, 1).repeat(5, 1, 1, 1), groups=5)
    ux, uy, uxx, uyy, uxy = maps.unbind(1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (M._SSIM_K1 * 255) ** 2, (M._SSIM_K2 * 255) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    s = s[:, r:h - r, r:w - r]
    return s.reshape(-1, c, (h - 2 * r) * (w - 2 * r)).mean(-1).mean(-1).reshape(lead).float()


def ssim_skimage(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    c, h, w = pred.shape[-3:]
    a = (pred.reshape(-1, c, h, w).double().clamp(0, 1) * 255).permute(0, 2, 3, 1).numpy()
    b = (target.reshape(-1, c, h, w).double().clamp(0, 1) * 255).permute(0, 2, 3, 1).numpy()
    vals = [structural_similarity(a[i], b[i], data_range=255, channel_axis=-1, gaussian_weights=True,
                                  sigma=1.5, use_sample_covariance=False) for i in range(a.shape[0])]
    return torch.tensor(vals, dtype=torch.float32).reshape(pred.shape[:-3])


def cpu_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return best, out


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Speed of the evaluation metrics: SSIM three ways (equal values) and a whole SequenceMetrics "
                    "update, in process CPU seconds; appends to lab/benchmarks/results/metrics_speed.md.",
        epilog="example:\n  python -m lab.benchmarks.metrics_speed --threads 2 --no_write")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the best counts")
    p.add_argument("--no_write", action="store_true", help=f"do not update {RESULTS.relative_to(REPO)}")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    for b, h, w in [(8, 128, 128), (1, 720, 1280)]:
        gt = torch.rand(b, 7, 3, h, w, generator=g)
        pred = (gt + 0.1 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
        t_ours, v_ours = cpu_time(lambda: M.ssim(pred, gt), args.repeats)
        t_conv, v_conv = cpu_time(lambda: ssim_conv2d(pred, gt), args.repeats)
        t_sk, v_sk = cpu_time(lambda: ssim_skimage(pred, gt), 1)
        assert torch.allclose(v_ours.double(), v_conv.double(), atol=1e-6), "conv2d and ours disagree"
        assert torch.allclose(v_ours.double(), v_sk.double(), atol=1e-6), "skimage and ours disagree"
        t_upd, _ = cpu_time(lambda: SequenceMetrics(lpips=None, mode="pair").update(pred, gt), args.repeats)
        rows.append((f"{b} x 7 x {h}x{w}", t_sk, t_conv, t_ours, t_upd))

    head = "| frames | skimage (s) | conv2d (s) | ours (s) | ours vs skimage | ours vs conv2d | update, pair mode (s) |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name, t_sk, t_conv, t_ours, t_upd in rows:
        lines.append(f"| {name} | {t_sk:.2f} | {t_conv:.2f} | {t_ours:.2f} | {t_sk / t_ours:.1f}x | "
                     f"{t_conv / t_ours:.1f}x | {t_upd:.2f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        cpu = cpu_name()
        cmd = "python -m lab.benchmarks." + Path(__file__).stem + (" " + shlex.join(argv or sys.argv[1:])).rstrip()
        section = (f"## {time.strftime('%Y-%m-%d')}\n\n- machine: {cpu}, torch {torch.__version__}, "
                   f"{args.threads} torch thread(s); process CPU seconds, best of {args.repeats} "
                   f"(skimage: 1 run)\n- command: `{cmd}`\n\n{table}\n")
        old = RESULTS.read_text() if RESULTS.exists() else (
            "# Metric speed\n\nFrom `lab/benchmarks/metrics_speed.py`: SSIM per image three ways (equal values), "
            "and a whole pair-mode SequenceMetrics update (PSNR and SSIM both directions, no LPIPS).\n")
        RESULTS.write_text(old.rstrip("\n") + "\n\n" + section)
    return 0


if __name__ == "__main__":
    sys.exit(main())

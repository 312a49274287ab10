"""Figures for reports: animated GIFs, labelled contact sheets and per-frame plots (Pillow, matplotlib).
Every file is written atomically (in memory, then a temporary file and a rename)."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from utils.checkpoint import atomic_write_bytes
from utils.images import to_uint8


def _pil(image: torch.Tensor):
    from PIL import Image
    img = image if image.dtype == torch.uint8 else to_uint8(image.detach().float().cpu())
    return Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())


def save_gif(frames, path, frame_ms: int = 160, bounce: bool = True) -> Path:
    """An animated GIF of RGB [0, 1] frames (T, 3, H, W) (or a list of (3, H, W)), looping forever;
    bounce plays the frames forwards then backwards, which shows motion without a jump."""
    frames = list(frames)
    if not frames:
        raise ValueError("no frames for the GIF")
    if bounce and len(frames) > 2:
        frames = frames + frames[-2:0:-1]
    images = [_pil(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0,
                   optimize=True)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _save_figure(fig, path) -> Path:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def contact_sheet(rows, path, title: str | None = None, column_labels=None, scale: float = 1.0) -> Path:
    """rows: [(label, image (3, H, W) RGB [0, 1])], one labelled row each (e.g. make_strip outputs of
    several methods for one sequence), stacked into one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not rows:
        raise ValueError("no rows for the contact sheet")
    h, w = rows[0][1].shape[-2:]
    dpi = 100
    fig, axes = plt.subplots(len(rows), 1, squeeze=False, dpi=dpi,
                             figsize=(scale * w / dpi + 1.6, scale * len(rows) * (h / dpi + 0.12) + (0.4 if title else 0)))
    for ax, (label, image) in zip(axes[:, 0], rows):
        ax.imshow(image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if column_labels:
        axes[0, 0].set_title(column_labels, fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save_figure(fig, path)


def per_frame_plot(series: dict, path, ylabel: str = "pPSNR (dB)", title: str | None = None) -> Path:
    """One line per entry of {label: [value per frame]} against frames 1..T."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for label, values in series.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
    ax.set_xlabel("frame")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    # below the axes: with many runs, a legend inside covers the outer frames, the ones that matter most
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    return _save_figure(fig, path)


def curves_plot(series: dict, path, xlabel: str, ylabel: str, title: str | None = None) -> Path:
    """One line per entry of {label: (xs, ys)}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, lw=1.2, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return _save_figure(fig, path)


def probe_plot(steps, agreements: dict, path, title: str | None = None) -> Path:
    """Held-out agreement of the direction probe per order source, against training steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.6, 3.4), dpi=100)
    for label, values in agreements.items():
        ax.plot(steps, values, marker="o", markersize=3, label=label)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0.3, 1.02)
    ax.set_xlabel("probe training steps")
    ax.set_ylabel("held-out agreement")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return _save_figure(fig, path)


@torch.no_grad()
def method_figures(models: dict, dataset, indices, out_dir, device, prefix: str = "sequence",
                   scale: float = 1.0) -> list:
    """For each dataset index: a contact sheet (one row per method: blur | predicted frames | ground
    truth) as OUT/<prefix>_<index>.png and a GIF of the frames side by side (ground truth, then each
    method in the order given) as OUT/<prefix>_<index>.gif. models: {label: backbone in eval mode}."""
    from utils.images import make_strip
    out_dir = Path(out_dir)
    written = []
    for index in indices:
        item = dataset[index]
        blur, gt = item["blur"][None].to(device), item["frames"][None].to(device)
        preds = {label: model(blur)["frames"].float().clamp(0, 1) for label, model in models.items()}
        rows = [(label, make_strip(blur, pred, gt)) for label, pred in preds.items()]
        written.append(contact_sheet(rows, out_dir / f"{prefix}_{index}.png", scale=scale,
                                     title=f"test sequence {item['id']}: blur | predicted frames 1-7 | ground truth"))
        gap = torch.ones(gt.shape[2], gt.shape[3], 2, device=device)
        frames = []
        for t in range(gt.shape[1]):
            parts = [gt[0, t]] + [pred[0, t] for pred in preds.values()]
            frames.append(torch.cat([x for p in parts for x in (p, gap)][:-1], dim=-1).cpu())
        written.append(save_gif(frames, out_dir / f"{prefix}_{index}.gif"))
    return written

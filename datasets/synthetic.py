"""The embedded dataset: blurry images and sharp frames rendered from scikit-image's bundled photographs.

Each sequence moves a crop window along a smooth random trajectory (translation with a little
curvature, rotation and zoom) over a photograph, sometimes with a foreground patch that moves on its
own. The exposure is split into T frame slots with `subframes` sub-frames each; the blurry image is
the mean of all sub-frames in linear light (sRGB curve undone, averaged, re-applied) and sharp frame
k is the sub-frame at the centre of slot k. Each entry records the camera's `motion` [dx, dy]: the
image displacement (pixels) of the content at the centre from frame 1 to frame N, foreground ignored
(the oracle order of generate_order.py --oracle is based on it). Splits are by photograph, so no photo is in two splits.
Everything is drawn from (seed, split, index): deterministic for a seed, whatever the counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from utils.errors import FlagError

# scikit-image colour photographs that ship inside the package (no download).
DEFAULT_SPLITS = {
    "train": ("astronaut", "coffee", "rocket", "hubble_deep_field", "retina"),
    "val": ("immunohistochemistry",),
    "test": ("chelsea", "stereo_motorcycle"),
}


def load_photo(name: str) -> torch.Tensor:
    """A bundled scikit-image colour photo as RGB float [0, 1], (3, H, W)."""
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise FlagError(f"scikit-image has no bundled image named {name!r}")
    img = loader()
    if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity): take the left view
        img = img[0]
    if img.ndim != 3 or img.shape[2] < 3:
        raise FlagError(f"scikit-image image {name!r} is not a colour photograph")
    return torch.from_numpy(img[..., :3].copy()).permute(2, 0, 1).float().div(255.0)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def linear_light_mean(frames: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Average sRGB images in linear light."""
    return linear_to_srgb(srgb_to_linear(frames).mean(dim))


@dataclass
class SyntheticConfig:
    size: int = 128  # output images are size x size
    counts: dict = field(default_factory=lambda: {"train": 360, "val": 40, "test": 100})
    frames: int = 7
    subframes: int = 7  # per frame slot; odd so that each slot has a centre sub-frame
    shift: tuple = (8.0, 22.0)  # camera travel over the exposure, output pixels
    max_rotation: float = 3.0  # degrees over the exposure
    max_zoom: float = 0.06  # relative scale change over the exposure
    foreground_p: float = 0.4
    foreground_shift: tuple = (8.0, 26.0)
    seed: int = 0
    splits: dict = field(default_factory=lambda: dict(DEFAULT_SPLITS))

    def __post_init__(self):
        if self.subframes < 5 or self.subframes % 2 == 0:
            raise FlagError(f"subframes per slot must be odd and >= 5, got {self.subframes}")
        if self.size < 32:
            raise FlagError(f"size must be at least 32, got {self.size}")
        if self.frames < 2:
            raise FlagError("frames must be at least 2")
        lo, hi = self.shift
        if not (0 <= lo <= hi):
            raise FlagError(f"camera travel must be 0 <= MIN <= MAX pixels, got {lo:g} {hi:g} (--travel MIN MAX)")
        photos = [p for names in self.splits.values() for p in names]
        if len(photos) != len(set(photos)):
            raise FlagError("a photograph appears in two splits")


def _seed(*parts) -> int:
    from datasets.blur2vid import _seed_for
    return _seed_for("synthetic", *parts)


def _rotation(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _sample(photo: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of photo (3, Hp, Wp) at pixel coordinates xy (S, H, W, 2) -> (S, 3, H, W)."""
    hp, wp = photo.shape[-2:]
    grid = torch.stack([(xy[..., 0] + 0.5) / wp * 2 - 1, (xy[..., 1] + 0.5) / hp * 2 - 1], -1)
    src = photo.unsqueeze(0).expand(xy.shape[0], -1, -1, -1)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def prepare_photo(photo: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (antialiased) so the shorter side is 2.5x the output size: windows then sample the photo
    at about one photo pixel per output pixel, without aliasing."""
    h, w = photo.shape[-2:]
    scale = 2.5 * size / min(h, w)
    return TF.resize(photo, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)


def _trajectory(gen, times, travel, max_rot, max_zoom, curve):
    """Offsets (S, 2), angles (S,) and scales (S,) of a smooth path; times in [-0.5, 0.5]."""
    def u(a, b):
        return a + (b - a) * torch.rand((), generator=gen)
    direction = u(0, 2 * math.pi)
    dist = u(*travel)
    d = torch.stack([torch.cos(direction), torch.sin(direction)]) * dist
    perp = torch.stack([-d[1], d[0]]) / dist
    bend = u(-curve, curve) * dist
    offset = times[:, None] * d + ((times ** 2 - 1.0 / 12)[:, None] * bend) * perp
    angle = u(-max_rot, max_rot) * math.pi / 180 * times
    scale = torch.exp(u(-max_zoom, max_zoom) * times)
    return offset, angle, scale


def render_sequence(photo: torch.Tensor, cfg: SyntheticConfig, gen: torch.Generator) -> dict:
    """Render one sequence from a prepared photo. Returns subframes (S, 3, H, W) with S = frames *
    subframes, sharp (frames, 3, H, W) and blur (3, H, W), all sRGB float in [0, 1]."""
    size = cfg.size
    n = cfg.frames * cfg.subframes
    times = (torch.arange(n, dtype=torch.float32) + 0.5) / n - 0.5
    hp, wp = photo.shape[-2:]

    def u(a, b):
        return a + (b - a) * torch.rand((), generator=gen).item()

    lin = torch.arange(size, dtype=torch.float32) - size / 2 + 0.5
    grid_xy = torch.stack(torch.meshgrid(lin, lin, indexing="xy"), -1)  # (H, W, 2): x, y offsets

    offset, angle, scale = _trajectory(gen, times, cfg.shift, cfg.max_rotation, cfg.max_zoom, curve=0.3)
    base_scale = u(0.85, 1.15)
    reach = size * 0.75 * base_scale + cfg.shift[1]
    cx = u(min(reach, wp / 2), max(wp - reach, wp / 2))
    cy = u(min(reach, hp / 2), max(hp - reach, hp / 2))
    rot = _rotation(angle) * (scale * base_scale)[:, None, None]  # (S, 2, 2)
    xy = torch.einsum("sij,hwj->shwi", rot, grid_xy) + (torch.tensor([cx, cy]) + offset)[:, None, None, :]
    frames = _sample(photo, xy)

    if torch.rand((), generator=gen).item() < cfg.foreground_p:
        # A textured elliptical patch cut from elsewhere in the same photo, moving on its own path.
        fg_offset, fg_angle, fg_scale = _trajectory(gen, times, cfg.foreground_shift, 10.0, 0.1, curve=0.5)
        centre = torch.tensor([u(-0.2, 0.2) * size, u(-0.2, 0.2) * size])
        radii = torch.tensor([u(0.15, 0.3) * size, u(0.15, 0.3) * size])
        src = torch.tensor([u(reach, max(reach, wp - reach)), u(reach, max(reach, hp - reach))])
        pos = centre + fg_offset  # (S, 2) patch centre in output coordinates
        local = grid_xy[None] - pos[:, None, None, :]  # (S, H, W, 2)
        inv = _rotation(-fg_angle) / fg_scale[:, None, None]
        local = torch.einsum("sij,shwj->shwi", inv, local)
        patch = _sample(photo, local * base_scale + src)
        r = ((local / radii) ** 2).sum(-1).sqrt()
        mask = (1 - r).mul(size / 4).clamp(0, 1)[:, None]  # soft edge about two pixels wide
        frames = frames * (1 - mask) + patch * mask

    frames = frames.clamp(0, 1)
    centre_idx = torch.arange(cfg.frames) * cfg.subframes + cfg.subframes // 2
    first, last = centre_idx[0].item(), centre_idx[-1].item()
    # The camera's motion as seen in the image: where the photo point at the centre of frame 1 is in
    # frame N (output pixels; x right, y down). Content moves against the window: rot_N^-1 (off_1 - off_N).
    motion = torch.linalg.solve(rot[last], offset[first] - offset[last])
    return {"subframes": frames, "sharp": frames[centre_idx], "blur": linear_light_mean(frames, 0),
            "motion": motion}


_PHOTOS: dict = {}


def _render_job(job):
    """(split, i, photo name, cfg) -> uint8 blur, uint8 sharp frames and the motion of one sequence.
    Photos are prepared once per process."""
    split, i, name, cfg = job
    key = (name, cfg.size)
    if key not in _PHOTOS:
        _PHOTOS[key] = prepare_photo(load_photo(name), cfg.size)
    from datasets.transforms import to_uint8
    gen = torch.Generator().manual_seed(_seed(cfg.seed, split, i))
    out = render_sequence(_PHOTOS[key], cfg, gen)
    return to_uint8(out["blur"]), torch.stack([to_uint8(f) for f in out["sharp"]]), out["motion"].tolist()


def _init_worker():
    torch.set_num_threads(1)


def generate(cfg: SyntheticConfig, writer, progress: bool = True, workers: int = 1) -> dict:
    """Render every split into a DatasetWriter (in `workers` processes; the output does not depend on
    their number). Returns the metadata dict (without "data")."""
    from tqdm import tqdm

    jobs = []
    for split in ("train", "val", "test"):
        names = cfg.splits[split]
        count = cfg.counts.get(split, 0)
        if count and not names:
            raise FlagError(f"split {split} has {count} sequences but no photographs")
        jobs += [(split, i, names[i % len(names)] if names else None, cfg) for i in range(count)]
    if workers > 1:
        import multiprocessing
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker)
        results = pool.imap(_render_job, jobs, chunksize=4)
    else:
        pool, results = None, map(_render_job, jobs)
    try:
        for seq, ((split, _, name, _), (blur, sharp, motion)) in enumerate(
                zip(jobs, tqdm(results, total=len(jobs), desc="rendering", unit="seq", disable=not progress))):
            folder = f"{seq:06d}"
            writer.add_sequence(f"{folder}/0000", split, folder, blur, sharp,
                                extra={"source": name, "motion": [round(v, 3) for v in motion]})
    finally:
        if pool is not None:
            pool.terminate()
    return {"name": "Synthetic", "frame_per_seq": cfg.frames,
            "generator": {"kind": "synthetic", "seed": cfg.seed, "size": cfg.size,
                          "subframes_per_frame": cfg.subframes,
                          "travel": [float(v) for v in cfg.shift], "splits": {k: list(v) for k, v in cfg.splits.items()}}}

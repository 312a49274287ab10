"""The embedded datasets: blurry images and sharp frames rendered on the fly, nothing downloaded.

Two scenes:
* `photos`: a crop window over one of scikit-image's bundled photographs. Splits are by photograph,
  so no photo is in two splits.
* `deadleaves`: every sequence its own procedural texture, the dead-leaves model (opaque discs of
  random colour with power-law radii, p(r) ~ r^-3, stacked until the canvas is covered): edges at
  every scale and unlimited variety, so a network cannot memorise its training images.
Two camera motions:
* `trajectory`: a smooth random path (translation with a little curvature, rotation and zoom),
  sometimes with a foreground patch that moves on its own;
* `translation`: one global translation per sequence, direction uniform, length drawn from --travel.
The exposure is split into T frame slots with `subframes` sub-frames each; the blurry image is the
mean of all sub-frames in linear light (sRGB curve undone, averaged, re-applied) and sharp frame k is
the sub-frame at the centre of slot k. Dead-leaves canvases are rendered at `SUPERSAMPLE` times the
output resolution and every sub-frame is box-filtered down from it, so edges are antialiased and a
sub-pixel shift moves them by that much. Each entry records the camera's `motion` [dx, dy]: the image
displacement (pixels) of the content at the centre from frame 1 to frame N, foreground ignored (the
oracle order of generate_order.py --oracle is based on it). Everything is drawn from (seed, split,
index): deterministic for a seed, whatever the counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from utils.errors import FlagError
from utils.seeds import stable_seed

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


SCENES = ("photos", "deadleaves")
MOTIONS = ("trajectory", "translation")
SUPERSAMPLE = 4  # dead-leaves canvases: rendered at 4x, sub-frames box-filtered down


@dataclass
class SyntheticConfig:
    size: int = 128  # output images are size x size
    scene: str = "photos"
    motion: str = "trajectory"
    radii: tuple = (1.5, 0.5)  # dead leaves: smallest disc radius (pixels), largest (fraction of size)
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
        if self.scene not in SCENES:
            raise FlagError(f"--scene {self.scene!r}: use one of {', '.join(SCENES)}")
        if self.motion not in MOTIONS:
            raise FlagError(f"--motion {self.motion!r}: use one of {', '.join(MOTIONS)}")
        rmin, rmax = self.radii
        if not (0.5 <= rmin <= rmax * self.size and 0 < rmax <= 1):
            raise FlagError(f"dead-leaves radii: need 0.5 <= MIN pixels <= MAX * size and 0 < MAX <= 1, "
                            f"got {rmin:g} {rmax:g} (--radii MIN MAX)")
        if self.frames < 2:
            raise FlagError("frames must be at least 2")
        lo, hi = self.shift
        if not (0 <= lo <= hi):
            raise FlagError(f"camera travel must be 0 <= MIN <= MAX pixels, got {lo:g} {hi:g} (--travel MIN MAX)")
        photos = [p for names in self.splits.values() for p in names]
        if len(photos) != len(set(photos)):
            raise FlagError("a photograph appears in two splits")


def _seed(*parts) -> int:
    return stable_seed("synthetic", *parts)


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


def dead_leaves(side: int, gen: torch.Generator, radii: tuple, q: int = SUPERSAMPLE) -> torch.Tensor:
    """A dead-leaves texture, side x side output pixels rendered at q samples per pixel: (3, side*q, side*q)
    RGB in [0, 1]. Discs of uniform random colour, radius r in [radii[0], radii[1]] pixels with density
    ~ r^-3 (scale invariance), centres uniform over the canvas and its margin, dropped front to back until
    every sample is covered; a random background colour fills whatever is left after `MAX_LEAVES`."""
    n = side * q
    rmin, rmax = radii
    a, b = rmin ** -2, rmax ** -2
    canvas = torch.empty(3, n, n)
    canvas[:] = torch.rand(3, 1, 1, generator=gen)
    covered = torch.zeros(n, n, dtype=torch.bool)
    pos = torch.arange(n, dtype=torch.float32) + 0.5  # sample centres, in canvas samples
    for _ in range(MAX_LEAVES // 64):
        draws = torch.rand(64, 6, generator=gen)
        r = (a - draws[:, 0] * (a - b)).rsqrt() * q  # inverse CDF of p(r) ~ r^-3
        cx = (draws[:, 1] * (side + 2 * rmax) - rmax) * q
        cy = (draws[:, 2] * (side + 2 * rmax) - rmax) * q
        for (ri, xi, yi), colour in zip(torch.stack([r, cx, cy], 1).tolist(), draws[:, 3:]):
            x0, x1 = max(0, int(xi - ri)), min(n, int(xi + ri) + 1)
            y0, y1 = max(0, int(yi - ri)), min(n, int(yi + ri) + 1)
            if x0 >= x1 or y0 >= y1:
                continue
            new = ((pos[y0:y1, None] - yi) ** 2 + (pos[None, x0:x1] - xi) ** 2 <= ri * ri)
            new &= ~covered[y0:y1, x0:x1]
            canvas[:, y0:y1, x0:x1][:, new] = colour[:, None]
            covered[y0:y1, x0:x1] |= new
        if bool(covered.all()):
            break
    return canvas


MAX_LEAVES = 64 * 200


def _reach(cfg: SyntheticConfig, base_scale: float = 1.0) -> float:
    """How far from the window's centre a sub-frame may sample (output pixels), with a margin."""
    if cfg.motion == "translation":
        return cfg.size / 2 + cfg.shift[1] / 2 + 2
    return cfg.size * 0.75 * base_scale + cfg.shift[1]


def _translated_windows(canvas: torch.Tensor, q: int, size: int, centres: torch.Tensor) -> torch.Tensor:
    """size x size windows of a canvas rendered at q samples per pixel, centred at `centres` (S, 2) in
    output pixels, each bilinearly sampled at q x q points per pixel and box-filtered: (S, 3, size, size).

    Equal to the general path (grid_sample at every sample, then avg_pool) but fast: bilinear weights are
    the same for every sample of a window, and a box filter of integer-shifted samples is a shifted
    window of the canvas box-filtered at one of q x q phases, so each window is a weighted sum of four
    slices of precomputed images."""
    n = canvas.shape[-1] // q * q - q  # room for phases up to q - 1
    phases = [[F.avg_pool2d(canvas[None, :, ry:ry + n, rx:rx + n], q)[0] for rx in range(q)] for ry in range(q)]
    # sample k of the window reads canvas sample k + t, t = (centre - size / 2) * q - 0.5 + 0.5 (sample centres)
    t = (centres - size / 2) * q
    base = torch.floor(t)
    frac = (t - base).tolist()
    out = torch.empty(len(centres), canvas.shape[0], size, size)
    for i, ((bx, by), (fx, fy)) in enumerate(zip(base.long().tolist(), frac)):
        acc = None
        for dy, wy in ((0, 1 - fy), (1, fy)):
            ay, ry = divmod(by + dy, q)
            for dx, wx in ((0, 1 - fx), (1, fx)):
                ax, rx = divmod(bx + dx, q)
                part = phases[ry][rx][:, ay:ay + size, ax:ax + size] * (wy * wx)
                acc = part if acc is None else acc.add_(part)
        out[i] = acc
    return out


def render_sequence(photo: torch.Tensor | None, cfg: SyntheticConfig, gen: torch.Generator,
                    exact: bool = False) -> dict:
    """Render one sequence from a prepared photo (scene photos) or from a new dead-leaves texture drawn
    from gen (photo None). Returns subframes (S, 3, H, W) with S = frames * subframes, sharp (frames, 3,
    H, W), blur (3, H, W), all sRGB float in [0, 1], and motion (2,). exact: sample every sub-frame with
    grid_sample even where a faster equal path exists (tests compare the two)."""
    size = cfg.size
    n = cfg.frames * cfg.subframes
    times = (torch.arange(n, dtype=torch.float32) + 0.5) / n - 0.5
    q = 1 if photo is not None else SUPERSAMPLE
    radii_px = (cfg.radii[0], cfg.radii[1] * size)
    if photo is None:
        side = 2 * math.ceil(_reach(cfg))
        photo = dead_leaves(side, gen, radii_px, q)
    hp, wp = photo.shape[-2:]

    def u(a, b):
        return a + (b - a) * torch.rand((), generator=gen).item()

    # sample positions of the output window (q per pixel), relative to its centre, in output pixels
    lin = (torch.arange(size * q, dtype=torch.float32) + 0.5) / q - size / 2
    grid_xy = torch.stack(torch.meshgrid(lin, lin, indexing="xy"), -1)  # (H*q, W*q, 2): x, y offsets

    if cfg.motion == "translation":
        offset, angle, scale = _trajectory(gen, times, cfg.shift, 0.0, 0.0, curve=0.0)
    else:
        offset, angle, scale = _trajectory(gen, times, cfg.shift, cfg.max_rotation, cfg.max_zoom, curve=0.3)
    if q == 1:  # a photo: a random scale and place in it (photo pixels)
        base_scale = u(0.85, 1.15)
        reach = _reach(cfg, base_scale)
        cx = u(min(reach, wp / 2), max(wp - reach, wp / 2))
        cy = u(min(reach, hp / 2), max(hp - reach, hp / 2))

        def sample(texture, xy):
            return _sample(texture, xy)
    else:  # a dead-leaves canvas made for this window: its centre, q samples per output pixel
        base_scale, reach = 1.0, _reach(cfg)
        cx = cy = wp / q / 2

        def sample(texture, xy):
            return _sample(texture, xy * q - 0.5)
    rot = _rotation(angle) * (scale * base_scale)[:, None, None]  # (S, 2, 2)
    if q > 1 and cfg.motion == "translation" and not exact:
        frames = _translated_windows(photo, q, size, torch.tensor([cx, cy]) + offset)
    else:
        xy = torch.einsum("sij,hwj->shwi", rot, grid_xy) + (torch.tensor([cx, cy]) + offset)[:, None, None, :]
        frames = sample(photo, xy)

    if cfg.motion == "trajectory" and torch.rand((), generator=gen).item() < cfg.foreground_p:
        # A textured elliptical patch (from elsewhere in the same photo, or from a second dead-leaves
        # texture) moving on its own path.
        fg_offset, fg_angle, fg_scale = _trajectory(gen, times, cfg.foreground_shift, 10.0, 0.1, curve=0.5)
        centre = torch.tensor([u(-0.2, 0.2) * size, u(-0.2, 0.2) * size])
        radii = torch.tensor([u(0.15, 0.3) * size, u(0.15, 0.3) * size])
        if q == 1:
            texture = photo
            src = torch.tensor([u(reach, max(reach, wp - reach)), u(reach, max(reach, hp - reach))])
        else:
            texture = dead_leaves(math.ceil(size * 0.8), gen, radii_px, q)
            src = torch.full((2,), texture.shape[-1] / q / 2)
        pos = centre + fg_offset  # (S, 2) patch centre in output coordinates
        local = grid_xy[None] - pos[:, None, None, :]  # (S, H, W, 2)
        inv = _rotation(-fg_angle) / fg_scale[:, None, None]
        local = torch.einsum("sij,shwj->shwi", inv, local)
        patch = sample(texture, local * base_scale + src)
        r = ((local / radii) ** 2).sum(-1).sqrt()
        mask = (1 - r).mul(size / 4).clamp(0, 1)[:, None]  # soft edge about two pixels wide
        frames = frames * (1 - mask) + patch * mask

    if q > 1 and frames.shape[-1] != size:
        frames = F.avg_pool2d(frames, q)  # box filter: antialiased edges
    frames = frames.clamp(0, 1)
    centre_idx = torch.arange(cfg.frames) * cfg.subframes + cfg.subframes // 2
    first, last = centre_idx[0].item(), centre_idx[-1].item()
    # The camera's motion as seen in the image: where the texture point at the centre of frame 1 is in
    # frame N (output pixels; x right, y down). Content moves against the window: rot_N^-1 (off_1 - off_N).
    motion = torch.linalg.solve(rot[last], offset[first] - offset[last])
    return {"subframes": frames, "sharp": frames[centre_idx], "blur": linear_light_mean(frames, 0),
            "motion": motion}


_PHOTOS: dict = {}


def _render_job(job):
    """(split, i, photo name, cfg) -> uint8 blur, uint8 sharp frames and the motion of one sequence.
    Photos are prepared once per process."""
    split, i, name, cfg = job
    photo = None
    if cfg.scene == "photos":
        key = (name, cfg.size)
        if key not in _PHOTOS:
            _PHOTOS[key] = prepare_photo(load_photo(name), cfg.size)
        photo = _PHOTOS[key]
    from utils.images import to_uint8
    gen = torch.Generator().manual_seed(_seed(cfg.seed, split, i))
    out = render_sequence(photo, cfg, gen)
    return to_uint8(out["blur"]), torch.stack([to_uint8(f) for f in out["sharp"]]), out["motion"].tolist()


def _init_worker():
    torch.set_num_threads(1)


def generate(cfg: SyntheticConfig, writer, progress: bool = True, workers: int = 1) -> dict:
    """Render every split into a DatasetWriter (in `workers` processes; the output does not depend on
    their number). Returns the metadata dict (without "data")."""
    from tqdm import tqdm

    jobs = []
    for split in ("train", "val", "test"):
        names = cfg.splits[split] if cfg.scene == "photos" else (cfg.scene,)
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
            "generator": {"kind": "synthetic", "scene": cfg.scene, "motion": cfg.motion, "seed": cfg.seed,
                          "size": cfg.size, "subframes_per_frame": cfg.subframes,
                          "travel": [float(v) for v in cfg.shift],
                          **({"splits": {k: list(v) for k, v in cfg.splits.items()}} if cfg.scene == "photos"
                             else {"radii": [float(v) for v in cfg.radii]})}}

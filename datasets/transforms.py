"""Image reading and the training augmentations (the reference's).

Augmentations act on a stack (T+1, 3, H, W) holding the blurry image first and every sharp frame, so
the blurry image and the frames get identical parameters: the same affine, crop and jitter factors.
Noise goes into the blurry image only (a deblurring network should not learn to reproduce it); with
noise_targets the same noise field goes into every image, as the reference does. Val/test use none of it.

Speed on large frames (REDS is 720x1280, crops are 256x256): a draw is made first (draw_augment), then
only the part of the image it reads (source_window) is converted to float and transformed, and the
affine samples the crop directly from that window. The result equals torchvision's affine of the
whole image followed by the crop (tests/test_dataset.py checks it against TF.affine).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_image, read_file

from utils.errors import UserError


class ImageReadError(UserError):
    """An image file that cannot be decoded; the message names the file."""


def decode_image_file(path) -> tuple:
    """Decode an image file without converting to float: (RGB integer tensor (3, H, W), full-scale value).

    torchvision decodes PNG and JPEG; other formats PIL opens (WebP, GIF, BMP, TIFF, PPM, ...) go through
    PIL. Grayscale, palette and RGBA become RGB; 16-bit images keep 16 bits (full scale 65535). An EXIF
    orientation (photos from phones and cameras) is applied, so images are oriented as viewers show them
    (torchvision applies it for PNG and JPEG only, hence PIL for the rest). Training crops are converted
    to float after cropping, which is why this step is separate.
    """
    img, error = None, None
    try:
        data = read_file(str(path))
        if bytes(data[:4].tolist()).startswith((b"\x89PNG", b"\xff\xd8")):  # PNG, JPEG
            img = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except Exception as e:
        error = e
    if img is None:
        img = _decode_with_pil(path, error)
    if img.dtype == torch.uint8:
        return img, 255.0
    if img.dtype == torch.uint16:
        return img.to(torch.int32), 65535.0
    if img.dtype == torch.int32:  # from _decode_with_pil
        return img, 65535.0
    raise ImageReadError(f"unsupported pixel type {img.dtype} in {path}")


def _decode_with_pil(path, tv_error) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as opened:
            im = _exif_oriented(opened)
            if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit grayscale (TIFF, old Pillow PNG)
                a = np.asarray(im, dtype=np.int64).clip(0, 65535).astype(np.int32)
                return torch.from_numpy(a)[None].expand(3, -1, -1).contiguous()
            a = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise ImageReadError(f"cannot read image {path}: file not found") from None
    except Exception as pil_error:  # Pillow's reason ("image file is truncated", ...) reads better than
        # torchvision's, which starts with a C++ source location
        reason = " ".join(str(pil_error).split()) or " ".join(str(tv_error or "").split()) or type(pil_error).__name__
        raise ImageReadError(f"cannot read image {path}: {reason}") from None
    return torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous()


def _exif_oriented(im):
    """A PIL image turned as its EXIF orientation says (as viewers show it); as it is when the EXIF data is
    unreadable, which leaves the pixels themselves readable."""
    from PIL import ImageOps
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im


def exif_swaps_axes(im) -> bool:
    """Whether a just-opened PIL image's EXIF orientation (5 to 8) turns it by 90 degrees, so that its header
    size is (H, W) of the image as shown. Pillow turns TIFFs itself (and reports their size turned already),
    so only the formats it leaves as stored are asked."""
    if im.format not in ("JPEG", "MPO", "PNG", "WEBP"):
        return False
    try:
        return im.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:
        return False


def read_image(path) -> torch.Tensor:
    """Decode an image file to RGB float in [0, 1], (3, H, W).

    Grayscale, palette and RGBA are converted to RGB; 16-bit PNGs are scaled by 65535.
    """
    img, scale = decode_image_file(path)
    return img.float().div_(scale)


def to_float_stack(images) -> torch.Tensor:
    """[(integer image (3, H, W), full scale), ...] of one size -> float stack (N, 3, H, W) in [0, 1]."""
    first = images[0][0]
    out = torch.empty((len(images),) + tuple(first.shape), dtype=torch.float32)
    for i, (img, scale) in enumerate(images):
        out[i].copy_(img).div_(scale)
    return out


@dataclass
class AugmentConfig:
    crop_size: int | tuple | None = 256  # None: no crop
    affine_p: float = 0.6
    translate: float = 0.05  # fraction of the image size
    degrees: float = 5.0
    shear: float = 7.0
    jitter_p: float = 0.6
    brightness: float = 0.4
    contrast: float = 0.3
    noise_p: float = 0.4
    noise_var: tuple = (10.0, 50.0)  # variance on the 0..255 scale
    noise_targets: bool = False  # True: the same noise field in the sharp frames too (the reference)


def _pair(v):
    if v is None:
        return None
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


@dataclass
class AugmentDraw:
    """One draw of the training augmentations for an image of a given size.

    The affine (angle and shear in degrees, translate in pixels) is taken about the crop centre:
    its result equals torchvision's affine of the whole image about that centre (bilinear, fill 0),
    cropped at (top, left, height, width) afterwards.
    """
    top: int
    left: int
    height: int
    width: int
    angle: float | None = None  # None: no affine
    translate: tuple = (0, 0)
    shear: tuple = (0.0, 0.0)
    brightness: float | None = None  # None: no colour jitter
    contrast: float | None = None
    noise: torch.Tensor | None = None  # (3, height, width), added to the first image (the blur)
    noise_targets: bool = False  # ... and to every other image of the stack

    @property
    def centre(self) -> tuple:
        return self.left + self.width / 2.0, self.top + self.height / 2.0


def draw_augment(size, cfg: AugmentConfig, generator: torch.Generator) -> AugmentDraw:
    """Draw crop, affine, jitter and noise for an image of size (H, W)."""
    def uniform(a, b):
        return a + (b - a) * torch.rand((), generator=generator).item()

    h, w = size
    crop = _pair(cfg.crop_size)
    ch, cw = (min(crop[0], h), min(crop[1], w)) if crop else (h, w)
    top = int(torch.randint(0, h - ch + 1, (), generator=generator)) if ch < h else 0
    left = int(torch.randint(0, w - cw + 1, (), generator=generator)) if cw < w else 0
    d = AugmentDraw(top, left, ch, cw)
    if torch.rand((), generator=generator).item() < cfg.affine_p:
        d.angle = uniform(-cfg.degrees, cfg.degrees)
        tx = round(uniform(-cfg.translate, cfg.translate) * w)
        ty = round(uniform(-cfg.translate, cfg.translate) * h)
        d.translate = (tx, ty)
        d.shear = (uniform(-cfg.shear, cfg.shear), 0.0)
    if torch.rand((), generator=generator).item() < cfg.jitter_p:
        d.brightness = uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
        d.contrast = uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
    if torch.rand((), generator=generator).item() < cfg.noise_p:
        sigma = math.sqrt(uniform(*cfg.noise_var)) / 255.0
        d.noise = torch.randn((3, ch, cw), generator=generator) * sigma
        d.noise_targets = cfg.noise_targets
    return d


def _inverse_affine(d: AugmentDraw) -> list:
    """2x3 matrix taking an output position (relative to the crop centre) to its source position
    (relative to the crop centre): torchvision's inverse affine matrix (rotation, then x-shear;
    scale 1), written out so the window below can be computed from it."""
    rot, sx, sy = math.radians(d.angle), math.radians(d.shear[0]), math.radians(d.shear[1])
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    e = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    tx, ty = d.translate
    return [e, -b, -(e * tx - b * ty), -c, a, -(-c * tx + a * ty)]


def source_window(d: AugmentDraw, size) -> tuple:
    """(y0, y1, x0, x1): the part of an (H, W) image that the draw reads. Only this window needs
    decoding to float and transforming: the crop plus, under an affine, every pixel its bilinear
    samples touch (from the crop's corners, as the map is affine), with one pixel to spare."""
    h, w = size
    if d.angle is None:
        return d.top, d.top + d.height, d.left, d.left + d.width
    m = _inverse_affine(d)
    cx, cy = d.centre
    xs, ys = [], []
    for ox in (0.5 - d.width / 2.0, d.width / 2.0 - 0.5):
        for oy in (0.5 - d.height / 2.0, d.height / 2.0 - 0.5):
            xs.append(m[0] * ox + m[1] * oy + m[2] + cx - 0.5)  # source pixel index (centre at k)
            ys.append(m[3] * ox + m[4] * oy + m[5] + cy - 0.5)
    x0 = min(max(0, math.floor(min(xs)) - 1), w - 1)
    y0 = min(max(0, math.floor(min(ys)) - 1), h - 1)
    x1 = max(min(w, math.floor(max(xs)) + 3), x0 + 1)
    y1 = max(min(h, math.floor(max(ys)) + 3), y0 + 1)
    return y0, y1, x0, x1


def _affine_crop(window: torch.Tensor, d: AugmentDraw, origin) -> torch.Tensor:
    """The crop of the affine-transformed image, sampled straight from `window` (N, C, h, w), whose
    top-left pixel is image pixel `origin` (y0, x0). Matches torchvision's affine with bilinear
    interpolation and fill 0 (including its fill mask) on the whole image, then cropping."""
    n, c, hw, ww = window.shape
    m = _inverse_affine(d)
    cx, cy = d.centre
    y0, x0 = origin
    ox = torch.arange(d.width, dtype=torch.float64) + (0.5 - d.width / 2.0)
    oy = (torch.arange(d.height, dtype=torch.float64) + (0.5 - d.height / 2.0))[:, None]
    sx = m[0] * ox + m[1] * oy + (m[2] + cx - x0)  # source position in window pixels (edge origin)
    sy = m[3] * ox + m[4] * oy + (m[5] + cy - y0)
    grid = torch.stack([sx * (2.0 / ww) - 1.0, sy * (2.0 / hw) - 1.0], -1).to(window.dtype)[None]
    # One sample grid for all N images: fold them into channels so the weights are computed once.
    images = F.grid_sample(window.reshape(1, n * c, hw, ww), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    mask = F.grid_sample(window.new_ones((1, 1, hw, ww)), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)
    return images.mul_(mask).reshape(n, c, d.height, d.width)  # torchvision: (img - fill) * mask + fill


def apply_augment(window: torch.Tensor, d: AugmentDraw, origin=(0, 0)) -> torch.Tensor:
    """Apply a draw to `window` (N, 3, h, w): the float image region source_window() named (or the
    whole image with origin (0, 0)), whose top-left pixel is image pixel origin (y0, x0)."""
    y0, x0 = origin
    if d.angle is not None:
        stack = _affine_crop(window, d, origin)
    else:
        stack = window[:, :, d.top - y0:d.top - y0 + d.height, d.left - x0:d.left - x0 + d.width].contiguous()
    if d.brightness is not None:
        stack = TF.adjust_brightness(stack, d.brightness)
        stack = TF.adjust_contrast(stack, d.contrast)
    if d.noise is not None:
        if d.noise_targets:
            stack = (stack + d.noise).clamp_(0.0, 1.0)
        else:
            if stack.untyped_storage().data_ptr() == window.untyped_storage().data_ptr():
                stack = stack.clone()  # a view of the caller's window: never write into it
            stack[0] = (stack[0] + d.noise).clamp_(0.0, 1.0)
    return stack


def augment_stack(stack: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Apply one draw of the training augmentations to every image of `stack` (N, 3, H, W)."""
    size = tuple(stack.shape[-2:])
    d = draw_augment(size, cfg, generator)
    y0, y1, x0, x1 = source_window(d, size)
    return apply_augment(stack[:, :, y0:y1, x0:x1], d, (y0, x0))


def crop_to_box(stack: torch.Tensor, box, out_size, margin_frac) -> torch.Tensor:
    """Crop around a pascal-voc box, each side grown by a fraction of its distance to the image border
    (one float for all sides, or (left, top, right, bottom)), then resize to out_size (H, W).
    Used for B-AIST++ person boxes."""
    _, _, h, w = stack.shape
    ml, mt, mr, mb = (margin_frac,) * 4 if isinstance(margin_frac, (int, float)) else margin_frac
    x0, y0, x1, y1 = box
    x0, y0 = max(0.0, min(x0, w - 1.0)), max(0.0, min(y0, h - 1.0))
    x1, y1 = max(x0 + 1.0, min(x1, float(w))), max(y0 + 1.0, min(y1, float(h)))
    left = int(math.floor(x0 - ml * x0))
    top = int(math.floor(y0 - mt * y0))
    right = int(math.ceil(x1 + mr * (w - x1)))
    bottom = int(math.ceil(y1 + mb * (h - y1)))
    region = stack[:, :, top:bottom, left:right]
    return TF.resize(region, list(out_size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)

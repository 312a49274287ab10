"""Image reading and the training augmentations (SPEC 9).

Augmentations act on a stack (T+1, 3, H, W) holding the blurry image and every sharp frame, so the
blurry image and the frames get identical parameters: the same affine, crop, jitter factors and the
same noise field. Val/test use none of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_image, read_file


class ImageReadError(ValueError):
    pass


def read_image(path) -> torch.Tensor:
    """Decode an image file to RGB float in [0, 1], (3, H, W).

    Grayscale, palette and RGBA are converted to RGB; 16-bit PNGs are scaled by 65535.
    """
    try:
        img = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except Exception as e:
        raise ImageReadError(f"cannot decode image {path}: {e}") from None
    if img.dtype == torch.uint8:
        return img.float().div_(255.0)
    if img.dtype == torch.uint16:
        return img.to(torch.int32).float().div_(65535.0)
    raise ImageReadError(f"unsupported pixel type {img.dtype} in {path}")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """RGB float [0, 1] -> uint8, rounded."""
    return x.clamp(0, 1).mul(255.0).round_().to(torch.uint8)


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


def _pair(v):
    if v is None:
        return None
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def augment_stack(stack: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Apply one draw of the training augmentations to every image of `stack` (N, 3, H, W)."""
    def uniform(a, b):
        return a + (b - a) * torch.rand((), generator=generator).item()

    n, c, h, w = stack.shape
    crop = _pair(cfg.crop_size)
    ch, cw = (min(crop[0], h), min(crop[1], w)) if crop else (h, w)
    top = int(torch.randint(0, h - ch + 1, (), generator=generator)) if ch < h else 0
    left = int(torch.randint(0, w - cw + 1, (), generator=generator)) if cw < w else 0

    if torch.rand((), generator=generator).item() < cfg.affine_p:
        angle = uniform(-cfg.degrees, cfg.degrees)
        tx = round(uniform(-cfg.translate, cfg.translate) * w)
        ty = round(uniform(-cfg.translate, cfg.translate) * h)
        shear = [uniform(-cfg.shear, cfg.shear), 0.0]
        # The affine is taken about the crop centre and computed only on a window around the crop:
        # the same result as transforming the whole image about that centre and cropping after, at a
        # fraction of the cost on large frames. The window covers every source pixel the crop reads.
        reach = abs(tx) + abs(ty) + math.ceil(0.5 * math.hypot(ch, cw) * (math.sin(math.radians(cfg.degrees))
                                                                          + math.tan(math.radians(cfg.shear)))) + 2
        y0, x0 = max(0, top - reach), max(0, left - reach)
        y1, x1 = min(h, top + ch + reach), min(w, left + cw + reach)
        window = stack[:, :, y0:y1, x0:x1]
        centre = [left - x0 + cw / 2.0, top - y0 + ch / 2.0]
        window = TF.affine(window, angle=angle, translate=[tx, ty], scale=1.0, shear=shear,
                           interpolation=TF.InterpolationMode.BILINEAR, fill=0.0, center=centre)
        stack = window[:, :, top - y0:top - y0 + ch, left - x0:left - x0 + cw]
    else:
        stack = stack[:, :, top:top + ch, left:left + cw]
    stack = stack.contiguous()

    if torch.rand((), generator=generator).item() < cfg.jitter_p:
        b = uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
        k = uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
        stack = TF.adjust_brightness(stack, b)
        stack = TF.adjust_contrast(stack, k)

    if torch.rand((), generator=generator).item() < cfg.noise_p:
        sigma = math.sqrt(uniform(*cfg.noise_var)) / 255.0
        noise = torch.randn(stack.shape[1:], generator=generator, dtype=stack.dtype) * sigma
        stack = (stack + noise).clamp_(0.0, 1.0)
    return stack


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

"""Re-encode figures small enough for git: a plot (few distinct colours) becomes a PNG of a 64-colour palette,
a contact sheet (many colours, photographs) a JPEG of quality 70 at most 800 pixels wide. GIFs are not kept.

  python -m lab.shrink_figures /tmp/figs/per_frame_ppsnr.png /tmp/figs/sequence_0.png --out lab/figures
"""
from __future__ import annotations

import sys
from pathlib import Path

from utils.cli import ArgumentParser, run_main
from utils.errors import FlagError

PHOTO_COLOURS = 16384  # a matplotlib plot has a few thousand distinct colours, a contact sheet tens of thousands
PLOT_COLOURS = 64
JPEG_QUALITY = 70
MAX_WIDTH = 800


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Re-encode figures for git: plots as 64-colour PNGs, contact sheets as "
                                   "JPEGs (quality 70, at most 800 px wide).",
                       epilog="example:\n  python -m lab.shrink_figures /tmp/figs/probe.png /tmp/figs/sequence_0.png "
                              "--out lab/figures")
    p.add_argument("images", nargs="+", help="PNG figures (from lab.experiments.ordering_figures, wide_report, ...)")
    p.add_argument("--out", required=True, help="folder to write them to, under the same stem")
    return p


def shrink(src: Path, out: Path) -> Path:
    """Write the small version of one figure into `out`; returns its path (.png for a plot, .jpg for a photo)."""
    from PIL import Image
    image = Image.open(src).convert("RGB")
    colours = image.getcolors(PHOTO_COLOURS)  # None when there are more
    if colours is not None:
        dest = out / f"{src.stem}.png"
        image.quantize(colors=PLOT_COLOURS, method=Image.Quantize.MEDIANCUT,
                       dither=Image.Dither.NONE).save(dest, optimize=True)
        return dest
    if image.width > MAX_WIDTH:
        image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.LANCZOS)
    dest = out / f"{src.stem}.jpg"
    image.save(dest, quality=JPEG_QUALITY, optimize=True)
    return dest


def main_body(args) -> int:
    sources = [Path(p) for p in args.images]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        raise FlagError(f"not found: {', '.join(missing)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for src in sources:
        size = src.stat().st_size
        dest = shrink(src, out)
        print(f"{src} ({size:,} bytes) -> {dest} ({dest.stat().st_size:,} bytes)")
    return 0


def main(argv=None) -> int:
    return run_main(build_parser, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())

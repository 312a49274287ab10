"""Turn blurry photos into 7-frame sequences, without any metadata.

  python inference.py --pretrained_path weights/jin_official/ --blur_path photo.png --output_path out/
  python inference.py --pretrained_path checkpoints/jin_hc/models/0100.pth --blur_path photos/ \\
      --output_path out/ --device cuda

--pretrained_path: a checkpoint of train_blur2vid.py (Jin, or Purohit stage 2, whose centre network then
predicts the central frame) or a folder holding Jin et al.'s four official files (center_v3.pth,
F35_N8.pth, F26_N9_from_F35_N8.pth, F17_N9_from_F26_N9_from_F35_N8.pth).
--blur_path: one image, or a folder whose png/jpg/jpeg/bmp images are all processed (sorted by name).
Each image, at its own size, gives OUTPUT/<image stem>/frame_1.png .. frame_7.png (8-bit RGB), every
file written to a temporary name and renamed; --gif adds frames.gif (the frames played forwards and
back) and contact.png (blur | frames). --tile N predicts each image in N x N windows (overlaps averaged;
'crop': the run's training crop size): for images too large for the device, and for networks trained
on small crops, which can do worse on whole images (lab/ordering.md section 10).
"""
from __future__ import annotations

import utils.threads  # noqa: F401  (first: OpenMP's wait policy, before torch loads)

import sys
import time
from pathlib import Path

import torch

from datasets.transforms import decode_image_file, read_image
from models import BACKBONES, load_backbone
from utils.cli import ArgumentParser, above, add_runtime_args, at_least, check_flags, run_main
from utils.device import out_of_memory_hint, resolve_device
from utils.errors import FlagError
from utils.evaluation import add_tile_arg, resolve_tile, tiled
from utils.images import OutputFolders, save_frames
from utils.outputs import Inputs, check_outputs, folder_targets
from utils.training import progress

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Turn blurry photos (any size, no metadata) into 7-frame sequences: "
                    "OUTPUT/<image stem>/frame_1.png .. frame_7.png.",
        epilog="example:\n"
               "  python inference.py --pretrained_path checkpoints/jin_hc/models/0100.pth --blur_path photos/ "
               "--output_path out/ --gif")
    p.add_argument("--backbone", default=None, choices=BACKBONES.names(),
                   help="expected backbone (default: the checkpoint's; Jin for a folder)")
    p.add_argument("--pretrained_path", required=True,
                   help="a train_blur2vid.py checkpoint, or a folder with Jin's four official files")
    p.add_argument("--blur_path", required=True, help="a blurry image, or a folder of them")
    p.add_argument("--output_path", default="output", help="folder for OUTPUT/<image stem>/frame_k.png")
    p.add_argument("--target_frames", type=at_least(1), nargs="+", default=None,
                   help="accepted for the reference's command line: the model's frames are all written")
    p.add_argument("--gif", action="store_true",
                   help="also write OUTPUT/<image stem>/frames.gif (the frames, animated) and contact.png (blur | frames)")
    add_tile_arg(p)
    p.add_argument("--width_mult", type=above(0, 4.0), default=None,
                   help="width of an official-weights folder's model (default: 1.0); checked against a checkpoint's")
    add_runtime_args(p, batch_size=None)
    return p


def list_images(blur_path) -> list[Path]:
    """The image to process, or every png/jpg/jpeg/bmp in a folder (sorted); one output folder each."""
    path = Path(blur_path)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FlagError(f"--blur_path {path} holds no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images")
    elif path.is_file():
        images = [path]
    else:
        raise FlagError(f"--blur_path {path} does not exist")
    stems: dict = {}
    for p in images:
        stems.setdefault(p.stem, []).append(p.name)
    clashes = {s: names for s, names in stems.items() if len(names) > 1}
    if clashes:
        s, names = next(iter(clashes.items()))
        raise FlagError(f"{', '.join(names)} in {path} would share the output folder '{s}': rename one")
    return images


def check_readable(images) -> None:
    """Fail before any work on a file that is not a complete image: each is decoded in full (a truncated
    file is found here, before earlier images' outputs are written)."""
    for path in progress(images, desc="checking images", unit="image", leave=False):
        decode_image_file(path)


@torch.inference_mode()
def deblur(model, image: torch.Tensor, device, tile: int | None = None) -> torch.Tensor:
    """One blurry image, RGB float [0, 1] (3, H, W) of any size -> its frames (T, 3, H, W), float on the CPU
    (not clamped); with tile, predicted in tile x tile windows (utils.evaluation.tiled), put together on
    the CPU: an image too large for the device holds one window's frames there at a time."""
    def predict(net, blur, _):
        return net(blur)["frames"].float()
    image = image.unsqueeze(0).to(device)
    return (tiled(predict, tile, out_device="cpu") if tile else predict)(model, image, image)[0].cpu()


def run_inference(model, images, output_path, device, log=print, gif: bool = False,
                  tile: int | None = None) -> list[Path]:
    """Deblur each image file and write OUTPUT/<stem>/frame_k.png (with gif: frames.gif and contact.png
    too); returns the output folders."""
    out = OutputFolders(output_path)
    folders = []
    for path in progress(images, desc="inference", unit="image"):
        image = read_image(path)
        start = time.perf_counter()
        advice = "use a smaller --tile" if tile else "use --tile N (e.g. --tile 256) or a smaller image"
        with out_of_memory_hint(lambda: f"deblurring {path} ({image.shape[2]}x{image.shape[1]}, W x H) on {device}: "
                                        + advice + (" or --device cpu" if device.type != "cpu" else "")):
            frames = deblur(model, image, device, tile)
        folder = out.folder(path.stem, str(path))
        save_frames(frames, folder)
        if gif:
            from utils.figures import save_gif
            from utils.images import make_strip, save_png
            save_gif(frames.clamp(0, 1), folder / "frames.gif")
            save_png(make_strip(image.unsqueeze(0), frames.unsqueeze(0)), folder / "contact.png")
        folders.append(folder)
        log(f"{path} -> {folder}/frame_1..{len(frames)}.png ({image.shape[2]}x{image.shape[1]}, "
            f"{time.perf_counter() - start:.2f} s)")
    return folders


def main_body(args) -> None:
    check_flags(args)
    images = list_images(args.blur_path)
    check_readable(images)
    out = Path(args.output_path)
    if out.exists() and not out.is_dir():
        raise FlagError(f"--output_path {out} exists and is not a folder")
    device = resolve_device(args.device)
    model = load_backbone(args.pretrained_path, map_location=device, name=args.backbone, width_mult=args.width_mult)
    if getattr(model, "training_stage", None) == 1:
        raise FlagError(f"{args.pretrained_path} is a stage-1 checkpoint (a video autoencoder): use the stage-2 model")
    if args.target_frames is not None and sorted(args.target_frames) != list(range(1, model.num_frames + 1)):
        raise FlagError(f"--target_frames: the model predicts frames 1..{model.num_frames}, and inference writes "
                        "them all; leave the flag out")
    # what will be written, against the photos and weights read (a photo named like an output folder's file)
    per_image = [f"frame_{k}.png" for k in range(1, model.num_frames + 1)] + (["frames.gif", "contact.png"]
                                                                               if args.gif else [])
    names = [f"{p.stem}/{name}" for p in images for name in per_image]
    inputs = Inputs().add_checkpoint("--pretrained_path", args.pretrained_path)
    for p in images:
        inputs.add(f"the photo {p}", p)
    check_outputs([("--output_path", p) for p in folder_targets(out, names)], inputs)
    run_inference(model, images, out, device, gif=args.gif, tile=resolve_tile(args.tile, args.pretrained_path))


def main(argv=None) -> int:
    return run_main(build_parser, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Evaluation over a val/test split, shared by the test scripts and the train scripts' validation:
loaders that keep full-size images (a split may mix sizes), HyperCUT scores, and the deblurring loop.
Predictions and metrics stay on the model's device, batch by batch."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader, default_collate

from utils.checkpoint import load_checkpoint
from utils.device import out_of_memory_hint
from utils.errors import FlagError
from utils.distributed import DistInfo, gather_rows, unwrap
from utils.metrics.sequence import SequenceMetrics
from utils.training import progress


def collate_by_size(items: list) -> list:
    """Evaluation collate: the items of a batch grouped by tensor shapes (val/test images are used at
    full size, and a dataset may mix sizes), each group collated on its own. Returns a list of batches."""
    groups: dict = {}
    for item in items:
        key = tuple(tuple(v.shape) for v in item.values() if torch.is_tensor(v))
        groups.setdefault(key, []).append(item)
    return [default_collate(group) for group in groups.values()]


def make_eval_loader(dataset, batch_size: int, num_workers: int, device: torch.device | None = None,
                     dist_info: DistInfo | None = None) -> DataLoader:
    """Val/test loader: every item once, in dataset order; yields lists of batches (collate_by_size).
    Under torch.distributed each rank takes every world_size-th item (no padding, unlike
    DistributedSampler), so figures summed over ranks count every sequence exactly once."""
    dist_info = dist_info or DistInfo()
    indices = list(range(dist_info.rank, len(dataset), dist_info.world_size))
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=num_workers,
                      collate_fn=collate_by_size, pin_memory=device is not None and device.type == "cuda")


def memory_advice(doing: str, images: torch.Tensor, device, tile: int | None = None, tileable: bool = False) -> str:
    """What to say when a batch of `images` (B, ..., H, W) does not fit in memory: its size and what to lower
    (tile: the images are predicted in tile x tile windows; tileable: the program has --tile)."""
    n, (h, w) = images.shape[0], images.shape[-2:]
    where = f"{doing} a batch of {n} image(s) of {h}x{w} (H x W)" + (f" in {tile}x{tile} windows" if tile else "") \
        + f" on {device}"
    if n > 1:
        return f"{where}: lower --batch_size"
    smaller = "use a smaller --tile" if tile else \
        ("use --tile N (predict in N x N windows) or smaller images" if tileable else "use smaller images")
    return f"{where}, one image at a time already: {smaller}" + (" or --device cpu" if device.type != "cpu" else "")


@torch.no_grad()
def hypercut_scores(model, loader: DataLoader, device: torch.device, desc: str = "scoring",
                    dist_info: DistInfo | None = None) -> torch.Tensor:
    """Hyperplane scores (N, 6) of every sequence of an eval loader (make_eval_loader) in dataset
    order: h(d1), h(dbar1), h(d2), h(dbar2), h(d3), h(dbar3). Runs the model in eval mode,
    in float32, and leaves the global RNG as it was (validation must not shift a training run).
    Under torch.distributed every rank must call it and every rank gets all N rows."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    rows, scores = [], []
    with torch.random.fork_rng(devices=[]):
        for batches in progress(loader, dist_info, desc=desc, unit="batch", leave=False):
            for batch in batches:
                with out_of_memory_hint(lambda: memory_advice("scoring", batch["frames"], device)):
                    _, s = model(batch["frames"].to(device, non_blocking=True))
                rows.append(batch["index"])
                scores.append(s.float().cpu())
    model.train(was_training)
    rows = gather_rows(torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long))
    scores = gather_rows(torch.cat(scores) if scores else torch.zeros(0, 6))
    out = torch.full((len(loader.dataset), 6), float("nan"), dtype=torch.float32)
    out[rows] = scores
    return out


def predict_frames(net, blur: torch.Tensor, gt: torch.Tensor, middle_frame: str = "predicted") -> torch.Tensor:
    """A backbone's frames (backbone contract, models/__init__.py) in float32: its own central frame, or
    with middle_frame "gt" the ground truth's (the oracle protocol of the HyperCUT paper's tables)."""
    center = gt[:, gt.shape[1] // 2] if middle_frame == "gt" else None
    return net(blur, center)["frames"].float()


def tile_starts(size: int, tile: int) -> list[int]:
    """Top/left offsets of the tiles that cover `size` pixels: a tile every `tile` pixels, the last one
    moved back to end at the edge (so it overlaps its neighbour); one tile at 0 when size <= tile."""
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile))
    return starts + [size - tile]


def tiled(predict, tile: int, out_device=None):
    """predict(net, blur, gt) run on tile x tile windows of the images instead of whole images, the
    windows' frames put back in place (overlaps averaged; on out_device, default the frames' own, e.g.
    "cpu" so that only one window's frames at a time occupy an accelerator). A network trained on crops of that size then
    sees inputs of the size it learnt on; a network whose layers look wider than its crop (Jin's dilated
    convolutions, instance norm over the whole input) can behave differently on whole images."""
    def run(net, blur, gt):
        h, w = blur.shape[-2:]
        out = weight = None
        for y in tile_starts(h, tile):
            for x in tile_starts(w, tile):
                win = (..., slice(y, y + tile), slice(x, x + tile))
                frames = predict(net, blur[win], gt[win])
                if out_device is not None:
                    frames = frames.to(out_device)
                if out is None:
                    out = frames.new_zeros(frames.shape[:-2] + (h, w))
                    weight = frames.new_zeros((h, w))
                out[win] += frames
                weight[y:y + tile, x:x + tile] += 1
        return out.div_(weight)  # in place: the full result is held once
    return run


def tile_flag(text: str):
    """--tile: a positive number of pixels, or 'crop'."""
    if text == "crop":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"give a positive number of pixels or 'crop' (got {text!r})")
    return value


def add_tile_arg(parser) -> None:
    parser.add_argument("--tile", default=None, type=tile_flag,
                        help="predict in N x N windows (overlaps averaged) and put them back together; 'crop': the "
                             "run's training crop size, read from the checkpoint. Default: whole images (the "
                             "paper's protocol)")


def resolve_tile(tile, pretrained_path) -> int | None:
    """--tile as a number of pixels; 'crop' reads the training crop size recorded in the checkpoint."""
    if tile != "crop":
        return tile
    path = Path(pretrained_path)
    args = {} if path.is_dir() else (load_checkpoint(path).get("args") or {})
    # trained_crop: the size really trained on (boxed data caps --crop_size); older checkpoints: --crop_size
    crop = args.get("trained_crop") or args.get("crop_size")
    if not isinstance(crop, int) or crop < 1:
        raise FlagError(f"--tile crop: {path} records no training crop size (official weights or another "
                        "program's file); give --tile a number of pixels")
    return crop


@torch.no_grad()
def evaluate(model, loader, device: torch.device, metrics: SequenceMetrics, hypercut=None,
             on_batch=None, desc: str = "eval", dist_info: DistInfo | None = None, predict=None,
             tile: int | None = None, tileable: bool = False) -> torch.Tensor | None:
    """Predict every sequence of `loader` (batches from collate_by_size) and add them to `metrics`.

    predict(net, blur, gt) -> frames (B, T, 3, H, W); default predict_frames (the backbone's own centre).
    hypercut: a HyperCUT model; its hyperplane scores (N, 6) of the predicted sequences (clamped to [0, 1],
    as saved images would be) are returned, gathered from all ranks (None without one; hit/con:
    models.hypercut.hit_con).
    on_batch(batch, pred) is called for every batch (saving images, visualisations).
    tile (the window size `predict` works in, see tiled) and tileable (the program has --tile): only for
    the out-of-memory advice.
    Under torch.distributed the figures are summed over ranks (every rank must call this).
    The global RNG is left as it was, so validating does not change a training run.
    """
    predict = predict or predict_frames
    net = unwrap(model)
    was_training = net.training
    net.eval()
    scores = []
    try:
        with torch.random.fork_rng(devices=[]):
            for groups in progress(loader, dist_info, desc=desc, leave=False):
                for batch in groups:
                    with out_of_memory_hint(lambda: memory_advice("evaluating", batch["blur"], device, tile,
                                                                    tileable)):
                        blur = batch["blur"].to(device, non_blocking=True)
                        gt = batch["frames"].to(device, non_blocking=True)
                        pred = predict(net, blur, gt)
                        metrics.update(pred, gt)
                        if hypercut is not None:
                            _, s = hypercut.pair_scores(pred.clamp(0, 1))
                            scores.append(s.float().cpu())
                    if on_batch is not None:
                        on_batch(batch, pred)
    finally:
        net.train(was_training)
    metrics.all_reduce(num_frames=len(getattr(loader.dataset, "target_frames", [])) or None)
    if hypercut is None:
        return None
    return gather_rows(torch.cat(scores) if scores else torch.zeros(0, 6))

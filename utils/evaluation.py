"""Running a deblurring backbone over a val/test split: the loop train_blur2vid.py (validation) and
test_blur2vid.py share. Predictions and metrics stay on the model's device, batch by batch."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from utils.metrics import SequenceMetrics, hit_con
from utils.training import DistInfo, collate_by_size, progress, unwrap


def make_sharded_eval_loader(dataset, batch_size: int, num_workers: int, device: torch.device | None = None,
                             dist_info: DistInfo | None = None) -> DataLoader:
    """Like utils.training.make_eval_loader, but under torch.distributed each rank takes every
    world_size-th item (no padding, unlike DistributedSampler), so figures summed over ranks
    (SequenceMetrics.all_reduce) count every sequence exactly once."""
    dist_info = dist_info or DistInfo()
    indices = list(range(dist_info.rank, len(dataset), dist_info.world_size))
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=num_workers,
                      collate_fn=collate_by_size, pin_memory=device is not None and device.type == "cuda")


def _gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a (N_rank, ...) CPU tensor over all ranks (torch.distributed), or return it."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return t
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, t)
    return torch.cat(parts)


@torch.no_grad()
def evaluate(model, loader, device: torch.device, metrics: SequenceMetrics, hypercut=None,
             on_batch=None, desc: str = "eval", dist_info: DistInfo | None = None) -> dict | None:
    """Predict every sequence of `loader` (batches from collate_by_size) and add them to `metrics`.

    hypercut: a HyperCUT model; its hyperplane scores of the predicted sequences (clamped to [0, 1], as
    saved images would be) give hit/con, returned as utils.metrics.hit_con's dict (None without one).
    on_batch(batch, pred) is called for every batch (saving images, visualisations).
    Under torch.distributed the figures are summed over ranks (every rank must call this).
    The global RNG is left as it was, so validating does not change a training run.
    """
    net = unwrap(model)
    was_training = net.training
    net.eval()
    scores = []
    try:
        with torch.random.fork_rng(devices=[]):
            for groups in progress(loader, dist_info, desc=desc, leave=False):
                for batch in groups:
                    blur = batch["blur"].to(device, non_blocking=True)
                    gt = batch["frames"].to(device, non_blocking=True)
                    pred = net(blur)
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
    return hit_con(_gather_rows(torch.cat(scores) if scores else torch.zeros(0, 6)))

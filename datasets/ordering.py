"""Orders that do not come from HyperCUT: the oracle order of the embedded dataset.

The synthetic dataset records each sequence's camera motion `motion: [dx, dy]` (pixels, frame 1 ->
frame N, x right). The oracle order reverses a sequence iff dx < 0, so that every sequence, once
ordered, moves rightwards (or straight up or down): a canonical order that is a function of the motion
alone, hence readable from the blur up to the ambiguity at vertical motion. It is the ceiling of what
a learnable order can buy, not something a real dataset has.
"""
from __future__ import annotations

import math

from datasets.metadata import MetadataError


def entry_motion(entry: dict, index: int) -> tuple[float, float]:
    """(dx, dy) of a raw metadata entry; MetadataError naming the entry when it is missing or bad."""
    eid = entry.get("id", f"#{index}") if isinstance(entry, dict) else f"#{index}"
    motion = entry.get("motion") if isinstance(entry, dict) else None
    if motion is None:
        raise MetadataError(f"entry {eid} has no 'motion' field: the oracle order needs the camera motion "
                            "that `prepare_dataset.py synthetic` records (rebuild the dataset with it)")
    ok = isinstance(motion, (list, tuple)) and len(motion) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in motion)
    if not ok:
        raise MetadataError(f"entry {eid}: 'motion' must be two finite numbers [dx, dy], got {motion!r}")
    return float(motion[0]), float(motion[1])


def oracle_orders(meta: dict) -> dict:
    """{entry index: 'reverse' if dx < 0 else 'ignore'} for every entry of a metadata dict."""
    return {i: "reverse" if entry_motion(e, i)[0] < 0 else "ignore" for i, e in enumerate(meta["data"])}

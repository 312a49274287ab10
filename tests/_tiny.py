"""Tiny datasets written with Pillow (independently of datasets/writer.py), for the fault tests."""
import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_dataset(root: Path, entries, frames: int = 7) -> Path:
    """entries: [(id, partition, (H, W))]; each blurry image is seeded noise of that size and sharp frame k
    the grey level 30 k (so the order frames are loaded in can be read from them)."""
    rng = np.random.default_rng(0)
    data = []
    for i, (eid, part, (h, w)) in enumerate(entries):
        folder = root / f"{i:03d}"
        (folder / "sharp").mkdir(parents=True, exist_ok=True)
        entry = {"id": eid, "order": "ignore", "partition": part, "blur_path": f"{i:03d}/blur.png"}
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / "blur.png")
        for k in range(1, frames + 1):
            level = np.full((h, w, 3), 30 * k, np.uint8)
            Image.fromarray(level).save(folder / "sharp" / f"{k}.png")
            entry[f"frame{k:03d}_path"] = f"{i:03d}/sharp/{k}.png"
        data.append(entry)
    (root / "metadata.json").write_text(json.dumps({"name": "Rel", "frame_per_seq": frames, "data": data}))
    return root


def plain(n_train=2, n_val=1, n_test=2, size=(40, 40)):
    return ([(f"tr/{i}", "train", size) for i in range(n_train)] + [(f"va/{i}", "val", size) for i in range(n_val)]
            + [(f"te/{i}", "test", size) for i in range(n_test)])




def synthetic_dataset(root: Path, size: int, counts: dict, seed: int) -> Path:
    """A small embedded (synthetic) dataset written through the project's own writer, at root."""
    from datasets.synthetic import SyntheticConfig, generate
    from datasets.writer import DatasetWriter
    writer = DatasetWriter(root)
    writer.commit(generate(SyntheticConfig(size=size, counts=counts, seed=seed), writer, progress=False))
    return root

"""Tiny datasets for the tests: written with Pillow, independently of datasets/writer.py (write_sequences and
what builds on it), or through the project's own writer (written_dataset, synthetic_dataset)."""
import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_metadata(root: Path, meta: dict) -> None:
    """root/metadata.json, indented as in the seed README."""
    (root / "metadata.json").write_text(json.dumps(meta, indent=4))


def entry(eid: str, partition: str, blur_path: str, frame_paths, order: str = "ignore", **extra) -> dict:
    """A metadata entry: id, order, partition, blur_path, frame001_path, ... (paths relative to the root),
    then any other fields."""
    out = {"id": eid, "order": order, "partition": partition, "blur_path": blur_path}
    out.update({f"frame{k:03d}_path": path for k, path in enumerate(frame_paths, start=1)})
    out.update(extra)
    return out


def write_sequences(root: Path, sequences, write_meta: bool = True, **top) -> dict:
    """Saves the images of each sequence with Pillow at its entry's paths and returns the metadata
    {**top, "frame_per_seq": T, "data": [entries]}, written to root/metadata.json unless write_meta is False.

    sequences: [(entry, images)], images [blur, frame 1, ..., frame T] as uint8 (H, W, 3) arrays.
    """
    data = []
    for item, images in sequences:
        paths = [item["blur_path"]] + [item[f"frame{k:03d}_path"] for k in range(1, len(images))]
        for rel, image in zip(paths, images):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / rel)
        data.append(item)
    meta = {**top, "frame_per_seq": len(sequences[0][1]) - 1, "data": data}
    if write_meta:
        write_metadata(root, meta)
    return meta


def write_dataset(root: Path, entries, frames: int = 7) -> Path:
    """entries: [(id, partition, (H, W))]; each blurry image is seeded noise of that size and sharp frame k
    the grey level 30 k (so the order frames are loaded in can be read from them). Sequence i is stored as
    <i:03d>/blur.png and <i:03d>/sharp/<k>.png."""
    rng = np.random.default_rng(0)
    sequences = []
    for i, (eid, part, (h, w)) in enumerate(entries):
        blur = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        sharp = [np.full((h, w, 3), 30 * k, np.uint8) for k in range(1, frames + 1)]
        paths = [f"{i:03d}/sharp/{k}.png" for k in range(1, frames + 1)]
        sequences.append((entry(eid, part, f"{i:03d}/blur.png", paths), [blur] + sharp))
    write_sequences(root, sequences, name="Rel")
    return root


def plain(n_train=2, n_val=1, n_test=2, size=(40, 40)):
    return ([(f"tr/{i}", "train", size) for i in range(n_train)] + [(f"va/{i}", "val", size) for i in range(n_val)]
            + [(f"te/{i}", "test", size) for i in range(n_test)])


def written_dataset(root: Path, sequences, **top) -> Path:
    """A dataset written through the project's writer (datasets/writer.py). sequences: DatasetWriter.add_sequence's
    arguments as dicts (partition, blur, frames, and order or extra if wanted); sequence i goes to folder
    <i:04d> with id <i:04d>/0000 (an id holding a '/'). top: the metadata's fields beside data."""
    from datasets.writer import DatasetWriter
    writer = DatasetWriter(root)
    for i, sequence in enumerate(sequences):
        writer.add_sequence(f"{i:04d}/0000", folder=f"{i:04d}", **sequence)
    writer.commit(top)
    return root


def synthetic_dataset(root: Path, size: int, counts: dict, seed: int) -> Path:
    """A small embedded (synthetic) dataset written through the project's own writer, at root."""
    from datasets.synthetic import SyntheticConfig, generate
    from datasets.writer import DatasetWriter
    writer = DatasetWriter(root)
    writer.commit(generate(SyntheticConfig(size=size, counts=counts, seed=seed), writer, progress=False))
    return root

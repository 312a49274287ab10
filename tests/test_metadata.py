"""metadata.json: every user error is one MetadataError from load_split naming the entry and the
path; orders, --target_frames, path resolution, B-AIST++ boxes; the seed README's example layout."""
from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from _tiny import entry, write_metadata, write_sequences
from datasets.blur2vid import Blur2VidDataset
from datasets.metadata import MetadataError, entry_bbox, load_split, read_bbox

H, W = 40, 48


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These tensors are tiny: intra-op threads only add overhead (a lot of it on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- helpers: datasets written with PIL, independently of datasets/writer.py -------------------------

def frame_value(k: int) -> int:
    """Stored frame k of every test sequence is filled with this grey level (blur: 250)."""
    return 20 * k


def grey(value: int, size=(H, W)) -> np.ndarray:
    return np.full(size + (3,), value, np.uint8)


def save(path: Path, value: int, size=(H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey(value, size)).save(path)


def make_dataset(root: Path, n: int = 2, frames: int = 7, partitions=("train",), order="ignore",
                 write_meta: bool = True) -> dict:
    """n sequences per partition in the seed layout; frame k has grey level frame_value(k)."""
    sequences = []
    for part in partitions:
        for i in range(n):
            folder = f"{part}{i:02d}"
            paths = [f"{folder}/sharp/0000_{k}.png" for k in range(1, frames + 1)]
            images = [grey(250)] + [grey(frame_value(k)) for k in range(1, frames + 1)]
            sequences.append((entry(f"{folder}/0000", part, f"{folder}/blur/0000.png", paths, order=order), images))
    return write_sequences(root, sequences, write_meta=write_meta, name="Test")


def levels(frames: torch.Tensor) -> list:
    """Grey level of each frame of a (T, 3, H, W) stack."""
    return [round(float(f.mean()) * 255) for f in frames]


# --- error cases -------------------------------------------------------------------------------------

def test_missing_metadata(tmp_path):
    with pytest.raises(MetadataError, match="metadata file not found") as e:
        load_split(tmp_path / "nowhere", "train")  # no such folder: named as given
    assert str(tmp_path / "nowhere") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetadataError, match="metadata file not found") as e:
        load_split(tmp_path / "empty", "train")  # a folder without metadata.json
    assert str(tmp_path / "empty" / "metadata.json") in str(e.value)


def test_invalid_json(tmp_path):
    (tmp_path / "metadata.json").write_text('{"name": "x", "data": [')
    with pytest.raises(MetadataError, match="not valid JSON") as e:
        load_split(tmp_path, "train")
    assert str(tmp_path / "metadata.json") in str(e.value)


@pytest.mark.parametrize("meta", [{"name": "x"}, {"data": {"id": 1}}, [1, 2]])
def test_missing_data(tmp_path, meta):
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(MetadataError, match="'data'") as e:
        load_split(tmp_path, "train")
    assert str(tmp_path / "metadata.json") in str(e.value)


@pytest.mark.parametrize("fps", [0, -3, "7", 7.0, True, None])
def test_bad_frame_per_seq(tmp_path, fps):
    meta = make_dataset(tmp_path, write_meta=False)
    meta["frame_per_seq"] = fps
    write_metadata(tmp_path, meta)
    with pytest.raises(MetadataError, match="frame_per_seq") as e:
        load_split(tmp_path, "train")
    assert str(tmp_path / "metadata.json") in str(e.value)


def _mutated(tmp_path, mutate, split="train"):
    """Build a valid dataset, let mutate(meta, root) break it, and return load_split's error message."""
    meta = make_dataset(tmp_path, write_meta=False, partitions=("train", "val"))
    mutate(meta, tmp_path)
    write_metadata(tmp_path, meta)
    with pytest.raises(MetadataError) as e:
        load_split(tmp_path, split)
    return str(e.value)


def test_unknown_partition_names_entry(tmp_path):
    def mutate(meta, root):
        meta["data"][1]["partition"] = "training"
    msg = _mutated(tmp_path, mutate)
    assert "train01/0000" in msg and "'training'" in msg and str(tmp_path / "metadata.json") in msg


def test_unknown_partition_is_caught_whatever_split_is_loaded(tmp_path):
    def mutate(meta, root):
        meta["data"][3]["partition"] = "validation"  # a val entry; we load train
    msg = _mutated(tmp_path, mutate, split="train")
    assert "val01/0000" in msg and "validation" in msg


def test_unknown_order_names_entry(tmp_path):
    def mutate(meta, root):
        meta["data"][0]["order"] = "forward"
    msg = _mutated(tmp_path, mutate)
    assert "train00/0000" in msg and "'forward'" in msg and "order" in msg


def test_missing_blur_path(tmp_path):
    def mutate(meta, root):
        del meta["data"][1]["blur_path"]
    msg = _mutated(tmp_path, mutate)
    assert "train01/0000" in msg and "blur_path" in msg


@pytest.mark.parametrize("key", ["frame001_path", "frame004_path", "frame007_path"])
def test_missing_frame_key(tmp_path, key):
    def mutate(meta, root):
        del meta["data"][0][key]
    msg = _mutated(tmp_path, mutate)
    assert "train00/0000" in msg and key in msg


def test_missing_file(tmp_path):
    def mutate(meta, root):
        (root / meta["data"][1]["frame005_path"]).unlink()
    msg = _mutated(tmp_path, mutate)
    assert "train01/0000" in msg and "not found" in msg and str(tmp_path / "train01/sharp/0000_5.png") in msg


def test_missing_blur_file(tmp_path):
    def mutate(meta, root):
        meta["data"][0]["blur_path"] = "train00/blur/nothing.png"
    msg = _mutated(tmp_path, mutate)
    assert "train00/0000" in msg and str(tmp_path / "train00/blur/nothing.png") in msg


def test_unreadable_image(tmp_path):
    def mutate(meta, root):
        (root / meta["data"][0]["frame003_path"]).write_bytes(b"this is not a png at all" * 10)
    msg = _mutated(tmp_path, mutate)
    assert "train00/0000" in msg and str(tmp_path / "train00/sharp/0000_3.png") in msg and "cannot read" in msg


def test_frames_of_different_sizes(tmp_path):
    def mutate(meta, root):
        save(root / meta["data"][1]["frame006_path"], 10, size=(H, W + 2))
    msg = _mutated(tmp_path, mutate)
    assert "train01/0000" in msg and str(tmp_path / "train01/sharp/0000_6.png") in msg
    assert f"{W + 2}x{H}" in msg and f"{W}x{H}" in msg


def test_empty_split(tmp_path):
    make_dataset(tmp_path, partitions=("train",))
    with pytest.raises(MetadataError, match="'val' split is empty") as e:
        load_split(tmp_path, "val")
    assert str(tmp_path / "metadata.json") in str(e.value)


def test_unknown_split_name(tmp_path):
    make_dataset(tmp_path)
    with pytest.raises(MetadataError, match="unknown split 'training'"):
        load_split(tmp_path, "training")


@pytest.mark.parametrize("frames,target", [(7, [0]), (7, [8]), (7, [1, 2, 8]), (5, [6]), (9, [10, 1])])
def test_target_frames_out_of_range(tmp_path, frames, target):
    make_dataset(tmp_path, frames=frames)
    with pytest.raises(MetadataError, match=r"--target_frames .* out of range") as e:
        load_split(tmp_path, "train", target_frames=target)
    assert f"1..{frames}" in str(e.value)
    with pytest.raises(MetadataError, match="out of range"):
        Blur2VidDataset(tmp_path, "train", target_frames=target)


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, 3, 4, 5, 6], [1, 2, "a", 4], {"x": 1}, 7, [1, 2, True, 4],
                                  [10, 2, 5, 20], [1, 20, 30, 20]])
def test_bad_inline_bbox(tmp_path, bbox):
    def mutate(meta, root):
        meta["data"][1]["bbox"] = bbox
    msg = _mutated(tmp_path, mutate)
    assert "train01/0000" in msg and "bbox" in msg


class _Evil:
    """Unpickling this runs os.system, which would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilEval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("evil", [_Evil, _EvilEval])
@pytest.mark.parametrize("nested", [False, True])
def test_malicious_bbox_pickle_is_refused_and_never_runs(tmp_path, evil, nested):
    marker = tmp_path / "pwned"
    payload = {"bbox": evil(marker)} if nested else evil(marker)

    def mutate(meta, root):
        (root / "boxes").mkdir()
        (root / "boxes" / "evil.pkl").write_bytes(pickle.dumps(payload))
        meta["data"][0]["bbox"] = "boxes/evil.pkl"
    msg = _mutated(tmp_path, mutate)
    assert "train00/0000" in msg and str(tmp_path / "boxes" / "evil.pkl") in msg and "refusing" in msg
    assert not marker.exists()


def test_bbox_pickle_without_a_box(tmp_path):
    def mutate(meta, root):
        (root / "box.pkl").write_bytes(pickle.dumps({"box": [1, 2, 3, 4]}))
        meta["data"][0]["bbox"] = "box.pkl"
    msg = _mutated(tmp_path, mutate)
    assert "train00/0000" in msg and str(tmp_path / "box.pkl") in msg


def test_missing_bbox_pickle(tmp_path):
    def mutate(meta, root):
        meta["data"][0]["bbox"] = "boxes/none.pkl"
    msg = _mutated(tmp_path, mutate)
    assert "train00/0000" in msg and str(tmp_path / "boxes/none.pkl") in msg


# --- B-AIST++ boxes: safe pickles ----------------------------------------------------------------------

BOX = [4.0, 6.0, 30.0, 36.0]


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("value", [
    BOX + [0.97],
    tuple(BOX),
    np.array(BOX + [0.97]),
    np.array(BOX, dtype=np.float32),
    np.array(BOX, dtype=np.int64),
    [np.float64(v) for v in BOX] + [np.float32(0.5)],
], ids=["list", "tuple", "array64", "array32", "array_int", "numpy_scalars"])
def test_bbox_pickle_values(tmp_path, value, protocol):
    path = tmp_path / "box.pkl"
    path.write_bytes(pickle.dumps({"bbox": value}, protocol=protocol))
    assert read_bbox(path, "e") == BOX


def test_bbox_pickle_written_by_numpy_1(tmp_path):
    """Pickles written under numpy 1.x name numpy.core.multiarray; they must still load."""
    data = pickle.dumps({"bbox": np.array(BOX)}, protocol=2)
    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in data
    path = tmp_path / "box.pkl"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 warns about the numpy.core name
        assert read_bbox(path, "e") == BOX


def test_bbox_pickle_and_inline_through_load_split(tmp_path):
    meta = make_dataset(tmp_path, write_meta=False, n=3)
    (tmp_path / "boxes").mkdir()
    (tmp_path / "boxes" / "0.pkl").write_bytes(pickle.dumps({"bbox": np.array(BOX + [0.9])}))
    meta["data"][0]["bbox"] = "boxes/0.pkl"
    meta["data"][1]["bbox"] = BOX + [0.9]
    write_metadata(tmp_path, meta)
    _, entries = load_split(tmp_path, "train")
    assert entries[0].bbox == tmp_path / "boxes" / "0.pkl"
    assert entry_bbox(entries[0]) == BOX and entry_bbox(entries[1]) == BOX and entry_bbox(entries[2]) is None


# --- orders ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order,expected", [("ignore", [1, 2, 3, 4, 5, 6, 7]), ("keep", [1, 2, 3, 4, 5, 6, 7]),
                                            ("reverse", [7, 6, 5, 4, 3, 2, 1])])
def test_order_values(tmp_path, order, expected):
    make_dataset(tmp_path, order=order)
    ds = Blur2VidDataset(tmp_path, "train")
    item = ds[0]
    assert levels(item["frames"]) == [frame_value(k) for k in expected]
    assert round(float(item["blur"].mean()) * 255) == 250
    assert item["reversed"] == (order == "reverse")


def _many_random(tmp_path, n=400):
    """n entries with order random, all pointing at one stored sequence (cheap to check)."""
    meta = make_dataset(tmp_path, n=1, write_meta=False, order="random")
    base = meta["data"][0]
    meta["data"] = [dict(base, id=f"seq{i:04d}") for i in range(n)]
    write_metadata(tmp_path, meta)


def test_order_random_half_seeded_and_stable(tmp_path):
    _many_random(tmp_path)
    a = Blur2VidDataset(tmp_path, "train", seed=42, check_files=False)
    share = sum(a.reversed) / len(a)
    assert 0.4 < share < 0.6  # binomial(400, 1/2): 4 standard deviations
    b = Blur2VidDataset(tmp_path, "train", seed=42, check_files=False)
    assert a.reversed == b.reversed  # deterministic for a seed
    c = Blur2VidDataset(tmp_path, "train", seed=7, check_files=False)
    assert a.reversed != c.reversed  # another seed, another draw
    fwd = next(i for i, r in enumerate(a.reversed) if not r)
    rev = next(i for i, r in enumerate(a.reversed) if r)
    for epoch in range(3):  # decided once per entry: stable across epochs
        a.set_epoch(epoch)
        assert a.reversed == b.reversed
        assert levels(a[fwd]["frames"]) == [frame_value(k) for k in range(1, 8)]
        assert levels(a[rev]["frames"]) == [frame_value(k) for k in range(7, 0, -1)]
        assert a[rev]["reversed"] and not a[fwd]["reversed"]


def test_order_random_stable_with_augmentation_epochs(tmp_path):
    """The direction does not follow the augmentation's (seed, epoch, index) draws."""
    from datasets.transforms import AugmentConfig
    _many_random(tmp_path, n=40)
    ds = Blur2VidDataset(tmp_path, "train", seed=3, check_files=False,
                         augment=AugmentConfig(crop_size=8, affine_p=0, jitter_p=0, noise_p=0))
    first = [ds[i]["reversed"] for i in range(len(ds))]
    ds.set_epoch(5)
    assert [ds[i]["reversed"] for i in range(len(ds))] == first == ds.reversed


def test_mixed_orders(tmp_path):
    meta = make_dataset(tmp_path, n=4, write_meta=False)
    for e, order in zip(meta["data"], ["ignore", "reverse", "keep", "reverse"]):
        e["order"] = order
    write_metadata(tmp_path, meta)
    ds = Blur2VidDataset(tmp_path, "train")
    assert ds.reversed == [False, True, False, True]
    assert levels(ds[1]["frames"])[0] == frame_value(7) and levels(ds[2]["frames"])[0] == frame_value(1)


# --- target frames, frames per sequence ------------------------------------------------------------------

@pytest.mark.parametrize("order,target,stored", [
    ("ignore", [7, 1, 4], [7, 1, 4]),
    ("keep", [2, 2, 6], [2, 2, 6]),
    ("reverse", [7, 1, 4], [1, 7, 4]),  # target frame k is stored frame N + 1 - k
    ("reverse", [1, 2, 3], [7, 6, 5]),
    ("ignore", [4], [4]),
])
def test_target_frames(tmp_path, order, target, stored):
    make_dataset(tmp_path, order=order)
    ds = Blur2VidDataset(tmp_path, "train", target_frames=target)
    item = ds[0]
    assert item["frames"].shape == (len(target), 3, H, W)
    assert levels(item["frames"]) == [frame_value(k) for k in stored]


@pytest.mark.parametrize("frames", [5, 9])
def test_other_frames_per_seq(tmp_path, frames):
    make_dataset(tmp_path, frames=frames, order="reverse")
    ds = Blur2VidDataset(tmp_path, "train")
    assert ds.frame_per_seq == frames
    assert levels(ds[0]["frames"]) == [frame_value(k) for k in range(frames, 0, -1)]
    sel = Blur2VidDataset(tmp_path, "train", target_frames=[frames, 1, 3])
    assert levels(sel[0]["frames"]) == [frame_value(k) for k in (1, frames, frames - 2)]


def test_frame_per_seq_defaults_to_7(tmp_path):
    meta = make_dataset(tmp_path, write_meta=False)
    del meta["frame_per_seq"]
    write_metadata(tmp_path, meta)
    _, entries = load_split(tmp_path, "train")
    assert len(entries[0].frame_paths) == 7


def test_extra_frames_beyond_frame_per_seq_are_ignored(tmp_path):
    meta = make_dataset(tmp_path, frames=7, write_meta=False)
    meta["frame_per_seq"] = 5
    write_metadata(tmp_path, meta)
    ds = Blur2VidDataset(tmp_path, "train")
    assert levels(ds[0]["frames"]) == [frame_value(k) for k in range(1, 6)]


# --- paths ---------------------------------------------------------------------------------------------

def test_relative_paths_resolve_against_metadata_folder(tmp_path, monkeypatch):
    root = tmp_path / "data" / "set"
    make_dataset(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for where in (root, root / "metadata.json", os.path.relpath(root, elsewhere)):
        _, entries = load_split(where, "train")
        assert entries[0].blur_path.resolve() == (root / "train00/blur/0000.png").resolve()
    assert levels(Blur2VidDataset(root, "train")[0]["frames"]) == [frame_value(k) for k in range(1, 8)]


def test_absolute_paths(tmp_path):
    images = tmp_path / "images"
    meta = make_dataset(images, write_meta=False)
    for e in meta["data"]:
        for key, value in list(e.items()):
            if key.endswith("_path"):
                e[key] = str(images / value)
    meta_dir = tmp_path / "meta"
    meta_dir.mkdir()
    write_metadata(meta_dir, meta)
    _, entries = load_split(meta_dir, "train")
    assert entries[0].frame_paths[2] == images / "train00/sharp/0000_3.png"
    assert levels(Blur2VidDataset(meta_dir, "train")[1]["frames"]) == [frame_value(k) for k in range(1, 8)]


def test_data_root_overrides(tmp_path):
    images = tmp_path / "images"
    meta = make_dataset(images, write_meta=False)
    meta_dir = tmp_path / "meta"
    meta_dir.mkdir()
    write_metadata(meta_dir, meta)
    with pytest.raises(MetadataError, match="not found"):
        load_split(meta_dir, "train")
    _, entries = load_split(meta_dir, "train", data_root=images)
    assert entries[0].blur_path == images / "train00/blur/0000.png"
    ds = Blur2VidDataset(meta_dir, "train", data_root=images)
    assert levels(ds[0]["frames"]) == [frame_value(k) for k in range(1, 8)]


# --- the seed README's example, written by an independent tool ------------------------------------

def _readme_dataset(root: Path) -> dict:
    """The seed README's layout and metadata, with small PNGs at those paths written with PIL."""
    rng = np.random.default_rng(0)
    sequences = []
    for seq in ("00000", "00001"):
        for idx in ("0000", "0001"):
            paths = [f"{seq}/sharp/{idx}_{k}.png" for k in range(1, 8)]
            images = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(8)]
            sequences.append((entry(f"{seq}/{idx}", "train", f"{seq}/blur/{idx}.png", paths), images))
    return write_sequences(root, sequences, name="Street")


def _pil(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).float() / 255.0


@pytest.mark.parametrize("workers", [0, 2])
def test_seed_readme_example_through_dataloader(tmp_path, workers):
    meta = _readme_dataset(tmp_path)
    ds = Blur2VidDataset(tmp_path, "train")
    loader = DataLoader(ds, batch_size=2, num_workers=workers, shuffle=False)
    seen = []
    for batch in loader:
        assert batch["blur"].shape == (2, 3, H, W) and batch["frames"].shape == (2, 7, 3, H, W)
        assert batch["blur"].dtype == torch.float32
        for b, eid in enumerate(batch["id"]):
            raw = next(e for e in meta["data"] if e["id"] == eid)
            assert torch.equal(batch["blur"][b], _pil(tmp_path / raw["blur_path"]))
            for k in range(7):
                assert torch.equal(batch["frames"][b, k], _pil(tmp_path / raw[f"frame{k + 1:03d}_path"]))
            seen.append(eid)
    assert seen == [e["id"] for e in meta["data"]]

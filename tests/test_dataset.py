"""Blur2VidDataset and its transforms: image modes, training augmentation (consistency across the stack,
determinism, the windowed affine is exact), B-AIST++ boxes, and the synthetic generator."""
from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.errors import FlagError
import torchvision.transforms.v2.functional as TF
from PIL import Image

from _tiny import entry, write_metadata, write_sequences
from datasets import synthetic
from datasets.blur2vid import BOX_SIZE_EVAL, BOX_SIZE_TRAIN, Blur2VidDataset
from datasets.transforms import (AugmentConfig, augment_stack, crop_to_box, draw_augment, read_image,
                                 source_window)

H, W = 40, 48
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These tensors are tiny: intra-op threads only add overhead (a lot of it on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_dataset(root: Path, images: list, partition="train", **entry_extra) -> None:
    """One sequence per item of `images` ([blur, frame1, ..., frameT] uint8 HxWx3 arrays), as s<i>/blur.png and
    s<i>/f<k>.png."""
    sequences = []
    for i, seq in enumerate(images):
        frame_paths = [f"s{i}/f{k}.png" for k in range(1, len(seq))]
        sequences.append((entry(f"s{i}", partition, f"s{i}/blur.png", frame_paths, **entry_extra), seq))
    write_sequences(root, sequences)


def pattern(h=H, w=W, seed=0) -> np.ndarray:
    """A smooth-ish random colour pattern (uint8)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


ALL_ON = dict(affine_p=1.0, jitter_p=1.0, noise_p=1.0)


# --- image modes ---------------------------------------------------------------------------------------

def _png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA), which PIL cannot write."""
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _mode_images(tmp_path):
    rgb = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    grey = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    out = {}
    out["L"] = Image.fromarray(grey, "L")
    out["LA"] = Image.fromarray(np.dstack([grey, grey[::-1]]), "LA")
    out["RGBA"] = Image.fromarray(np.dstack([rgb, grey]), "RGBA")
    out["P"] = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=32)
    out["1"] = Image.fromarray(grey > 128)
    paths = {}
    for name, im in out.items():
        paths[name] = tmp_path / f"{name}.png"
        im.save(paths[name])
    paths["P_transparent"] = tmp_path / "P_transparent.png"
    out["P"].save(paths["P_transparent"], transparency=3)
    for name in ("bmp", "tiff", "jpg"):  # formats PIL reads (BMP and TIFF go through the PIL fallback)
        paths[name] = tmp_path / f"rgb.{name}"
        Image.fromarray(rgb).save(paths[name])
    return paths


def test_8bit_modes_load_as_rgb_float_like_pil(tmp_path):
    for name, path in _mode_images(tmp_path).items():
        x = read_image(path)
        expected = as_tensor(np.asarray(Image.open(path).convert("RGB")))
        assert x.shape == (3, H, W) and x.dtype == torch.float32, name
        if name == "jpg":  # decoders may differ by a level or two
            assert (x - expected).abs().max() <= 3 / 255, name
        else:
            assert torch.allclose(x, expected, atol=1e-7), name


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_scaled_by_65535(tmp_path, channels):
    shape = (H, W) if channels == 1 else (H, W, channels)
    arr = RNG.integers(0, 65536, shape, dtype=np.uint16)
    arr[0, 0], arr[-1, -1] = 0, 65535
    path = tmp_path / "x16.png"
    _png16(path, arr)
    rgb = {1: lambda a: np.dstack([a] * 3), 2: lambda a: np.dstack([a[..., 0]] * 3),
           3: lambda a: a, 4: lambda a: a[..., :3]}[channels](arr)
    expected = torch.from_numpy(rgb.astype(np.float64) / 65535).permute(2, 0, 1).float()
    x = read_image(path)
    assert x.shape == (3, H, W) and torch.allclose(x, expected, atol=1e-7)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    if channels == 1:  # PIL reads 16-bit grey as I;16: the same values
        pil = np.asarray(Image.open(path)).astype(np.float64) / 65535
        assert torch.allclose(x[0], torch.from_numpy(pil).float(), atol=1e-7)


def test_16bit_grey_pil_png_and_tiff(tmp_path):
    arr = RNG.integers(0, 65536, (H, W), dtype=np.uint16)
    for name in ("g16.png", "g16.tif"):
        Image.fromarray(arr).save(tmp_path / name)
        x = read_image(tmp_path / name)
        assert torch.allclose(x, torch.from_numpy(arr / 65535).float().expand(3, -1, -1), atol=1e-7), name


def test_dataset_mixes_modes(tmp_path):
    """A sequence whose blur is grey, frames palette / RGBA / 16-bit: all come out RGB float."""
    (tmp_path / "imgs").mkdir()
    paths = _mode_images(tmp_path / "imgs")
    arr16 = RNG.integers(0, 65536, (H, W, 3), dtype=np.uint16)
    _png16(tmp_path / "imgs" / "rgb16.png", arr16)
    names = ["L", "P", "RGBA", "P_transparent", "LA", "bmp", "tiff"]
    frame_paths = [str(paths[name]) for name in names[1:]] + [str(tmp_path / "imgs" / "rgb16.png")]
    write_metadata(tmp_path, {"frame_per_seq": 7, "data": [entry("mixed", "val", str(paths["L"]), frame_paths)]})
    item = Blur2VidDataset(tmp_path, "val")[0]
    assert item["blur"].shape == (3, H, W) and item["frames"].shape == (7, 3, H, W)
    assert torch.equal(item["blur"], as_tensor(np.asarray(Image.open(paths["L"]).convert("RGB"))))
    for k, name in enumerate(names[1:]):
        assert torch.equal(item["frames"][k], as_tensor(np.asarray(Image.open(paths[name]).convert("RGB")))), name
    assert torch.allclose(item["frames"][6], torch.from_numpy(arr16 / 65535).permute(2, 0, 1).float(), atol=1e-7)
    # the training path (crop before float conversion) agrees with the plain path
    train = Blur2VidDataset(tmp_path, "val", augment=AugmentConfig(crop_size=(24, 32), **ALL_ON))
    full = torch.cat([item["blur"][None], item["frames"]])
    gen = torch.Generator().manual_seed(_aug_seed(train, 0))
    out = train[0]
    assert torch.allclose(torch.cat([out["blur"][None], out["frames"]]), augment_stack(full, train.augment, gen),
                          atol=1e-6)


def _aug_seed(ds, index):
    from utils.seeds import stable_seed
    return stable_seed("aug", ds.seed, ds.epoch, index)


# --- augmentation --------------------------------------------------------------------------------------

@pytest.fixture
def same_images(tmp_path):
    """Two sequences where the blurry image and all 7 frames are one identical pattern."""
    write_dataset(tmp_path, [[pattern(seed=s)] * 8 for s in range(2)])
    return tmp_path


def test_augmentation_keeps_stack_aligned(same_images):
    """Identical inputs stay identical: one affine, crop, jitter (and, with noise_targets, noise field) for
    the whole stack."""
    ds = Blur2VidDataset(same_images, "train", augment=AugmentConfig(crop_size=(24, 32), noise_targets=True, **ALL_ON))
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert item["blur"].shape == (3, 24, 32) and item["frames"].shape == (7, 3, 24, 32)
            for frame in item["frames"]:
                assert torch.equal(frame, item["blur"])
            assert 0.0 <= float(item["blur"].min()) and float(item["blur"].max()) <= 1.0


def test_augmentation_really_transforms(same_images):
    """With everything on, the output is not just a crop of the stored image."""
    stored = as_tensor(pattern(seed=0))
    ds = Blur2VidDataset(same_images, "train", augment=AugmentConfig(crop_size=(24, 32), **ALL_ON))
    blur = ds[0]["blur"]
    crops = [stored[:, t:t + 24, l:l + 32] for t in range(H - 23) for l in range(W - 31)]
    assert min(float((blur - c).abs().mean()) for c in crops) > 0.01


@pytest.mark.parametrize("crop,expected", [(16, (16, 16)), ((20, 30), (20, 30)), ((H, W), (H, W)),
                                           (1000, (H, W)), (None, (H, W))])
def test_crop_sizes(same_images, crop, expected):
    for cfg in (AugmentConfig(crop_size=crop), AugmentConfig(crop_size=crop, **ALL_ON)):
        ds = Blur2VidDataset(same_images, "train", augment=cfg)
        item = ds[1]
        assert item["blur"].shape[-2:] == expected and item["frames"].shape == (7, 3) + expected


def test_augmentation_draws_from_seed_epoch_index(same_images):
    cfg = AugmentConfig(crop_size=(24, 32), **ALL_ON)
    a = Blur2VidDataset(same_images, "train", augment=cfg, seed=5)
    b = Blur2VidDataset(same_images, "train", augment=cfg, seed=5)
    assert torch.equal(a[0]["blur"], b[0]["blur"]) and torch.equal(a[1]["frames"], b[1]["frames"])
    a.set_epoch(1)
    assert not torch.equal(a[0]["blur"], b[0]["blur"])  # another epoch, another draw
    b.set_epoch(1)
    assert torch.equal(a[0]["blur"], b[0]["blur"])  # the same (seed, epoch, index) again
    c = Blur2VidDataset(same_images, "train", augment=cfg, seed=6)
    c.set_epoch(1)
    assert not torch.equal(a[0]["blur"], c[0]["blur"])  # another seed


def test_same_draw_in_dataloader_workers(same_images):
    from torch.utils.data import DataLoader
    ds = Blur2VidDataset(same_images, "train", augment=AugmentConfig(crop_size=(24, 32), **ALL_ON))
    ds.set_epoch(3)
    direct = torch.stack([ds[i]["blur"] for i in range(len(ds))])
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=1)))
    assert torch.equal(batch["blur"], direct)


def test_no_augmentation_returns_stored_images(tmp_path):
    seqs = [[RNG.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(8)] for _ in range(2)]
    for part in ("train", "val", "test"):
        root = tmp_path / part
        write_dataset(root, seqs, partition=part)
        ds = Blur2VidDataset(root, part)
        ds.set_epoch(7)
        for i, seq in enumerate(seqs):
            item = ds[i]
            assert torch.equal(item["blur"], as_tensor(seq[0]))
            assert torch.equal(item["frames"], torch.stack([as_tensor(a) for a in seq[1:]]))


@pytest.mark.parametrize("size,crop", [((96, 128), (16, 16)), ((64, 80), (24, 32)), ((40, 48), (40, 48)),
                                       ((50, 70), (32, 20))])
def test_windowed_affine_equals_full_image_affine(size, crop):
    """augment_stack transforms only a window around the crop; the result must equal torchvision's
    affine of the whole stack about the crop centre, cropped afterwards."""
    h, w = size
    ch, cw = crop
    stack = torch.stack([as_tensor(pattern(h, w, seed=s)) for s in range(3)])
    cfg = AugmentConfig(crop_size=crop, affine_p=1.0, jitter_p=0.0, noise_p=0.0)
    smaller = 0
    for seed in range(25):
        d = draw_augment((h, w), cfg, torch.Generator().manual_seed(seed))
        out = augment_stack(stack, cfg, torch.Generator().manual_seed(seed))
        cx, cy = d.left + cw / 2, d.top + ch / 2
        # torchvision in float64 is the exact reference (its float32 sampling grid is itself off by up to
        # ~4e-5 pixel at these sizes, which moves values by ~1e-5)
        for dtype, tol in ((torch.float64, 1e-5), (torch.float32, 2.5e-5)):
            full = TF.affine(stack.to(dtype), angle=d.angle, translate=list(d.translate), scale=1.0,
                             shear=list(d.shear), interpolation=TF.InterpolationMode.BILINEAR, fill=0.0,
                             center=[cx, cy])
            ref = full[:, :, d.top:d.top + ch, d.left:d.left + cw]
            assert out.shape == ref.shape == (3, 3, ch, cw)
            assert (out.double() - ref.double()).abs().max() <= tol, (seed, dtype)
        y0, y1, x0, x1 = source_window(d, (h, w))
        smaller += (y1 - y0) * (x1 - x0) < h * w
    if crop[0] * 3 < h:
        assert smaller > 0  # the window trick was exercised


def test_windowed_affine_at_image_borders():
    """Crops touching the image border read the fill: still equal to the full-image affine."""
    h, w = 48, 64
    stack = torch.stack([as_tensor(pattern(h, w, seed=9))])
    cfg = AugmentConfig(crop_size=(20, 28), affine_p=1.0, jitter_p=0.0, noise_p=0.0, translate=0.2, degrees=20)
    hits = 0
    for seed in range(60):
        d = draw_augment((h, w), cfg, torch.Generator().manual_seed(seed))
        if not (d.top == 0 or d.left == 0 or d.top + 20 == h or d.left + 28 == w or max(map(abs, d.translate)) > 5):
            continue
        hits += 1
        out = augment_stack(stack, cfg, torch.Generator().manual_seed(seed))
        full = TF.affine(stack.double(), angle=d.angle, translate=list(d.translate), scale=1.0, shear=list(d.shear),
                         interpolation=TF.InterpolationMode.BILINEAR, fill=0.0, center=[d.left + 14, d.top + 10])
        assert (out.double() - full[:, :, d.top:d.top + 20, d.left:d.left + 28]).abs().max() <= 1e-5
    assert hits >= 5


def test_dataset_training_path_matches_augment_stack(tmp_path):
    """The dataset converts only the needed window to float; same result as augment_stack on the
    whole float stack, for every combination of augmentations."""
    seqs = [[pattern(64, 80, seed=10 * i + k) for k in range(8)] for i in range(3)]
    write_dataset(tmp_path, seqs)
    for cfg in (AugmentConfig(crop_size=(24, 32)), AugmentConfig(crop_size=(24, 32), **ALL_ON),
                AugmentConfig(crop_size=None, **ALL_ON)):
        ds = Blur2VidDataset(tmp_path, "train", augment=cfg, seed=11)
        for epoch in (0, 1):
            ds.set_epoch(epoch)
            for i, seq in enumerate(seqs):
                full = torch.stack([as_tensor(a) for a in seq])
                ref = augment_stack(full, cfg, torch.Generator().manual_seed(_aug_seed(ds, i)))
                item = ds[i]
                assert torch.allclose(torch.cat([item["blur"][None], item["frames"]]), ref, atol=1e-6)


def test_jitter_and_noise_statistics():
    """Jitter scales brightness and contrast within the configured ranges; noise has the configured
    variance on the 0..255 scale."""
    x = torch.full((2, 3, 64, 64), 0.5)
    noisy = augment_stack(x, AugmentConfig(crop_size=None, affine_p=0, jitter_p=0, noise_p=1.0, noise_var=(30, 30)),
                          torch.Generator().manual_seed(0))
    assert abs(float((noisy[0] * 255 - 127.5).var()) - 30) < 3
    assert torch.equal(noisy[1], x[1]) and torch.equal(x, torch.full((2, 3, 64, 64), 0.5))  # input only, x untouched
    both = augment_stack(x, AugmentConfig(crop_size=None, affine_p=0, jitter_p=0, noise_p=1.0, noise_var=(30, 30),
                                          noise_targets=True), torch.Generator().manual_seed(0))
    assert torch.equal(both[0], noisy[0]) and torch.equal(both[0], both[1])  # the reference: the same field in all
    for seed in range(10):
        out = augment_stack(x, AugmentConfig(crop_size=None, affine_p=0, jitter_p=1.0, noise_p=0),
                            torch.Generator().manual_seed(seed))
        assert 0.6 * 0.5 - 1e-6 <= float(out.mean()) <= 1.4 * 0.5 + 1e-6


# --- B-AIST++ boxes --------------------------------------------------------------------------------------

def _box_dataset(root: Path, bbox, partition):
    img = np.zeros((120, 100, 3), np.uint8)
    img[30:90, 20:70] = 255  # the "person": white inside the box
    write_dataset(root, [[img] * 8], partition=partition, bbox=bbox)


@pytest.mark.parametrize("partition,expected", [("train", (192, 192)), ("val", (192, 160)), ("test", (192, 160))])
@pytest.mark.parametrize("kind", ["inline", "pickle_list", "pickle_array"])
def test_bbox_crop_sizes(tmp_path, partition, expected, kind):
    box = [20, 30, 70, 90, 0.98]
    if kind == "inline":
        bbox = box
    else:
        value = box if kind == "pickle_list" else np.array(box)
        (tmp_path / "box.pkl").write_bytes(pickle.dumps({"bbox": value}))
        bbox = "box.pkl"
    _box_dataset(tmp_path, bbox, partition)
    augment = AugmentConfig(crop_size=None, affine_p=0, jitter_p=0, noise_p=0) if partition == "train" else None
    ds = Blur2VidDataset(tmp_path, partition, augment=augment)
    item = ds[0]
    assert (BOX_SIZE_TRAIN, BOX_SIZE_EVAL) == ((192, 192), (192, 160))  # H x W, the reference's B-AIST++ crops
    assert item["blur"].shape == (3,) + expected and item["frames"].shape == (7, 3) + expected
    # the crop is around the box: its centre is the white person, the box fills most of the output
    assert float(item["blur"][:, 80:112, 64:96].min()) > 0.99
    assert float(item["blur"].mean()) > 0.6
    for frame in item["frames"]:
        assert torch.equal(frame, item["blur"])


def test_crop_size_really_trained_on(tmp_path):
    """check_image_sizes returns the crop a run trains on: --crop_size, capped at BOX_SIZE_TRAIN for boxed data
    (recorded as trained_crop, which test_blur2vid.py --tile crop reads)."""
    from datasets.blur2vid import check_image_sizes
    _box_dataset(tmp_path / "boxed", [20, 30, 70, 90], "train")
    write_dataset(tmp_path / "plain", [[np.zeros((120, 100, 3), np.uint8)] * 8], partition="train")
    boxed = Blur2VidDataset(tmp_path / "boxed", "train", augment=AugmentConfig(crop_size=256))
    plain = Blur2VidDataset(tmp_path / "plain", "train", augment=AugmentConfig(crop_size=64))
    assert check_image_sizes(boxed, 256, boxed) == 192 and check_image_sizes(boxed, 128, boxed) == 128
    assert check_image_sizes(plain, 64, plain) == 64 and check_image_sizes(None, None, plain) is None
    with pytest.raises(FlagError, match="--crop_size 101 is larger"):
        check_image_sizes(plain, 101, plain)


def test_crop_to_box_without_margin_is_the_box():
    stack = torch.rand(2, 3, 50, 60)
    out = crop_to_box(stack, [10, 5, 40, 45], (40, 30), 0.0)
    assert torch.equal(out, stack[:, :, 5:45, 10:40])


def test_crop_to_box_margins_grow_towards_borders():
    stack = torch.arange(50 * 60, dtype=torch.float32).reshape(1, 1, 50, 60).expand(1, 3, 50, 60)
    # margin 0.5: left edge 10 -> 5, top 5 -> 2.5 (floor 2), right 40 -> 50, bottom 45 -> 47.5 (ceil 48)
    out = crop_to_box(stack, [10, 5, 40, 45], (46, 45), 0.5)
    assert torch.equal(out, stack[:, :, 2:48, 5:50])


def test_bbox_train_margins_are_random_but_seeded(tmp_path):
    _box_dataset(tmp_path, [20, 30, 70, 90], "train")
    cfg = AugmentConfig(crop_size=None, affine_p=0, jitter_p=0, noise_p=0)
    a = Blur2VidDataset(tmp_path, "train", augment=cfg)
    b = Blur2VidDataset(tmp_path, "train", augment=cfg)
    first = a[0]["blur"]
    assert torch.equal(first, b[0]["blur"])
    a.set_epoch(1)
    assert not torch.equal(first, a[0]["blur"])


# --- the synthetic generator --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_photo():
    return synthetic.prepare_photo(synthetic.load_photo("astronaut"), 32)


def _render(photo, seed, **kw):
    cfg = synthetic.SyntheticConfig(size=32, subframes=5, **kw)
    return synthetic.render_sequence(photo, cfg, torch.Generator().manual_seed(seed)), cfg


@pytest.mark.parametrize("foreground_p", [0.0, 1.0])
def test_synthetic_deterministic_per_seed(small_photo, foreground_p):
    a, _ = _render(small_photo, 1, foreground_p=foreground_p)
    b, _ = _render(small_photo, 1, foreground_p=foreground_p)
    c, _ = _render(small_photo, 2, foreground_p=foreground_p)
    for key in ("subframes", "sharp", "blur"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["blur"], c["blur"])


def test_srgb_linear_round_trip():
    x = torch.linspace(0, 1, 1001)
    lin = synthetic.srgb_to_linear(x)
    assert torch.allclose(synthetic.linear_to_srgb(lin), x, atol=2e-6)
    assert bool((lin[1:] > lin[:-1]).all()) and float(lin[0]) == 0.0 and abs(float(lin[-1]) - 1) < 1e-6
    assert abs(float(synthetic.srgb_to_linear(torch.tensor(0.5))) - 0.21404) < 1e-4  # the sRGB curve


@pytest.mark.parametrize("seed", [0, 3])
def test_synthetic_blur_is_linear_light_mean_and_sharp_is_slot_centre(small_photo, seed):
    out, cfg = _render(small_photo, seed, foreground_p=1.0 if seed else 0.0)
    sub = out["subframes"]
    assert sub.shape == (7 * 5, 3, 32, 32) and out["sharp"].shape == (7, 3, 32, 32) and out["blur"].shape == (3, 32, 32)
    expected = synthetic.linear_to_srgb(synthetic.srgb_to_linear(sub).mean(0))
    assert torch.allclose(out["blur"], expected, atol=1e-6)
    assert not torch.allclose(out["blur"], sub.mean(0), atol=1e-3)  # not a plain sRGB mean
    for k in range(7):
        assert torch.equal(out["sharp"][k], sub[k * 5 + 2])
    for k in range(6):  # motion between consecutive frames
        assert float((out["sharp"][k + 1] - out["sharp"][k]).abs().mean()) > 2e-3
    for k in range(7):
        assert float((out["blur"] - out["sharp"][k]).abs().mean()) > 1e-3
    assert float(sub.min()) >= 0 and float(sub.max()) <= 1


class _Recorder:
    """Stands in for DatasetWriter: records what generate() writes."""

    def __init__(self):
        self.entries = []

    def add_sequence(self, entry_id, partition, folder, blur, frames, order="ignore", extra=None, stem="0000"):
        self.entries.append({"id": entry_id, "partition": partition, "blur": blur, "frames": frames, **(extra or {})})


def test_synthetic_splits_by_photograph():
    cfg = synthetic.SyntheticConfig(size=32, subframes=5, counts={"train": 6, "val": 2, "test": 3})
    rec = _Recorder()
    meta = synthetic.generate(cfg, rec, progress=False)
    assert meta["frame_per_seq"] == 7 and len(rec.entries) == 11
    by_split = {}
    for e in rec.entries:
        assert e["source"] in cfg.splits[e["partition"]]
        by_split.setdefault(e["partition"], set()).add(e["source"])
    assert [len([e for e in rec.entries if e["partition"] == s]) for s in ("train", "val", "test")] == [6, 2, 3]
    for s in by_split:
        for t in by_split:
            if s != t:
                assert not by_split[s] & by_split[t]
    assert len({e["id"] for e in rec.entries}) == 11
    # drawn from (seed, split, index): the first train sequences do not depend on the counts
    rec2 = _Recorder()
    synthetic.generate(synthetic.SyntheticConfig(size=32, subframes=5, counts={"train": 2, "val": 0, "test": 0}),
                       rec2, progress=False)
    for a, b in zip(rec.entries[:2], rec2.entries):
        assert torch.equal(a["blur"], b["blur"]) and torch.equal(a["frames"], b["frames"])


def _deadleaves(seed, exact=False, **kw):
    cfg = synthetic.SyntheticConfig(**{"size": 40, "subframes": 5, "scene": "deadleaves", "motion": "translation",
                                       "shift": (6.0, 10.0), **kw})
    return synthetic.render_sequence(None, cfg, torch.Generator().manual_seed(seed), exact=exact), cfg


@pytest.mark.parametrize("seed", [0, 5])
def test_deadleaves_translation_fast_path_equals_grid_sample(seed):
    """The translation fast path (four slices of phase-pooled canvases) equals sampling every sub-frame
    with grid_sample at 4x4 points per pixel and box-filtering."""
    fast, _ = _deadleaves(seed)
    exact, _ = _deadleaves(seed, exact=True)
    assert torch.allclose(fast["subframes"], exact["subframes"], atol=2e-5)
    assert torch.equal(fast["motion"], exact["motion"])


def test_deadleaves_sequence_is_a_known_translation():
    """Each sharp frame is frame 1 moved by k/6 of the recorded motion (checked with integer-pixel motion:
    x 6, y 0 over frames 1 -> 7 means 1 pixel per frame); the blur is the linear-light mean of the
    sub-frames; the texture has antialiased edges and many colours; deterministic per seed."""
    out, cfg = _deadleaves(3)
    again, _ = _deadleaves(3)
    other, _ = _deadleaves(4)
    assert torch.equal(out["blur"], again["blur"]) and not torch.equal(out["blur"], other["blur"])
    sub = out["subframes"]
    assert sub.shape == (35, 3, 40, 40) and out["sharp"].shape == (7, 3, 40, 40)
    assert torch.allclose(out["blur"], synthetic.linear_to_srgb(synthetic.srgb_to_linear(sub).mean(0)), atol=1e-6)
    for k in range(7):
        assert torch.equal(out["sharp"][k], sub[5 * k + 2])
    length = float(out["motion"].norm())
    assert 6 * 6 / 7 - 1e-4 <= length <= 10 * 6 / 7 + 1e-4  # frames 1 -> 7 span 6/7 of the exposure
    from utils.motion import phase_correlation
    measured, _ = phase_correlation(out["sharp"][:1], out["sharp"][-1:])
    assert torch.allclose(measured[0], out["motion"], atol=0.35)
    colours = out["sharp"][3].reshape(3, -1).t().unique(dim=0)
    assert len(colours) > 40
    # antialiased edges: many pixels are mixtures of two discs, not one of the few flat colours
    flat = (out["sharp"][3][:, 1:, :] - out["sharp"][3][:, :-1, :]).abs().sum(0) > 0.02
    assert 0.05 < float(flat.float().mean()) < 0.9


def test_deadleaves_integer_motion_shifts_frames_exactly():
    """With motion along x of exactly 1 pixel per frame, frame k+1 is frame k moved one pixel (interior)."""
    cfg = synthetic.SyntheticConfig(size=40, subframes=5, scene="deadleaves", motion="translation", shift=(7.0, 7.0))
    gen = torch.Generator().manual_seed(0)
    canvas = synthetic.dead_leaves(60, gen, (1.5, 20.0))
    # travel 7 over the exposure: 1 pixel between slot centres; centres at 30 + t * 7 along x
    n = 35
    times = (torch.arange(n, dtype=torch.float32) + 0.5) / n - 0.5
    centres = torch.stack([30 + times * 7, torch.full((n,), 30.0)], 1)
    frames = synthetic._translated_windows(canvas, synthetic.SUPERSAMPLE, 40, centres)
    sharp = frames[torch.arange(7) * 5 + 2]
    for k in range(6):  # the window moves right by one pixel: content moves left
        assert torch.allclose(sharp[k + 1][:, :, :-1], sharp[k][:, :, 1:], atol=1e-5)
    assert cfg.scene == "deadleaves"


def test_deadleaves_generate_has_no_photographs_and_records_its_world():
    cfg = synthetic.SyntheticConfig(size=32, subframes=5, scene="deadleaves", motion="translation",
                                    counts={"train": 3, "val": 1, "test": 2})
    rec = _Recorder()
    meta = synthetic.generate(cfg, rec, progress=False)
    assert [e["source"] for e in rec.entries] == ["deadleaves"] * 6
    gen = meta["generator"]
    assert gen["scene"] == "deadleaves" and gen["motion"] == "translation" and "splits" not in gen
    assert gen["radii"] == [1.5, 0.5]
    assert len({tuple(e["blur"].flatten()[:50].tolist()) for e in rec.entries}) == 6  # each its own texture


def test_deadleaves_trajectory_with_foreground_renders():
    out, _ = _deadleaves(1, motion="trajectory", foreground_p=1.0, shift=(8.0, 12.0))
    assert out["sharp"].shape == (7, 3, 40, 40) and float(out["sharp"].min()) >= 0 and float(out["sharp"].max()) <= 1
    assert float((out["sharp"][0] - out["sharp"][6]).abs().mean()) > 0.02


def test_synthetic_config_validation():
    with pytest.raises(FlagError, match="two splits"):
        synthetic.SyntheticConfig(splits={"train": ("astronaut",), "val": ("astronaut",), "test": ("coffee",)})
    with pytest.raises(FlagError, match="odd"):
        synthetic.SyntheticConfig(subframes=6)
    with pytest.raises(FlagError, match="at least 32"):
        synthetic.SyntheticConfig(size=16)
    with pytest.raises(FlagError, match="--scene"):
        synthetic.SyntheticConfig(scene="clouds")
    with pytest.raises(FlagError, match="--motion"):
        synthetic.SyntheticConfig(motion="spin")
    with pytest.raises(FlagError, match="--radii"):
        synthetic.SyntheticConfig(radii=(0.1, 0.5))

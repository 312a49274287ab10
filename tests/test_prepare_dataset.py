"""prepare_dataset.py: the embedded synthetic dataset and the `frames` mode, end to end through main(argv)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _cli import one_line_error
import torch
from PIL import Image
from torch.utils.data import DataLoader

import prepare_dataset
from datasets import synthetic
from datasets.blur2vid import Blur2VidDataset
from datasets.from_frames import sharp_indices
from datasets.metadata import load_split

SYN = ["--size", "32", "--num_train", "3", "--num_val", "1", "--num_test", "2", "--subframes", "5"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These tensors are tiny: intra-op threads only add overhead (a lot of it on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tree(root: Path) -> set:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def to_tensor(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).float() / 255.0


# --- synthetic ---------------------------------------------------------------------------------------------

def test_synthetic_end_to_end(tmp_path, capsys):
    out = tmp_path / "syn"
    assert prepare_dataset.main(["synthetic", "--out", str(out)] + SYN) == 0
    assert "| train | 3 | 32x32 |" in capsys.readouterr().out
    assert tree(tmp_path) == {"syn"} | {f"syn/{p}" for p in tree(out)}  # nothing outside --out
    assert not (out / ".incomplete").exists()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["frame_per_seq"] == 7 and meta["generator"]["kind"] == "synthetic"
    counts = {s: 0 for s in ("train", "val", "test")}
    for e in meta["data"]:
        counts[e["partition"]] += 1
        assert e["source"] in synthetic.DEFAULT_SPLITS[e["partition"]]
    assert counts == {"train": 3, "val": 1, "test": 2}
    for split, n in counts.items():
        _, entries = load_split(out, split)
        assert len(entries) == n
    ds = Blur2VidDataset(out, "train")
    batches = list(DataLoader(ds, batch_size=2, num_workers=0))
    assert [b["blur"].shape[0] for b in batches] == [2, 1]
    assert batches[0]["frames"].shape == (2, 7, 3, 32, 32)
    # what was written is the renderer's output, rounded to 8 bits
    photo = synthetic.prepare_photo(synthetic.load_photo("astronaut"), 32)
    cfg = synthetic.SyntheticConfig(size=32, subframes=5)
    ref = synthetic.render_sequence(photo, cfg, torch.Generator().manual_seed(synthetic._seed(0, "train", 0)))
    first = ds[0]
    assert ds.entries[0].raw["source"] == "astronaut"
    assert (first["blur"] - ref["blur"]).abs().max() <= 0.5 / 255 + 1e-6
    assert (first["frames"] - ref["sharp"]).abs().max() <= 0.5 / 255 + 1e-6


def test_synthetic_deadleaves_translation_end_to_end(tmp_path, capsys):
    """--scene deadleaves --motion translation: files equal the renderer's output, the metadata records the
    world, the oracle order works from the recorded motion, and another --seed gives other textures."""
    out = tmp_path / "dl"
    flags = ["--scene", "deadleaves", "--motion", "translation", "--travel", "6", "10", "--radii", "2", "0.4"]
    assert prepare_dataset.main(["synthetic", "--out", str(out)] + SYN + flags) == 0
    assert "| test | 2 | 32x32 |" in capsys.readouterr().out
    meta = json.loads((out / "metadata.json").read_text())
    gen = meta["generator"]
    assert (gen["scene"], gen["motion"], gen["travel"], gen["radii"]) == ("deadleaves", "translation", [6.0, 10.0], [2.0, 0.4])
    cfg = synthetic.SyntheticConfig(size=32, subframes=5, scene="deadleaves", motion="translation", shift=(6.0, 10.0),
                                    radii=(2.0, 0.4))
    ref = synthetic.render_sequence(None, cfg, torch.Generator().manual_seed(synthetic._seed(0, "test", 1)))
    ds = Blur2VidDataset(out, "test")
    assert (ds[1]["frames"] - ref["sharp"]).abs().max() <= 0.5 / 255 + 1e-6
    assert ds.entries[1].raw["motion"] == [round(v, 3) for v in ref["motion"].tolist()]
    from datasets.ordering import oracle_orders
    orders = oracle_orders(meta)
    assert all((orders[i] == "reverse") == (e["motion"][0] < 0) for i, e in enumerate(meta["data"]))
    other = tmp_path / "dl2"
    assert prepare_dataset.main(["synthetic", "--out", str(other), "--seed", "1"] + SYN + flags) == 0
    assert not torch.equal(Blur2VidDataset(other, "test")[1]["blur"], ds[1]["blur"])


def test_synthetic_same_seed_same_files(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    small = ["--size", "32", "--num_train", "2", "--num_val", "1", "--num_test", "1", "--subframes", "5"]
    assert prepare_dataset.main(["synthetic", "--out", str(a)] + small) == 0
    assert prepare_dataset.main(["synthetic", "--out", str(b)] + small) == 0
    assert prepare_dataset.main(["synthetic", "--out", str(c), "--seed", "1"] + small) == 0
    files = sorted(p for p in tree(a) if p.endswith(".png"))
    assert files == sorted(p for p in tree(b) if p.endswith(".png"))
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in files)
    assert any((a / p).read_bytes() != (c / p).read_bytes() for p in files)


def test_refuses_to_overwrite_without_flag(tmp_path, capsys):
    out = tmp_path / "syn"
    small = ["--size", "32", "--num_train", "1", "--num_val", "1", "--num_test", "1", "--subframes", "5"]
    assert prepare_dataset.main(["synthetic", "--out", str(out)] + small) == 0
    before = (out / "metadata.json").read_bytes()
    capsys.readouterr()
    err = one_line_error(capsys, prepare_dataset.main, ["synthetic", "--out", str(out), "--seed", "3"] + small)
    assert "--overwrite" in err and str(out) in err
    assert (out / "metadata.json").read_bytes() == before and not (out / ".incomplete").exists()
    assert prepare_dataset.main(["synthetic", "--out", str(out), "--seed", "3", "--overwrite"] + small) == 0
    assert (out / "metadata.json").read_bytes() != before


def test_overwrite_names_what_it_kept_of_the_old_dataset(tmp_path, capsys):
    """A smaller dataset over a bigger one, beside an order file made for the old data: the old entries the
    new metadata does not list and the order file are kept (never deleted) and named in one note."""
    out = tmp_path / "syn"
    small = ["--size", "32", "--num_val", "1", "--num_test", "1", "--subframes", "5"]
    assert prepare_dataset.main(["synthetic", "--out", str(out), "--num_train", "4"] + small) == 0
    old = {p.name for p in out.iterdir()}
    (out / "metadata_hc.json").write_text("{}")
    capsys.readouterr()
    assert prepare_dataset.main(["synthetic", "--out", str(out), "--num_train", "4", "--seed", "2", "--overwrite"]
                                + small) == 0
    assert capsys.readouterr().err.count("note: --overwrite kept") == 1  # the order file only
    assert prepare_dataset.main(["synthetic", "--out", str(out), "--num_train", "1", "--overwrite"] + small) == 0
    err = capsys.readouterr().err
    new = {e["blur_path"].split("/")[0] for e in json.loads((out / "metadata.json").read_text())["data"]}
    gone = sorted(old - new - {"metadata.json"})
    assert gone and all((out / name).exists() for name in gone) and (out / "metadata_hc.json").exists()
    note = [line for line in err.splitlines() if line.startswith("note: --overwrite kept")]
    assert len(note) == 1 and "metadata_hc.json" in note[0] and gone[0] in note[0], err


def test_refuses_a_non_empty_folder_that_is_not_a_dataset(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "000000").mkdir(parents=True)
    (out / "000000" / "notes.txt").write_text("keep me")
    small = ["--size", "32", "--num_train", "1", "--num_val", "1", "--num_test", "1", "--subframes", "5"]
    assert "not empty" in one_line_error(capsys, prepare_dataset.main, ["synthetic", "--out", str(out)] + small)
    assert (out / "000000" / "notes.txt").read_text() == "keep me" and tree(out) == {"000000", "000000/notes.txt"}


def _crash_after(monkeypatch, n):
    real = synthetic.render_sequence
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > n:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)
    monkeypatch.setattr(synthetic, "render_sequence", flaky)


def test_crash_leaves_no_dataset(tmp_path, monkeypatch):
    out = tmp_path / "syn"
    _crash_after(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_dataset.main(["synthetic", "--out", str(out)] + SYN)
    assert not (out / "metadata.json").exists() and not (out / ".incomplete").exists()
    assert not out.exists() or not any(out.iterdir())
    assert tree(tmp_path) <= {"syn"}


def test_crash_while_overwriting_keeps_the_old_dataset(tmp_path, monkeypatch):
    out = tmp_path / "syn"
    assert prepare_dataset.main(["synthetic", "--out", str(out)] + SYN) == 0
    before = {p: (out / p).read_bytes() for p in tree(out) if (out / p).is_file()}
    _crash_after(monkeypatch, 3)
    with pytest.raises(RuntimeError):
        prepare_dataset.main(["synthetic", "--out", str(out), "--seed", "5", "--overwrite"] + SYN)
    assert {p: (out / p).read_bytes() for p in tree(out) if (out / p).is_file()} == before
    assert not (out / ".incomplete").exists()
    load_split(out, "train")


def test_summary_mode(tmp_path, capsys):
    out = tmp_path / "syn"
    assert prepare_dataset.main(["synthetic", "--out", str(out)] + SYN) == 0
    capsys.readouterr()
    assert prepare_dataset.main(["summary", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| val | 1 | 32x32 |" in text and "| test | 2 | 32x32 |" in text
    (out / "000000" / "sharp" / "0000_3.png").unlink()
    err = one_line_error(capsys, prepare_dataset.main, ["summary", "--out", str(out)])
    assert err.startswith("error:") and "000000/0000" in err and "0000_3.png" in err


# --- frames ------------------------------------------------------------------------------------------------

FH, FW, NFRAMES = 32, 40, 30


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """3 videos x 30 frames of 32x40: a textured photo panned 1-2 pixels per frame (every frame differs)."""
    src = tmp_path_factory.mktemp("videos")
    photo = _texture()
    for v in range(3):
        folder = src / f"clip_{v}"
        folder.mkdir()
        for f in range(NFRAMES):
            y, x = 2 * v + f // 2, 3 * v + f * 2
            Image.fromarray(photo[y:y + FH, x:x + FW]).save(folder / f"{f + 1:08d}.png")
    return src


def _texture() -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((120, 80), Image.BICUBIC)).astype(np.int16)
    return np.clip(big + rng.integers(-10, 11, big.shape), 0, 255).astype(np.uint8)


def _frames(videos: Path, name: str, names: list) -> torch.Tensor:
    return torch.stack([to_tensor(videos / name / n) for n in names])


@pytest.mark.parametrize("linear", [True, False])
def test_frames_mode(tmp_path, videos, linear):
    out = tmp_path / "out"
    argv = ["frames", "--src", str(videos), "--out", str(out), "--window", "14",
            "--val_videos", "clip_1", "--test_videos", "clip_2"] + ([] if linear else ["--no_linear"])
    assert prepare_dataset.main(argv) == 0
    assert tree(tmp_path) == {"out"} | {f"out/{p}" for p in tree(out)}
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["frame_per_seq"] == 7 and meta["generator"]["linear_light"] == linear
    assert len(meta["data"]) == 6  # 2 windows (frames 1-14, 15-28) per video
    picks = sharp_indices(14, 7)
    assert picks == [1, 3, 5, 7, 9, 11, 13]  # the centre of each 2-frame slot (its later frame)
    splits = {}
    for e in meta["data"]:
        splits.setdefault(e["video"], set()).add(e["partition"])
        start = int(Path(e["blur_path"]).stem)
        window = [f"{start + i + 1:08d}.png" for i in range(14)]
        assert e["source_frames"] == [window[i] for i in picks]
        # sharp frames are the source frames, bit for bit
        for k, name in enumerate(e["source_frames"], start=1):
            assert torch.equal(to_tensor(out / e[f"frame{k:03d}_path"]), to_tensor(videos / e["video"] / name))
        # the blur is the (linear-light) mean of the window, to 8-bit rounding
        stack = _frames(videos, e["video"], window)
        expected = synthetic.linear_light_mean(stack, 0) if linear else stack.mean(0)
        blur = to_tensor(out / e["blur_path"])
        assert (blur - expected).abs().max() <= 0.5 / 255 + 1e-5
        other = stack.mean(0) if linear else synthetic.linear_light_mean(stack, 0)
        assert (blur - other).abs().max() > 1.5 / 255  # and not the other mean
    assert splits == {"clip_0": {"train"}, "clip_1": {"val"}, "clip_2": {"test"}}
    for split, n in (("train", 2), ("val", 2), ("test", 2)):
        ds = Blur2VidDataset(out, split)
        assert len(ds) == n and ds[0]["frames"].shape == (7, 3, FH, FW)


def test_frames_mode_fraction_splits_by_video(tmp_path, videos):
    out = tmp_path / "out"
    assert prepare_dataset.main(["frames", "--src", str(videos), "--out", str(out), "--window", "14",
                                 "--stride", "7", "--val_fraction", "0.34", "--test_fraction", "0.34"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert len(meta["data"]) == 3 * 3  # window starts 0, 7, 14 in 30 frames
    splits = {}
    for e in meta["data"]:
        splits.setdefault(e["video"], set()).add(e["partition"])
    assert all(len(s) == 1 for s in splits.values())  # no video in two splits
    assert sorted(next(iter(s)) for s in splits.values()) == ["test", "train", "val"]


def test_frames_mode_errors(tmp_path, videos, capsys):
    main = prepare_dataset.main
    assert "--window" in one_line_error(capsys, main, ["frames", "--src", str(videos), "--out", str(tmp_path / "a"),
                                                       "--window", "31"])
    assert "--src" in one_line_error(capsys, main, ["frames", "--src", str(tmp_path / "none"), "--out",
                                                    str(tmp_path / "b")])
    assert "clip_9" in one_line_error(capsys, main, ["frames", "--src", str(videos), "--out", str(tmp_path / "c"),
                                                     "--window", "14", "--val_videos", "clip_9"])
    assert not any((tmp_path / d / "metadata.json").exists() for d in "abc")
    assert not any((tmp_path / d / ".incomplete").exists() for d in "abc")


@pytest.mark.parametrize("ext", ["bmp", "tif", "jpg"])
def test_frames_mode_reads_other_formats(tmp_path, ext):
    """REDS/GoPro/Adobe240 frames come as PNG or JPEG; BMP and TIFF (read through PIL) work too."""
    src = tmp_path / "src" / "clip"
    src.mkdir(parents=True)
    tex = _texture()
    for f in range(7):
        Image.fromarray(tex[f:f + FH, 2 * f:2 * f + FW]).save(src / f"{f:04d}.{ext}")
    out = tmp_path / "out"
    assert prepare_dataset.main(["frames", "--src", str(tmp_path / "src"), "--out", str(out), "--window", "7",
                                 "--val_fraction", "0", "--test_fraction", "0"]) == 0
    ds = Blur2VidDataset(out, "train")
    assert len(ds) == 1
    item = ds[0]
    for k in range(7):  # JPEG decoders may differ by a level or two
        assert (item["frames"][k] - to_tensor(src / f"{k:04d}.{ext}")).abs().max() <= (3 / 255 if ext == "jpg" else 0)

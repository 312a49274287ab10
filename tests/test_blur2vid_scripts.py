"""train_blur2vid.py, test_blur2vid.py and inference.py, and the backbone registry (models/__init__.py).

Jin's official networks through the command line (the fixture, written as the four official files),
tiny training runs with every loss, exact resume, test figures against an independent computation,
inference on a real blurry photo, and the one-line errors. Narrow models (width 0.125) on 40x40 images
keep it fast; scripts run in-process through main(argv), plus one command-line call per script.
"""
import csv
import json
import math
import os
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from _cli import one_line_error
from _tiny import written_dataset
import torch
import torch.nn.functional as F
from PIL import Image

import inference
import test_blur2vid
import train_blur2vid
from datasets.blur2vid import Blur2VidDataset
from datasets.transforms import read_image
from models import BACKBONES, backbone_checkpoint_fields, build_backbone, load_backbone
from models.backbones.jin import OFFICIAL_FILES, JinBackbone
from models.hypercut import HyperCUT, hit_con, load_hypercut
from utils.checkpoint import CheckpointError
from utils.images import save_png, to_uint8
from utils.metrics.image import psnr, ssim
from utils.metrics.lpips import ALEXNET_WEIGHTS_FILE

REPO = Path(__file__).resolve().parents[1]
REAL_BLURRY = REPO.parent / "shared" / "data" / "real_blurry"
SIZE = 40  # HyperCUT's f needs 33 pixels; every image here has this size, so conv set-ups are reused
WIDTH = "0.125"


# --- helpers and fixtures -----------------------------------------------------------------------------

def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def read_unit(path) -> torch.Tensor:
    """An 8-bit image as RGB float [0, 1] (3, H, W), through Pillow (independent of read_image)."""
    return torch.from_numpy(read_png(path).astype(np.float32) / 255.0).permute(2, 0, 1)


def assert_png_matches(png: np.ndarray, frame: torch.Tensor, tol: float = 1e-4):
    """png (H, W, 3) uint8 equals frame (3, H, W) float quantised (clamp, x255, round), allowing one level
    where the float lies within tol of a rounding boundary (or of the clamp limits)."""
    v = frame.double().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0
    diff = np.abs(png.astype(np.int64) - np.round(v).astype(np.int64))
    near = np.abs(v - np.floor(v) - 0.5) <= tol * 255.0
    assert diff.max() <= 1
    assert np.all(near[diff == 1]), f"{int((diff == 1).sum())} pixels off by one away from a rounding boundary"


def _sequence(gen, size=SIZE):
    """7 frames of a window moving on a straight line over a smooth texture; blur = their mean."""
    coarse = torch.rand(1, 3, size // 5, size // 5, generator=gen)
    tex = F.interpolate(coarse, size=(2 * size, 2 * size), mode="bilinear", align_corners=False)[0]
    dx, dy = (int(v) for v in torch.randint(-3, 4, (2,), generator=gen))
    x0, y0 = size // 2 - 3 * dx, size // 2 - 3 * dy
    frames = [tex[:, y0 + k * dy:y0 + k * dy + size, x0 + k * dx:x0 + k * dx + size] for k in range(7)]
    return torch.stack(frames).mean(0), frames


def make_dataset(root: Path, counts=None) -> Path:
    counts = counts or {"train": 4, "val": 2, "test": 2}
    gen = torch.Generator().manual_seed(0)
    sequences = []
    for split, n in counts.items():
        for _ in range(n):
            blur, frames = _sequence(gen)
            sequences.append({"partition": split, "blur": blur, "frames": frames})
    return written_dataset(root, sequences, name="Tiny", frame_per_seq=7)


def train_argv(root, ckpt_dir, exp, *extra):
    return ["--metadata_root", str(root), "--exp_name", exp, "--checkpoints_dir", str(ckpt_dir),
            "--width_mult", WIDTH, "--crop_size", str(SIZE), "--batch_size", "2", "--num_workers", "0",
            "--device", "cpu", "--val_epoch", "1", "--display_step", "0", "--lr", "1e-3", "--train_step", "1", *extra]


def run_train(argv) -> dict:
    args = train_blur2vid.build_parser().parse_args(argv)
    train_blur2vid.check_args(args)
    return train_blur2vid.train(args)


def save_narrow_checkpoint(path, seed=0) -> Path:
    torch.manual_seed(seed)
    model = build_backbone("Jin", width_mult=float(WIDTH))
    torch.save({"model": model.state_dict(), **backbone_checkpoint_fields(model), "epoch": 0, "step": 0,
                "args": {}}, path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: on a busy 2-core machine a second OpenMP thread makes them many times
    slower (threads wait for each other), never faster. Subprocesses get OMP_NUM_THREADS=1 (SUBPROCESS_ENV)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="module")
def official_dir(jin_reference, tmp_path_factory):
    """Jin's four official files, as plain torch.save of {"state_dict_G": ...} with the official names."""
    folder = tmp_path_factory.mktemp("jin_official")
    for name, filename, _ in OFFICIAL_FILES:
        torch.save({"state_dict_G": jin_reference[0][name]}, folder / filename)
    return folder


@pytest.fixture(scope="module")
def fixture_pngs(jin_reference, tmp_path_factory):
    """The fixture's blurry images as PNGs (they are exactly 8-bit, so nothing is lost)."""
    folder = tmp_path_factory.mktemp("fixture_blur")
    blur = jin_reference[1]
    paths = [save_png(blur[i], folder / f"blur_{i}.png") for i in range(blur.shape[0])]
    for i, p in enumerate(paths):
        assert torch.equal(read_image(p), blur[i])
    return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def hypercut_ckpt(tmp_path_factory):
    """A tiny untrained HyperCUT in our checkpoint format (reference BGR/ImageNet input convention)."""
    torch.manual_seed(1)
    model = HyperCUT(out_dim=32)
    path = tmp_path_factory.mktemp("hypercut") / "hypercut.pth"
    torch.save({"model": model.state_dict(), **model.checkpoint_fields(), "epoch": 1}, path)
    return path


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Two steps of the naive loss (one epoch), a strip every step."""
    ckpt = tmp_path_factory.mktemp("runs")
    history = run_train(train_argv(data, ckpt, "naive", "--epochs", "1", "--display_step", "1"))
    return ckpt / "naive", history


# --- the registry and load_backbone -------------------------------------------------------------------

def test_registry_round_trip(tmp_path):
    assert "Jin" in BACKBONES.names()
    model = build_backbone("Jin", width_mult=0.25)
    assert isinstance(model, JinBackbone) and model.width_mult == 0.25
    fields = backbone_checkpoint_fields(model)
    assert fields == {"backbone": {"name": "Jin", "width_mult": 0.25},
                      "input_convention": {"channel_order": "RGB", "mean": [0.0] * 3, "std": [1.0] * 3}}
    assert backbone_checkpoint_fields(JinBackbone(0.125))["backbone"] == {"name": "Jin", "width_mult": 0.125}
    path = tmp_path / "m.pth"
    torch.save({"model": model.state_dict(), **fields, "epoch": 3, "step": 9, "args": {}}, path)
    loaded = load_backbone(path)
    assert not loaded.training and loaded.width_mult == 0.25
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    # a checkpoint's recorded input convention is the one the loaded model uses
    bgr = {"channel_order": "BGR", "mean": [0.5] * 3, "std": [0.25] * 3}
    torch.save({"model": model.state_dict(), **fields, "input_convention": bgr}, path)
    assert load_backbone(path).input_convention.to_dict() == bgr
    with pytest.raises(ValueError, match="unknown backbone 'Nope'.*Jin"):
        build_backbone("Nope")


def test_load_backbone_errors(tmp_path, official_dir, hypercut_ckpt):
    def error(path, **kwargs) -> str:
        with pytest.raises(CheckpointError) as info:
            load_backbone(path, **kwargs)
        msg = str(info.value)
        assert "\n" not in msg
        return msg

    narrow = save_narrow_checkpoint(tmp_path / "narrow.pth")
    msg = error(hypercut_ckpt)
    assert str(hypercut_ckpt) in msg and "HyperCUT" in msg and "--hypercut_path" in msg
    plain = tmp_path / "hypercut_plain.pth"
    torch.save(torch.load(hypercut_ckpt, weights_only=True)["model"], plain)  # the authors' release format
    assert "HyperCUT" in error(plain)
    msg = error(narrow, width_mult=1.0)
    assert str(narrow) in msg and "width_mult 0.125" in msg
    msg = error(official_dir, width_mult=0.125)  # the official weights are width 1
    assert "center_v3.pth" in msg and "width" in msg
    msg = error(official_dir / "center_v3.pth")
    assert "official files" in msg and "folder" in msg
    assert "not found" in error(tmp_path / "nowhere.pth")
    (tmp_path / "empty").mkdir()
    assert "center_v3.pth" in error(tmp_path / "empty") and "missing" in error(tmp_path / "empty")
    ckpt = torch.load(narrow, weights_only=True)
    torch.save({**ckpt, "backbone": {"name": "Purohit9"}}, tmp_path / "other.pth")
    assert "unknown backbone 'Purohit9'" in error(tmp_path / "other.pth")
    torch.save({**ckpt, "model": {k: v for k, v in ckpt["model"].items() if k != "center.conv3.weight"}},
               tmp_path / "short.pth")
    assert "1 missing key" in error(tmp_path / "short.pth") and "center.conv3.weight" in error(tmp_path / "short.pth")
    torch.save({**ckpt, "backbone": {"name": "Jin", "width_mult": 0.25}}, tmp_path / "mislabelled.pth")
    msg = error(tmp_path / "mislabelled.pth")
    assert "has shape" in msg and "width_mult': 0.25" in msg
    torch.save({"weights": 1}, tmp_path / "junk.pth")
    assert "not a deblurring checkpoint" in error(tmp_path / "junk.pth")


def test_scripts_report_checkpoint_errors(tmp_path, capsys, hypercut_ckpt, data):
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / "x.png")
    err = one_line_error(capsys, inference.main, ["--pretrained_path", str(hypercut_ckpt), "--blur_path",
                                                  str(tmp_path / "x.png"), "--output_path", str(tmp_path / "o"),
                                                  "--device", "cpu"])
    assert str(hypercut_ckpt) in err and "HyperCUT" in err
    err = one_line_error(capsys, test_blur2vid.main, ["--metadata_root", str(data), "--pretrained_path",
                                                      str(hypercut_ckpt), "--no_lpips", "--device", "cpu"])
    assert str(hypercut_ckpt) in err


# --- Jin's official networks through inference.py -----------------------------------------------------

def test_inference_cli_reproduces_official_frames(official_dir, fixture_pngs, jin_reference, tmp_path):
    """The command line: the four official files and the fixture's blurry PNGs -> the official frames."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "inference.py", "--backbone", "Jin", "--pretrained_path",
                           str(official_dir), "--blur_path", str(fixture_pngs[0].parent), "--output_path",
                           str(out), "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=SUBPROCESS_ENV)
    assert proc.returncode == 0, proc.stderr
    frames = jin_reference[2]
    for i, png in enumerate(fixture_pngs):
        written = sorted(p.name for p in (out / png.stem).iterdir())
        assert written == [f"frame_{k}.png" for k in range(1, 8)]  # no temporary files left
        for k in range(7):
            image = read_png(out / png.stem / f"frame_{k + 1}.png")
            assert image.shape == (40, 60, 3)
            assert_png_matches(image, frames[i, k])


def test_inference_float_frames_match_official(official_dir, fixture_pngs, jin_reference):
    model = load_backbone(official_dir)
    assert model.width_mult == 1.0 and not model.training
    for i, png in enumerate(fixture_pngs):
        frames = inference.deblur(model, read_image(png), torch.device("cpu"))
        assert frames.shape == (7, 3, 40, 60)
        assert (frames - jin_reference[2][i]).abs().max().item() < 1e-4


# --- training -----------------------------------------------------------------------------------------

def test_training_run_outputs(trained):
    run_dir, history = trained
    assert len(history["losses"]) == 2 and all(math.isfinite(v) for v in history["losses"])
    assert set(history["terms"][0]) == {"total"}
    ckpt = torch.load(run_dir / "models" / "0001.pth", weights_only=True)
    assert {"model", "backbone", "input_convention", "epoch", "step", "args"} <= set(ckpt)
    assert ckpt["backbone"] == {"name": "Jin", "width_mult": 0.125}
    assert ckpt["epoch"] == 1 and ckpt["step"] == 2 and ckpt["args"]["loss_type"] == "naive"
    state = torch.load(run_dir / "training_states" / "latest.pth", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "backbone"} <= set(state)
    assert (run_dir / "training_states" / "0001.pth").is_file()
    vis = sorted(p.name for p in (run_dir / "visualisations").iterdir())
    assert vis == ["train_step0000001.png", "train_step0000002.png", "val_epoch0001.png"]
    strip = read_png(run_dir / "visualisations" / "train_step0000001.png")
    # two sequences of blur | 7 predictions | 7 ground-truth frames, 2-pixel gaps
    assert strip.shape == (2 * SIZE + 2, 15 * SIZE + 4, 3)
    assert set(history["val"][1]) == {"pPSNR", "pSSIM", "PSNR", "SSIM"}
    assert (run_dir / "args.json").is_file() and "val epoch 1" in (run_dir / "log.txt").read_text()


@pytest.mark.parametrize("loss_type", ["order_inv", "hypercut"])
def test_training_losses_and_tensorboard(loss_type, data, hypercut_ckpt, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = run_train(train_argv(data, tmp_path, loss_type, "--loss_type", loss_type, "--hypercut_path",
                                   str(hypercut_ckpt), "--epochs", "1", "--max_steps", "1", "--display_step", "1"))
    terms = {"order_inv": {"total", "pairs", "middle"}, "hypercut": {"total", "base", "reg", "flipped"}}[loss_type]
    assert len(history["losses"]) == 1 and set(history["terms"][0]) == terms
    if loss_type == "hypercut":
        t = history["terms"][0]
        assert t["total"] == pytest.approx(t["base"] + 0.2 * t["reg"], rel=1e-5) and t["reg"] > 0
    val = history["val"][1]
    assert {"pPSNR", "pSSIM", "hit", "hit_x2_x6", "hit_x3_x5", "con@2", "con@3"} <= set(val)
    assert 0.0 <= val["hit"] <= 1.0
    events = EventAccumulator(str(tmp_path / loss_type / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {f"train/{k}" for k in terms} | {"train/lr", "val/pPSNR", "val/pSSIM", "val/hit", "val/con@2"} <= scalars
    assert {"train/strip", "val/strip"} <= set(events.Tags()["images"])
    # --max_steps cut the epoch short: its model is saved, but no training state to resume from
    assert (tmp_path / loss_type / "models" / "0001.pth").is_file()
    assert not (tmp_path / loss_type / "training_states" / "latest.pth").exists()


def test_resume_is_exact(data, tmp_path):
    """2 epochs straight == 1 epoch, then --resume for the second: same losses, weights and optimiser."""
    straight = run_train(train_argv(data, tmp_path, "straight", "--epochs", "2"))
    first = run_train(train_argv(data, tmp_path, "split", "--epochs", "1"))
    second = run_train(train_argv(data, tmp_path, "split", "--epochs", "2", "--resume"))
    assert len(straight["losses"]) == 4  # 4 sequences, batch 2, 2 epochs
    assert first["losses"] + second["losses"] == straight["losses"]
    assert second["val"][2] == straight["val"][2]
    a = torch.load(tmp_path / "straight" / "training_states" / "latest.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "training_states" / "latest.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for i, s in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][i][n]) for n, v in s.items())
    assert a["scheduler"] == b["scheduler"]
    ma = torch.load(tmp_path / "straight" / "models" / "0002.pth", weights_only=True)["model"]
    mb = torch.load(tmp_path / "split" / "models" / "0002.pth", weights_only=True)["model"]
    assert all(torch.equal(v, mb[k]) for k, v in ma.items())


def test_train_cli(data, tmp_path):
    proc = subprocess.run([sys.executable, "train_blur2vid.py", *train_argv(data, tmp_path, "cli", "--epochs", "1",
                                                                        "--max_steps", "1")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=SUBPROCESS_ENV)
    assert proc.returncode == 0, proc.stderr
    assert "val epoch 1" in proc.stdout and (tmp_path / "cli" / "models" / "0001.pth").is_file()
    proc = subprocess.run([sys.executable, "train_blur2vid.py", *train_argv(tmp_path / "nowhere", tmp_path, "cli2")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=SUBPROCESS_ENV)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr


def test_train_bad_input_is_one_line(data, tmp_path, capsys, hypercut_ckpt):
    main = train_blur2vid.main
    err = one_line_error(capsys, main, train_argv(data, tmp_path, "a", "--loss_type", "hypercut"))
    assert "--hypercut_path" in err
    err = one_line_error(capsys, main, train_argv(tmp_path / "nowhere", tmp_path, "b"))
    assert "metadata" in err and "nowhere" in err
    err = one_line_error(capsys, main, train_argv(data, tmp_path, "c", "--target_frames", "1", "2", "3"))
    assert "7 frames" in err
    err = one_line_error(capsys, main, train_argv(data, tmp_path, "d", "--loss_type", "hypercut", "--hypercut_path",
                                                  str(hypercut_ckpt), "--crop_size", "24"))
    assert "at least 33x33" in err
    err = one_line_error(capsys, main, train_argv(data, tmp_path, "e", "--width_mult", "0"))
    assert "--width_mult" in err
    err = one_line_error(capsys, main, train_argv(data, tmp_path, "f", "--resume"))
    assert "no training state" in err


def test_resume_with_other_width_is_refused(trained, data, capsys):
    run_dir, _ = trained
    err = one_line_error(capsys, train_blur2vid.main,
                         train_argv(data, run_dir.parent, "naive", "--epochs", "2", "--resume", "--width_mult", "0.25"))
    assert "width_mult" in err and "0.25" in err


# --- test_blur2vid.py ---------------------------------------------------------------------------------

def _independent_figures(run_dir, data, mode):
    """pPSNR/pSSIM/PSNR/SSIM of the saved model on the test split, from the files themselves: images read
    with Pillow, the model rebuilt from the state dict, the pair/sequence rules written out here."""
    ckpt = torch.load(run_dir / "models" / "0001.pth", weights_only=True)
    model = JinBackbone(width_mult=0.125).eval()
    model.load_state_dict(ckpt["model"])
    meta = json.loads((data / "metadata.json").read_text())
    tests = [e for e in meta["data"] if e["partition"] == "test"]
    sums = {k: np.zeros(7) for k in ("pPSNR", "pSSIM", "PSNR", "SSIM")}
    preds = {}
    for e in tests:
        blur = read_unit(data / e["blur_path"])
        gt = torch.stack([read_unit(data / e[f"frame{k:03d}_path"]) for k in range(1, 8)])
        with torch.no_grad():
            pred = model(blur[None])["frames"][0]
        preds[e["id"]] = pred
        for name, metric in (("PSNR", lambda a, b: psnr(a, b, cap_db=100.0)), ("SSIM", ssim)):
            fwd = np.array([metric(pred[k], gt[k]).item() for k in range(7)])
            rev = np.array([metric(pred[6 - k], gt[k]).item() for k in range(7)])
            if mode == "pair":
                p = np.maximum((fwd + fwd[::-1]) / 2, (rev + rev[::-1]) / 2)
                p[3] = fwd[3]
            else:
                p = rev if rev.mean() > fwd.mean() else fwd
            sums[name] += fwd
            sums["p" + name] += p
    return {k: v / len(tests) for k, v in sums.items()}, preds, tests


@pytest.mark.parametrize("mode", ["pair", "sequence"])
def test_test_script_figures_and_files(trained, data, tmp_path, capsys, mode):
    run_dir, _ = trained
    out_json, images = tmp_path / "res" / "jin.json", tmp_path / "images"
    argv = ["--metadata_root", str(data), "--pretrained_path", str(run_dir / "models" / "0001.pth"),
            "--no_lpips", "--device", "cpu", "--num_workers", "0", "--batch_size", "2", "--p_mode", mode,
            "--output_json", str(out_json), "--save_images", str(images)]
    assert test_blur2vid.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| pPSNR |" in printed and "| SSIM |" in printed and "LPIPS skipped" in printed
    result = json.loads(out_json.read_text())
    for name in ("pPSNR", "pSSIM", "PSNR", "SSIM"):
        assert len(result[name]) == 7 and result[f"{name}_mean"] == pytest.approx(np.mean(result[name]))
    for name in ("pLPIPS", "LPIPS"):
        assert result[name] is None and result[f"{name}_mean"] is None
    assert result["p_mode"] == mode and result["num_sequences"] == 2 and "hit" not in result

    expected, preds, tests = _independent_figures(run_dir, data, mode)
    for name, values in expected.items():
        assert result[name] == pytest.approx(values.tolist(), rel=1e-6, abs=1e-9), name

    rows = list(csv.reader(out_json.with_suffix(".csv").read_text().splitlines()))
    assert rows[0] == ["metric"] + [f"frame_{k}" for k in range(1, 8)] + ["mean"]
    table = {r[0]: r[1:] for r in rows[1:]}
    assert list(table) == ["pPSNR", "pSSIM", "pLPIPS", "PSNR", "SSIM", "LPIPS"]
    assert [float(v) for v in table["pPSNR"]] == pytest.approx(result["pPSNR"] + [result["pPSNR_mean"]], rel=1e-12)
    assert table["LPIPS"] == [""] * 8

    for e in tests:
        folder = images / urllib.parse.quote(e["id"], safe="")  # one folder per id: "0000/0000" -> "0000%2F0000"
        assert sorted(p.name for p in folder.iterdir()) == [f"frame_{k}.png" for k in range(1, 8)]
        for k in range(7):  # the script ran a batch of 2, this one image at a time: rounding may differ
            assert_png_matches(read_png(folder / f"frame_{k + 1}.png"), preds[e["id"]][k])


def test_test_script_hit_con(trained, data, hypercut_ckpt, capsys):
    run_dir, _ = trained
    args = test_blur2vid.build_parser().parse_args(
        ["--metadata_root", str(data), "--pretrained_path", str(run_dir / "models" / "0001.pth"), "--no_lpips",
         "--device", "cpu", "--num_workers", "0", "--hypercut_path", str(hypercut_ckpt), "--split", "val"])
    result = test_blur2vid.run_test(args)
    assert result["num_sequences"] == 2 and result["split"] == "val"
    # independently: the predictions of the val images, clamped, scored by the HyperCUT
    model, hypercut = load_backbone(run_dir / "models" / "0001.pth"), load_hypercut(hypercut_ckpt)
    meta = json.loads((data / "metadata.json").read_text())
    blur = torch.stack([read_unit(data / e["blur_path"]) for e in meta["data"] if e["partition"] == "val"])
    with torch.no_grad():
        scores = hypercut.pair_scores(model(blur)["frames"].clamp(0, 1))[1]
    expected = hit_con(scores)
    for k in ("hit", "hit_x2_x6", "hit_x3_x5", "con@2", "con@3"):
        assert result[k] == expected[k], k
    assert "HyperCUT ordering" in test_blur2vid.report(result)
    # which order the predictions follow, recomputed here from the same predictions and ground truth
    val = Blur2VidDataset(data, "val", augment=None)  # the frames in the order the metadata asks for
    gt = torch.stack([val[i]["frames"] for i in range(len(val))])
    with torch.no_grad():
        pred = model(blur)["frames"]
    d_fwd = (pred[:, [0, -1]] - gt[:, [0, -1]]).pow(2).add(1e-6).sqrt().flatten(1).mean(1)
    d_rev = (pred[:, [0, -1]] - gt.flip(1)[:, [0, -1]]).pow(2).add(1e-6).sqrt().flatten(1).mean(1)
    direction = torch.where(d_fwd <= d_rev, 1.0, -1.0)
    hc_gt = torch.where(hypercut.pair_scores(gt)[1][:, 0] >= 0, 1.0, -1.0)
    hc_pred = torch.where(hypercut.pair_scores(pred.clamp(0, 1))[1][:, 0] >= 0, 1.0, -1.0)
    order = result["order_of_predictions"]
    assert order["num_sequences"] == 2
    assert order["follows_hypercut"] == float((direction == hc_gt).float().mean())
    assert order["pred_positive"] == float((hc_pred > 0).float().mean())
    assert order["hc_honest"] == float((hc_pred == direction * hc_gt).float().mean())
    assert 0.0 <= order["follows_oracle"] <= 1.0
    assert "follows_hypercut" in test_blur2vid.report(result)


def test_test_script_cli(trained, data, tmp_path):
    run_dir, _ = trained
    proc = subprocess.run([sys.executable, "test_blur2vid.py", "--metadata_root", str(data), "--pretrained_path",
                           str(run_dir / "models" / "0001.pth"), "--no_lpips", "--device", "cpu", "--num_workers", "0",
                           "--output_json", str(tmp_path / "r.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=SUBPROCESS_ENV)
    assert proc.returncode == 0, proc.stderr
    assert "| pPSNR |" in proc.stdout and (tmp_path / "r.csv").is_file()


def test_tile_starts_cover_the_image():
    from utils.evaluation import tile_starts
    assert tile_starts(128, 64) == [0, 64]
    assert tile_starts(100, 64) == [0, 36]  # the last window ends at the edge
    assert tile_starts(40, 64) == [0] and tile_starts(64, 64) == [0]
    assert tile_starts(130, 32) == [0, 32, 64, 96, 98]
    with pytest.raises(ValueError):
        tile_starts(10, 0)


def test_tiled_prediction_stitches_windows(trained):
    """Each window is predicted alone (inputs of the window's size), overlaps averaged; written out here."""
    from utils.evaluation import predict_frames, tiled
    run_dir, _ = trained
    model = load_backbone(run_dir / "models" / "0001.pth")
    gen = torch.Generator().manual_seed(3)
    blur, gt = torch.rand(2, 3, SIZE, SIZE, generator=gen), torch.rand(2, 7, 3, SIZE, SIZE, generator=gen)
    seen = []

    def record(net, b, g):
        seen.append(tuple(b.shape[-2:]))
        return predict_frames(net, b, g)

    with torch.no_grad():
        got = tiled(record, 24)(model, blur, gt)
        whole = predict_frames(model, blur, gt)
        expected = torch.zeros_like(whole)
        count = torch.zeros(SIZE, SIZE)
        for y in (0, 16):
            for x in (0, 16):
                expected[..., y:y + 24, x:x + 24] += model(blur[..., y:y + 24, x:x + 24])["frames"]
                count[y:y + 24, x:x + 24] += 1
    assert seen == [(24, 24)] * 4
    assert count[20, 20] == 4 and count[5, 5] == 1
    assert got.shape == whole.shape == (2, 7, 3, SIZE, SIZE)
    torch.testing.assert_close(got, expected / count, rtol=1e-5, atol=1e-6)
    assert (got - whole).abs().max() > 1e-3  # the network sees context: windows are not the whole image
    with torch.no_grad():  # a window as large as the image is the whole image
        torch.testing.assert_close(tiled(predict_frames, SIZE)(model, blur, gt), whole)


def test_test_script_tile_flag(trained, data, official_dir, capsys):
    run_dir, _ = trained
    base = ["--metadata_root", str(data), "--pretrained_path", str(run_dir / "models" / "0001.pth"), "--no_lpips",
            "--device", "cpu", "--num_workers", "0"]
    whole = test_blur2vid.run_test(test_blur2vid.build_parser().parse_args(base))
    assert whole["tile"] is None
    # 'crop' reads the run's training crop (SIZE, the images' size): the same figures as whole images
    crop = test_blur2vid.run_test(test_blur2vid.build_parser().parse_args(base + ["--tile", "crop"]))
    assert crop["tile"] == SIZE and crop["pPSNR"] == pytest.approx(whole["pPSNR"], rel=1e-6)
    assert torch.load(run_dir / "models" / "0001.pth", weights_only=True)["args"]["trained_crop"] == SIZE
    small = test_blur2vid.run_test(test_blur2vid.build_parser().parse_args(base + ["--tile", "24"]))
    assert small["tile"] == 24 and small["pPSNR"] != pytest.approx(whole["pPSNR"], rel=1e-6)
    assert "predicted in 24x24 tiles" in test_blur2vid.report(small)
    err = one_line_error(capsys, test_blur2vid.main, base[:2] + ["--pretrained_path", str(official_dir), "--no_lpips",
                                                                 "--device", "cpu", "--tile", "crop"])
    assert "--tile crop" in err and "records no training crop size" in err
    err = one_line_error(capsys, test_blur2vid.main, base + ["--tile", "-3"])
    assert "--tile" in err and "positive number of pixels" in err


def test_tile_crop_reads_the_crop_really_trained_on(trained, tmp_path):
    """A run on boxed data (B-AIST++) asked for --crop_size 256 trains on 192x192 items; its checkpoint records
    trained_crop 192, which --tile crop uses; a checkpoint from before trained_crop existed gives --crop_size."""
    from utils.evaluation import resolve_tile
    run_dir, _ = trained
    ckpt = torch.load(run_dir / "models" / "0001.pth", weights_only=True)
    for args, expected in (({"crop_size": 256, "trained_crop": 192}, 192), ({"crop_size": 256}, 256)):
        path = tmp_path / f"{expected}.pth"
        torch.save(dict(ckpt, args=args), path)
        assert resolve_tile("crop", path) == expected
    assert resolve_tile(24, path) == 24 and resolve_tile(None, path) is None


def test_inference_tile_flag(trained, tmp_path):
    """inference.py --tile: the written frames are the tiled prediction of utils.evaluation.tiled; 'crop'
    reads the run's crop (SIZE, the image's size here), which gives the whole-image frames."""
    from utils.evaluation import tiled
    run_dir, _ = trained
    ckpt = run_dir / "models" / "0001.pth"
    gen = torch.Generator().manual_seed(5)
    image = (torch.rand(3, SIZE, SIZE, generator=gen) * 255).round().to(torch.uint8)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "photo.png")
    model, blur = load_backbone(ckpt), image.float()[None] / 255
    with torch.no_grad():
        expected = {24: tiled(lambda net, b, g: net(b)["frames"], 24)(model, blur, blur)[0],
                    "crop": model(blur)["frames"][0]}
    for tile, frames in expected.items():
        out = tmp_path / f"out_{tile}"
        assert inference.main(["--pretrained_path", str(ckpt), "--blur_path", str(tmp_path / "photo.png"),
                               "--output_path", str(out), "--device", "cpu", "--tile", str(tile)]) == 0
        for k in range(7):
            assert_png_matches(read_png(out / "photo" / f"frame_{k + 1}.png"), frames[k])
    assert not torch.allclose(expected[24], expected["crop"], atol=1e-3)


def test_missing_lpips_weights_are_skipped_or_required(trained, data, tmp_path, monkeypatch, capsys):
    """Offline without the AlexNet file: the evaluation completes, one warning line, LPIPS null in JSON and
    'skipped' in the tables; --lpips require makes it one error line."""
    run_dir, _ = trained
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    argv = ["--metadata_root", str(data), "--pretrained_path", str(run_dir / "models" / "0001.pth"),
            "--device", "cpu", "--num_workers", "0"]
    out = tmp_path / "r.json"
    assert test_blur2vid.main(argv + ["--output_json", str(out)]) == 0
    captured = capsys.readouterr()
    warning = captured.err.strip()
    assert warning.startswith("warning: LPIPS skipped") and "\n" not in warning
    assert ALEXNET_WEIGHTS_FILE in warning and str(tmp_path / "empty_torch_home") in warning
    assert "| pLPIPS | skipped |" in captured.out and "| LPIPS | skipped |" in captured.out
    result = json.loads(out.read_text())
    assert result["LPIPS"] is None and result["pLPIPS_mean"] is None and result["lpips"].startswith("skipped")
    assert result["pPSNR_mean"] > 0
    err = one_line_error(capsys, test_blur2vid.main, argv + ["--lpips", "require"])
    assert ALEXNET_WEIGHTS_FILE in err and str(tmp_path / "empty_torch_home") in err


# --- inference.py -------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["fixture", pytest.param("photo", marks=pytest.mark.skipif(
    not REAL_BLURRY.is_dir(), reason=f"real blurry photos not found at {REAL_BLURRY} (only this project's machines have them)"))])
def test_inference_on_a_folder_of_blurry_images(tmp_path, jin_compact, source):
    if source == "photo":
        crop = read_png(sorted(REAL_BLURRY.glob("*.png"))[0])[200:237, 300:345]
    else:  # the compact fixture's first blurry image
        crop = to_uint8(jin_compact[1][0]).permute(1, 2, 0).numpy()[:37, :45]
    assert crop.shape == (37, 45, 3)  # a multiple of neither 4 nor 5
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(crop).save(folder / "crop.png")
    Image.fromarray(crop[:21, :33]).save(folder / "small.bmp")
    Image.fromarray(crop).save(folder / "notes.txt", format="PNG")  # not an image suffix: ignored
    ckpt = save_narrow_checkpoint(tmp_path / "narrow.pth")
    out = tmp_path / "out"
    assert inference.main(["--pretrained_path", str(ckpt), "--blur_path", str(folder), "--output_path", str(out),
                           "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["crop", "small"]
    for stem, shape in (("crop", (37, 45, 3)), ("small", (21, 33, 3))):
        written = sorted(p.name for p in (out / stem).iterdir())
        assert written == [f"frame_{k}.png" for k in range(1, 8)]
        assert all(read_png(out / stem / name).shape == shape for name in written)
    # one file, the same model: the same frames as the float path, quantised
    model = load_backbone(ckpt)
    frames = inference.deblur(model, read_image(folder / "crop.png"), torch.device("cpu"))
    assert np.array_equal(read_png(out / "crop" / "frame_4.png"), to_uint8(frames[3]).permute(1, 2, 0).numpy())


def test_inference_input_errors(tmp_path, capsys):
    ckpt = save_narrow_checkpoint(tmp_path / "narrow.pth")

    def err(blur_path, pretrained=ckpt, **extra):
        argv = ["--pretrained_path", str(pretrained), "--blur_path", str(blur_path), "--output_path",
                str(tmp_path / "out"), "--device", "cpu"]
        for k, v in extra.items():
            argv += [f"--{k}", str(v)]
        return one_line_error(capsys, inference.main, argv)

    assert "does not exist" in err(tmp_path / "missing.png")
    (tmp_path / "empty").mkdir()
    assert "holds no png/jpg/jpeg/bmp images" in err(tmp_path / "empty")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    msg = err(tmp_path / "bad.png")
    assert "cannot read image" in msg and "bad.png" in msg
    clash = tmp_path / "clash"
    clash.mkdir()
    for name in ("a.png", "a.jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(clash / name)
    assert "'a'" in err(clash)
    assert "not found" in err(clash / "a.png", pretrained=tmp_path / "nowhere.pth")
    assert "width_mult 0.125" in err(clash / "a.png", width_mult=1.0)
    assert not (tmp_path / "out").exists()  # nothing was written


# --- Jin's middle network alone, and a Jin started from it -----------------------------------------------

def test_new_jin_returns_its_middle_frame_everywhere():
    """Each inner network starts as its reference (last conv zero): a new Jin predicts x4 for every frame."""
    torch.manual_seed(0)
    model = JinBackbone(0.125).eval()
    with torch.no_grad():
        frames = model(torch.rand(2, 3, 40, 40))["frames"]
    for k in range(7):
        assert torch.equal(frames[:, k], frames[:, 3])
    assert float((frames[:, 3] - frames[:, 3].mean()).abs().mean()) > 1e-3


def test_jin_center_backbone_trains_and_starts_a_jin(data, tmp_path, capsys):
    """--backbone JinCenter --target_frames 4 trains the middle network alone; --center_path puts it into a Jin,
    frozen (unchanged by training) unless --train_center; the outer networks train either way."""
    history = run_train(train_argv(data, tmp_path, "centre", "--backbone", "JinCenter", "--target_frames", "4",
                                   "--epochs", "1"))
    assert len(history["losses"]) == 2 and math.isfinite(history["val"][1]["pPSNR"])
    centre_ckpt = tmp_path / "centre" / "models" / "0001.pth"
    centre = load_backbone(centre_ckpt)
    assert centre.num_frames == 1 and type(centre).__name__ == "JinCenterBackbone"
    blur = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert centre(blur)["frames"].shape == (1, 1, 3, SIZE, SIZE)

    run_train(train_argv(data, tmp_path, "frozen", "--center_path", str(centre_ckpt), "--epochs", "1"))
    frozen = load_backbone(tmp_path / "frozen" / "models" / "0001.pth")
    for k, v in centre.center.state_dict().items():
        assert torch.equal(frozen.center.state_dict()[k], v), k
    fresh = JinBackbone(float(WIDTH))
    assert any(not torch.equal(v, fresh.frame17.state_dict()[k]) for k, v in frozen.frame17.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(frozen(blur)["frames"][:, 3], centre(blur)["frames"][:, 0])

    run_train(train_argv(data, tmp_path, "tuned", "--center_path", str(centre_ckpt), "--train_center", "--epochs", "1"))
    tuned = load_backbone(tmp_path / "tuned" / "models" / "0001.pth")
    assert any(not torch.equal(tuned.center.state_dict()[k], v) for k, v in centre.center.state_dict().items())

    capsys.readouterr()
    err = one_line_error(capsys, train_blur2vid.main, train_argv(data, tmp_path, "x", "--backbone", "JinCenter"))
    assert "--target_frames 4" in err
    err = one_line_error(capsys, train_blur2vid.main, train_argv(data, tmp_path, "x", "--train_center"))
    assert "--center_path" in err
    err = one_line_error(capsys, train_blur2vid.main,
                         train_argv(data, tmp_path, "x", "--center_path", str(tmp_path / "frozen" / "models" / "0001.pth"),
                                    "--width_mult", "0.25"))
    assert "--width_mult 0.25" in err and "middle network" in err

"""Faults a user or the machine can cause, and what each script does about them (README "Reliability"):
flags checked before any work, one output folder per input, image sizes checked against --crop_size and the
metrics before training, file permissions, full image decoding up front, Ctrl-C, out of memory, unwritable
outputs, orphan temporary files, SIGKILL during a save, incomplete training states, unreadable checkpoints,
non-finite weights. Tiny data (40x40 images, narrow models) and one thread keep it fast."""
import argparse
import importlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import generate_order
import inference
import prepare_dataset
import test_blur2vid
import train_blur2vid
import train_hypercut
from _cli import one_line_error
from _tiny import plain, write_dataset
from datasets.blur2vid import Blur2VidDataset
from datasets.metadata import MetadataError, load_split
from models import backbone_checkpoint_fields, build_backbone
from models.hypercut import HyperCUT
from utils.checkpoint import (CheckpointError, atomic_write_text, load_checkpoint, remove_orphan_temps,
                              save_checkpoint)
from utils.cli import ArgumentParser, above, at_least
from utils.images import OutputClash, OutputFolders, entry_folder, save_png
from utils.report import write_json
from utils.run import Run, restore_training_state

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("train_hypercut", "test_hypercut", "generate_order", "train_blur2vid", "test_blur2vid", "inference",
           "prepare_dataset", "run_demo", "lab.probe_order")
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("rel") / "data", plain())


@pytest.fixture(scope="module")
def narrow_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_backbone("Jin", width_mult=0.125)
    path = tmp_path_factory.mktemp("ckpt") / "narrow.pth"
    torch.save({"model": model.state_dict(), **backbone_checkpoint_fields(model), "epoch": 0, "step": 0}, path)
    return path


@pytest.fixture(scope="module")
def hypercut_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    model = HyperCUT(out_dim=16)
    path = tmp_path_factory.mktemp("hc") / "hypercut.pth"
    torch.save({"model": model.state_dict(), **model.checkpoint_fields(), "epoch": 1}, path)
    return path


def hc_argv(root, ckpt_dir, exp, *extra):
    return ["--metadata_root", str(root), "--exp_name", exp, "--checkpoints_dir", str(ckpt_dir), "--device", "cpu",
            "--num_workers", "0", "--crop_size", "36", "--batch_size", "2", "--out_dim", "16", "--lr", "1e-5",
            "--epochs", "1", *extra]


def b2v_argv(root, ckpt_dir, exp, *extra):
    return ["--metadata_root", str(root), "--exp_name", exp, "--checkpoints_dir", str(ckpt_dir), "--device", "cpu",
            "--num_workers", "0", "--crop_size", "40", "--batch_size", "2", "--width_mult", "0.125",
            "--epochs", "1", "--display_step", "0", *extra]


def eval_argv(root, ckpt, *extra):
    return ["--metadata_root", str(root), "--pretrained_path", str(ckpt), "--no_lpips", "--device", "cpu",
            "--num_workers", "0", *extra]


# --- 1. every numeric flag checked before any work ------------------------------------------------------

def _numeric_flags(parser, prefix=""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _numeric_flags(sub, f"{prefix}{name} ")
        elif action.type in (int, float) and action.choices is None:
            yield prefix, action.dest


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_flag_has_a_range(script):
    """A numeric flag added to any script without its range (a utils.cli.Range as its type, or choices) fails
    here."""
    parser = importlib.import_module(script).build_parser()
    missing = [f"{where}--{dest}" for where, dest in _numeric_flags(parser)]
    assert not missing, f"{script}: no range for {missing}"


@pytest.mark.parametrize("script, flag, value", [
    ("train_hypercut", "--seed", "-1"), ("train_hypercut", "--seed", str(2 ** 32)),
    ("train_hypercut", "--skip_nonfinite", "-1"), ("train_hypercut", "--out_dim", str(10 ** 9)),
    ("train_hypercut", "--num_workers", str(10 ** 6)), ("train_blur2vid", "--width_mult", "1e9"),
    ("train_blur2vid", "--alpha", "inf"), ("train_blur2vid", "--target_frames", "0"),
    ("train_blur2vid", "--weight_decay", "1e308"), ("train_hypercut", "--slope", "-1e31"), ("train_hypercut", "--gamma", "1.5"),
    ("test_blur2vid", "--seed", "-5"), ("test_blur2vid", "--width_mult", "nan"), ("inference", "--target_frames", "-1"),
])
def test_out_of_range_flags_are_refused(script, flag, value, tmp_path, capsys):
    """Ranges beyond the obvious (seed, skip_nonfinite, the upper bounds, target_frames >= 1): refused as the
    command line is parsed, in one line naming the flag."""
    argv = {"train_hypercut": hc_argv(tmp_path, tmp_path, "x"), "train_blur2vid": b2v_argv(tmp_path, tmp_path, "x"),
            "test_blur2vid": eval_argv(tmp_path, tmp_path / "m.pth"),
            "inference": ["--pretrained_path", "m.pth", "--blur_path", "x.png"]}[script]
    parser = importlib.import_module(script).build_parser()
    with pytest.raises(SystemExit) as info:
        parser.parse_args(argv + [f"{flag}={value}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith(f"error: {flag} must be ") and err.count("\n") == 1, err


def test_a_range_checks_every_value_and_names_the_flag(capsys):
    """utils.cli.Range: every value of an nargs flag, the first name of a flag with two, argparse's own message
    for a value that is no number."""
    parser = ArgumentParser(prog="x")
    parser.add_argument("--steps", type=at_least(1), nargs="+")
    parser.add_argument("--epochs", "--num_epochs", type=at_least(1))
    parser.add_argument("--share", type=above(0, 1.0))
    assert parser.parse_args(["--steps", "1", "2", "--share", "1"]).steps == [1, 2]
    for argv, line in ((["--steps", "1", "0"], "error: --steps must be >= 1 (got 0) (see x --help)"),
                       (["--num_epochs", "0"], "error: --epochs must be >= 1 (got 0) (see x --help)"),
                       (["--share", "0"], "error: --share must be > 0 (got 0.0) (see x --help)"),
                       (["--share", "1.5"], "error: --share must be <= 1.0 (got 1.5) (see x --help)"),
                       (["--share=-inf"], "error: --share must be a finite number (got -inf) (see x --help)"),
                       (["--steps", "two"], "error: argument --steps: invalid int value: 'two' (see x --help)")):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize("argv, flag", [
    (["synthetic", "--foreground_p", "nan"], "--foreground_p"), (["synthetic", "--size", "100000"], "--size"),
    (["synthetic", "--num_val", "-1"], "--num_val"), (["frames", "--src", "s", "--val_fraction", "1.5"], "--val_fraction"),
    (["frames", "--src", "s", "--window", "0"], "--window"), (["synthetic", "--seed", "-1"], "--seed"),
])
def test_prepare_dataset_flags_are_checked_before_anything_is_written(tmp_path, capsys, argv, flag):
    out = tmp_path / "out"
    err = one_line_error(capsys, prepare_dataset.main, argv + ["--out", str(out)])
    assert flag in err
    assert not out.exists()


def test_run_demo_checks_its_flags_before_any_stage(tmp_path, capsys):
    import run_demo
    err = one_line_error(capsys, run_demo.main, ["--num_workers", "-1", "--out", str(tmp_path / "demo"),
                                                 "--data", str(tmp_path / "data")])
    assert "--num_workers" in err
    assert not any(tmp_path.iterdir())


def test_target_frames_load_in_the_order_given(data):
    """Unsorted --target_frames are a permutation of each sequence, as documented in --help and the README."""
    ds = Blur2VidDataset(data, "train", target_frames=[3, 1, 2, 7])
    levels = [round(float(f.mean()) * 255) for f in ds[0]["frames"]]
    assert levels == [90, 30, 60, 210]
    helptext = " ".join(train_blur2vid.build_parser().format_help().split())
    assert "in the order given" in helptext and "'7 6 5 4 3 2 1' loads it reversed" in helptext
    assert "in the order given" in (REPO / "README.md").read_text()


# --- 2. one output folder per input ---------------------------------------------------------------------

def test_entry_folders_are_one_to_one():
    ids = ["seq/1", "seq_1", "seq%2F1", "seq\\1", ".", "..", ".hidden", "", "a b", "é/ü", "x" * 300, "x" * 301]
    names = [entry_folder(eid, i) for i, eid in enumerate(ids)]
    assert len(set(names)) == len(ids)
    for eid, name in zip(ids, names):
        assert "/" not in name and "\\" not in name and not name.startswith(".") and 0 < len(name) <= 200
        if 0 < len(eid) <= 60:
            assert urllib.parse.unquote(name) == eid  # reversible


def test_duplicate_entry_ids_are_refused_up_front(tmp_path):
    root = write_dataset(tmp_path, [("a/1", "train", (40, 40)), ("b", "test", (40, 40)), ("a/1", "val", (40, 40))])
    with pytest.raises(MetadataError, match=r"entry id 'a/1' is used by entries #0 and #2") as info:
        load_split(root, "test")  # whatever split is loaded
    assert "\n" not in str(info.value)


def test_save_images_gives_every_entry_its_own_folder(tmp_path, narrow_ckpt, capsys):
    """Ids `s/1` and `s_1` used to share the folder `s_1` (the second overwrote the first)."""
    root = write_dataset(tmp_path / "d", [("t", "train", (40, 40)), ("v", "val", (40, 40)),
                                          ("s/1", "test", (40, 40)), ("s_1", "test", (40, 40))])
    out = tmp_path / "images"
    assert test_blur2vid.main(eval_argv(root, narrow_ckpt, "--save_images", str(out))) == 0
    assert sorted(p.name for p in out.iterdir()) == ["s%2F1", "s_1"]
    assert all(len(list((out / n).iterdir())) == 7 for n in ("s%2F1", "s_1"))


def test_output_folders_refuse_a_folder_the_file_system_shares(tmp_path):
    folders = OutputFolders(tmp_path)
    assert folders.folder("a", "photo a.png") == tmp_path / "a"
    assert folders.folder("a", "photo a.png") == tmp_path / "a"  # the same input again is fine
    (tmp_path / "b").symlink_to(tmp_path / "a")  # as a case-insensitive file system folds 'A' into 'a'
    with pytest.raises(OutputClash, match="photo b.png and photo a.png"):
        folders.folder("b", "photo b.png")


# --- 3. image sizes against --crop_size and the metrics, before training ----------------------------------

@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Training images of two sizes: before, crops were clamped per image and a batch mixing them died
    mid-epoch in torch.stack."""
    return write_dataset(tmp_path_factory.mktemp("mixed") / "d",
                         [("big/0", "train", (56, 48)), ("small/0", "train", (40, 44)), ("big/1", "train", (56, 48)),
                          ("v", "val", (40, 40)), ("t", "test", (40, 40))])


def test_crop_larger_than_the_smallest_training_image(mixed, tmp_path, capsys):
    for main, argv in ((train_blur2vid.main, b2v_argv(mixed, tmp_path, "b", "--crop_size", "44")),
                       (train_hypercut.main, hc_argv(mixed, tmp_path, "h", "--crop_size", "41"))):
        err = one_line_error(capsys, main, argv)
        assert "--crop_size" in err and str(mixed / "001" / "blur.png") in err and "small/0" in err and "40x44" in err
    assert not any(tmp_path.iterdir())  # no run folder: nothing started


def test_mixed_sizes_train_when_the_crop_fits(mixed, tmp_path):
    args = train_blur2vid.build_parser().parse_args(b2v_argv(mixed, tmp_path, "ok", "--crop_size", "40",
                                                             "--batch_size", "3", "--no_augment"))
    history = train_blur2vid.train(args)
    assert len(history["losses"]) == 1 and np.isfinite(history["losses"][0])


def test_val_images_too_small_to_validate_are_refused_before_training(tmp_path, capsys, hypercut_ckpt, narrow_ckpt):
    root = write_dataset(tmp_path / "d", [("t0", "train", (40, 40)), ("t1", "train", (40, 40)),
                                          ("v0", "val", (40, 40)), ("v1", "val", (24, 30)), ("x", "test", (8, 9))])
    runs = tmp_path / "runs"
    err = one_line_error(capsys, train_hypercut.main, hc_argv(root, runs, "h"))
    assert "val split" in err and "33x33" in err and "v1" in err and "24x30" in err
    err = one_line_error(capsys, train_blur2vid.main, b2v_argv(root, runs, "b", "--hypercut_path", str(hypercut_ckpt)))
    assert "val split" in err and "33x33" in err and "HyperCUT" in err and "24x30" in err
    assert not runs.exists()
    err = one_line_error(capsys, test_blur2vid.main, eval_argv(root, narrow_ckpt))  # SSIM's 11x11 window
    assert "test split" in err and "11x11" in err and "SSIM" in err and "8x9" in err


# --- 4. file permissions: the umask's, and the replaced file's ------------------------------------------

@pytest.fixture()
def umask():
    def set_umask(value):
        os.umask(value)
    before = os.umask(0o022)
    yield set_umask
    os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o007])
def test_written_files_get_the_umask_permissions(tmp_path, umask, mask):
    umask(mask)
    want = 0o666 & ~mask
    save_checkpoint({"w": torch.zeros(2)}, tmp_path / "c.pth")
    atomic_write_text(tmp_path / "a.txt", "x")
    save_png(torch.zeros(3, 4, 4), tmp_path / "p.png")
    write_json(tmp_path / "r.json", {"a": 1})
    for name in ("c.pth", "a.txt", "p.png", "r.json"):
        assert _mode(tmp_path / name) == want, name
    assert prepare_dataset.main(["synthetic", "--out", str(tmp_path / "ds"), "--size", "32", "--num_train", "1",
                                 "--num_val", "1", "--num_test", "1"]) == 0
    written = [p for p in (tmp_path / "ds").rglob("*") if p.is_file()]
    assert len(written) == 25 and all(_mode(p) == want for p in written)


def test_overwrite_keeps_the_replaced_files_mode(tmp_path, umask):
    umask(0o022)
    for name, write in (("c.pth", lambda p: save_checkpoint({"e": 1}, p)), ("m.json", lambda p: atomic_write_text(p, "{}"))):
        path = tmp_path / name
        write(path)
        os.chmod(path, 0o640)
        write(path)
        assert _mode(path) == 0o640, name


def test_generate_order_output_modes(data, hypercut_ckpt, tmp_path, umask, capsys):
    umask(0o002)
    out = tmp_path / "orders.json"
    argv = ["--metadata_root", str(data), "--pretrained_path", str(hypercut_ckpt), "--save_path", str(out),
            "--device", "cpu"]
    assert generate_order.main(argv) == 0
    assert _mode(out) == 0o664
    os.chmod(out, 0o600)
    assert generate_order.main(argv + ["--overwrite"]) == 0
    assert _mode(out) == 0o600


# --- 5. images decoded in full before any work -----------------------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncated_image_is_caught_up_front(tmp_path, capsys, fmt):
    root = write_dataset(tmp_path / "d", plain())
    victim = root / "001" / "sharp" / f"5.{fmt}"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(victim)
    meta = json.loads((root / "metadata.json").read_text())
    meta["data"][1]["frame005_path"] = f"001/sharp/5.{fmt}"
    (root / "metadata.json").write_text(json.dumps(meta))
    _truncate(victim)
    with pytest.raises(MetadataError) as info:
        load_split(root, "train")
    assert "tr/1" in str(info.value) and str(victim) in str(info.value) and "cannot read image" in str(info.value)
    load_split(root, "train", check="headers")  # --quick_check reads headers only: it passes
    err = one_line_error(capsys, train_hypercut.main, hc_argv(root, tmp_path / "runs", "x"))
    assert "tr/1" in err and str(victim) in err
    assert not (tmp_path / "runs").exists()


def test_inference_decodes_every_photo_before_writing(tmp_path, narrow_ckpt, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.random.default_rng(2).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(photos / name)
    _truncate(photos / "b.png")
    err = one_line_error(capsys, inference.main, ["--pretrained_path", str(narrow_ckpt), "--blur_path", str(photos),
                                                  "--output_path", str(tmp_path / "out"), "--device", "cpu"])
    assert "b.png" in err and "cannot read image" in err
    assert not (tmp_path / "out").exists()


# --- 6. Ctrl-C, out of memory, write access, orphan temporary files ---------------------------------------

def test_ctrl_c_in_prepare_dataset_leaves_nothing(tmp_path, capsys, monkeypatch):
    import datasets.writer as writer_module
    real, calls = writer_module.write_new_file, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 12:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(writer_module, "write_new_file", interrupted)
    out = tmp_path / "ds"
    with pytest.raises(SystemExit) as info:
        prepare_dataset.main(["synthetic", "--out", str(out), "--size", "32", "--num_train", "2", "--num_val", "1",
                              "--num_test", "1"])
    assert info.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: interrupted") and "\n" not in err
    assert list(out.iterdir()) == []  # no metadata.json, no .incomplete


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raising KeyboardInterrupt in this process, as under a terminal: a suite started in the background
    without job control (`cmd &`, nohup) inherits SIGINT ignored, and a held signal that was ignored stays so."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_the_final_moves_is_held_until_the_dataset_is_complete(tmp_path, capsys, monkeypatch,
                                                                              ctrl_c_raises):
    import datasets.writer as writer_module
    real = os.replace

    def replace_then_ctrl_c(src, dst):
        real(src, dst)
        if Path(dst).parent == out:  # a move into the dataset folder: arrives in the middle of the swap
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(writer_module.os, "replace", replace_then_ctrl_c)
    out = tmp_path / "ds"
    with pytest.raises(SystemExit) as info:
        prepare_dataset.main(["synthetic", "--out", str(out), "--size", "32", "--num_train", "2", "--num_val", "1",
                              "--num_test", "1"])
    monkeypatch.undo()
    assert info.value.code == 130
    err = capsys.readouterr().err.strip()
    assert "completed first" in err and "\n" not in err
    assert sorted(p.name for p in out.iterdir()) == ["000000", "000001", "000002", "000003", "metadata.json"]
    assert len(load_split(out, "train")[1]) == 2


def _sigint_default():
    """Popen preexec_fn: SIGINT handled as from a terminal. A shell that starts a command in the background
    without job control (`cmd &` in a script, nohup) leaves SIGINT ignored, an ignored signal stays ignored
    across exec, and Python then installs no KeyboardInterrupt handler: the child would never see the
    tests' Ctrl-C (it did not, when the suite was started that way)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_to_prepare_dataset_mid_run(tmp_path):
    """A real Ctrl-C (SIGINT) to the command-line process while it renders: exit 130, one line, nothing left."""
    out = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "prepare_dataset.py", "synthetic", "--out", str(out), "--size", "32",
                             "--num_train", "400"], cwd=REPO, env=SUBPROCESS_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    deadline = time.time() + 240
    while not (out / ".incomplete" / "000002").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave a renderer running after a failed test
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().startswith("error: interrupted") and err.strip().count("\n") == 0, err
    assert list(out.iterdir()) == []


def test_ctrl_c_to_a_training_with_loader_workers(data, tmp_path):
    """A terminal's Ctrl-C reaches the whole process group, loader workers included: the training ends
    with exit 130 and one line, no worker is left behind, and the last finished epoch can be resumed."""
    run = tmp_path / "ck" / "w"
    proc = subprocess.Popen([sys.executable, "train_blur2vid.py", "--metadata_root", str(data), "--exp_name", "w",
                             "--checkpoints_dir", str(tmp_path / "ck"), "--device", "cpu", "--width_mult", "0.125",
                             "--crop_size", "32", "--batch_size", "1", "--epochs", "1000", "--val_epoch", "1000",
                             "--num_workers", "2", "--display_step", "0"], cwd=REPO, env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_sigint_default)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and \
            not (run / "log.txt").exists() or "epoch 2/" not in (run / "log.txt").read_text():
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave a training (and its workers) running after a failed test
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert err.strip().startswith("error: interrupted") and err.strip().count("\n") == 0, err
    time.sleep(1)
    with pytest.raises(ProcessLookupError):  # nothing of the group is left (workers exit with the main process)
        os.killpg(proc.pid, 0)
    state = load_checkpoint(run / "training_states" / "latest.pth")  # intact, at a finished epoch
    assert 1 <= state["epoch"] and f"epoch {state['epoch']}/1000" in (run / "log.txt").read_text()


def test_ctrl_c_in_generate_order_writes_nothing(data, hypercut_ckpt, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(generate_order, "hypercut_scores", interrupted)
    out = tmp_path / "orders.json"
    with pytest.raises(SystemExit) as info:
        generate_order.main(["--metadata_root", str(data), "--pretrained_path", str(hypercut_ckpt), "--save_path",
                             str(out), "--device", "cpu"])
    assert info.value.code == 130 and capsys.readouterr().err.strip() == "error: interrupted"
    assert list(tmp_path.iterdir()) == []


OOMS = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                     "allocate 98765 bytes. Error code 12 (Cannot allocate memory)")]


@pytest.mark.parametrize("error", OOMS)
def test_out_of_memory_in_evaluation_is_one_line(data, narrow_ckpt, capsys, monkeypatch, error):
    from models.backbones.jin import JinBackbone

    def no_memory(self, *args, **kwargs):
        raise error
    monkeypatch.setattr(JinBackbone, "forward", no_memory)
    err = one_line_error(capsys, test_blur2vid.main, eval_argv(data, narrow_ckpt, "--batch_size", "2"))
    assert "out of memory" in err and "2 image(s) of 40x40" in err and "--batch_size" in err
    err = one_line_error(capsys, test_blur2vid.main, eval_argv(data, narrow_ckpt, "--batch_size", "1"))
    assert "one image at a time" in err and "smaller images" in err and "--tile N" in err
    err = one_line_error(capsys, test_blur2vid.main, eval_argv(data, narrow_ckpt, "--batch_size", "1", "--tile", "16"))
    assert "in 16x16 windows" in err and "use a smaller --tile" in err


def test_other_runtime_errors_are_not_called_out_of_memory(data, narrow_ckpt, monkeypatch):
    from models.backbones.jin import JinBackbone

    def bug(self, *args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(JinBackbone, "forward", bug)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):  # a bug keeps its traceback
        test_blur2vid.main(eval_argv(data, narrow_ckpt))


@pytest.mark.parametrize("error", OOMS)
def test_out_of_memory_in_inference_is_one_line(tmp_path, narrow_ckpt, capsys, monkeypatch, error):
    Image.fromarray(np.zeros((24, 30, 3), np.uint8)).save(tmp_path / "photo.png")

    def no_memory(*args, **kwargs):
        raise error
    monkeypatch.setattr(inference, "deblur", no_memory)
    err = one_line_error(capsys, inference.main, ["--pretrained_path", str(narrow_ckpt), "--blur_path",
                                                  str(tmp_path / "photo.png"), "--output_path", str(tmp_path / "o"),
                                                  "--device", "cpu"])
    assert "out of memory" in err and "photo.png (30x24" in err and "smaller image" in err


def test_unwritable_outputs_are_found_before_any_work(data, narrow_ckpt, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    evaluated = []
    monkeypatch.setattr(test_blur2vid, "evaluate", lambda *a, **k: evaluated.append(1))
    for flag in ("--output_json", "--save_images"):
        err = one_line_error(capsys, test_blur2vid.main, eval_argv(data, narrow_ckpt, flag, str(blocker / "sub" / "x")))
        assert flag in err and "a_file is not a folder" in err
    err = one_line_error(capsys, train_blur2vid.main, b2v_argv(data, blocker, "x"))
    assert "--checkpoints_dir" in err
    err = one_line_error(capsys, inference.main, ["--pretrained_path", str(narrow_ckpt), "--blur_path", "nowhere.png",
                                                  "--output_path", str(blocker)])
    assert "--output_path" in err and "not a folder" in err
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # root may write anywhere: emulate a folder without write permission
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    err = one_line_error(capsys, test_blur2vid.main, eval_argv(data, narrow_ckpt, "--output_json",
                                                               str(locked / "r.json")))
    assert "--output_json" in err and f"no write access to {locked}" in err
    err = one_line_error(capsys, prepare_dataset.main, ["synthetic", "--out", str(locked / "ds")])
    assert "--out" in err and "no write access" in err
    assert not evaluated and list(locked.iterdir()) == []


def test_orphan_temporary_files_are_removed_and_nothing_else(tmp_path):
    run = tmp_path / "runs" / "r"
    states = run / "training_states"
    states.mkdir(parents=True)
    old = time.time() - 3600
    orphans = [states / ".latest.pth.0a1b2c3d.tmp", run / ".args.json.deadbeef.tmp"]
    keep = [states / ".latest.pth.0a1b2c3e.tmp",  # written after this run started (set below)
            states / "notes.tmp", states / ".x.tmp", states / ".latest.pth.ZZZZZZZZ.tmp",
            states / ".latest.pth.0a1b2c3d.tmp.bak", states / "latest.pth"]
    for p in orphans + keep:
        p.write_bytes(b"x")
        os.utime(p, (old, old))
    future = time.time() + 3600
    os.utime(keep[0], (future, future))
    (states / ".dir.0a1b2c3d.tmp").mkdir()  # a folder of that name is not ours
    os.utime(states / ".dir.0a1b2c3d.tmp", (old, old))
    (states / ".link.0a1b2c3d.tmp").symlink_to(states / "latest.pth")
    flags = {"checkpoints_dir": str(tmp_path / "runs"), "exp_name": "r", "resume": True, "load_epoch": None}
    Run(flags).close()
    assert not any(p.exists() for p in orphans)
    assert all(p.exists() for p in keep)
    assert (states / ".dir.0a1b2c3d.tmp").is_dir() and (states / ".link.0a1b2c3d.tmp").is_symlink()
    assert "removed 2 unfinished temporary file(s)" in (run / "log.txt").read_text()
    assert remove_orphan_temps(tmp_path / "missing", time.time()) == []


KILLED_SAVER = """
import sys, time, torch
from utils.checkpoint import save_checkpoint
path = sys.argv[1]
save_checkpoint({"epoch": 1}, path)
big = {"epoch": 2, "w": torch.zeros(16 * 2 ** 20)}  # 64 MB: long enough to be killed while writing
print("saved", flush=True)
while True:
    save_checkpoint(big, path)
"""


def test_sigkill_during_a_save_keeps_the_old_file_and_the_next_run_cleans_up(tmp_path):
    states = tmp_path / "runs" / "r" / "training_states"
    states.mkdir(parents=True)
    target = states / "latest.pth"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(target)], cwd=REPO, env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saved"
    deadline = time.time() + 120
    while not list(states.glob(".latest.pth.*.tmp")) and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()  # SIGKILL: no cleanup runs
    proc.wait(timeout=60)
    leftovers = list(states.glob(".latest.pth.*.tmp"))
    assert len(leftovers) == 1
    assert load_checkpoint(target)["epoch"] in (1, 2)  # the old file or a complete new one, never half of one
    time.sleep(0.05)
    flags = {"checkpoints_dir": str(tmp_path / "runs"), "exp_name": "r", "resume": True, "load_epoch": None}
    Run(flags).close()
    assert not leftovers[0].exists() and target.exists()


# --- incomplete training states, state-dict mismatches, unreadable checkpoints, non-finite weights ---------

@pytest.fixture(scope="module")
def hc_run(data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("hcrun")
    args = train_hypercut.build_parser().parse_args(hc_argv(data, runs, "r"))
    train_hypercut.train(args)
    return runs


@pytest.mark.parametrize("part", ["model", "optimizer", "scheduler", "epoch", "step", "rng"])
def test_a_resume_state_lacking_a_part_is_refused(hc_run, part):
    state = load_checkpoint(hc_run / "r" / "training_states" / "latest.pth")
    del state[part]
    with pytest.raises(CheckpointError, match=f"lacks {part}"):
        restore_training_state(state, None, None, None)


def test_resume_with_a_doctored_state_is_one_line(hc_run, data, tmp_path, capsys):
    import shutil
    runs = tmp_path / "runs"
    shutil.copytree(hc_run / "r", runs / "r")
    latest = runs / "r" / "training_states" / "latest.pth"
    state = load_checkpoint(latest)
    save_checkpoint({k: v for k, v in state.items() if k != "optimizer"}, latest)
    err = one_line_error(capsys, train_hypercut.main, hc_argv(data, runs, "r", "--epochs", "2", "--resume"))
    assert "lacks optimizer" in err
    model = dict(state["model"])
    model["f_func.model.99.weight"] = model.pop("f_func.model.1.weight")
    save_checkpoint({**state, "model": model}, latest)
    err = one_line_error(capsys, train_hypercut.main, hc_argv(data, runs, "r", "--epochs", "2", "--resume"))
    assert "1 missing key (f_func.model.1.weight)" in err and "1 unexpected key (f_func.model.99.weight)" in err


def test_random_bytes_are_not_called_a_pickle_with_code(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "random.pth" in msg and "not a readable PyTorch file" in msg and "arbitrary code" not in msg
    assert "\n" not in msg and "weights_only" not in msg


def test_non_finite_weights_are_never_saved(data, tmp_path, capsys):
    """A finite loss, then an optimiser step that overflows the weights (SGD, lr and weight decay 1e30): the last
    step of a run has no next loss to show it, so before, the run saved infinite weights and exited 0."""
    err = one_line_error(capsys, train_hypercut.main, hc_argv(data, tmp_path, "nan", "--optimizer", "SGD", "--lr", "1e30",
                                                              "--weight_decay", "1e30", "--max_steps", "1"))
    assert "weights became non-finite by step 1" in err and "--weight_decay" in err
    assert not list((tmp_path / "nan" / "models").iterdir())

"""Faults (README "Reliability"): full disks and file-size limits, signals during saves, two writers
of one output, outputs that would overwrite inputs or one another, --resume with other flags, photos' EXIF
orientation, and errors that were tracebacks. Each test checks that every input and earlier output is
byte-identical afterwards. Tiny data (40x40 images, narrow models), one thread."""
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import generate_order
import inference
import prepare_dataset
import test_blur2vid
import test_hypercut
import train_blur2vid
import train_hypercut
import utils.checkpoint as checkpoint_module
from _cli import one_line_error
from _tiny import plain, write_dataset
from datasets.metadata import load_split
from datasets.transforms import decode_image_file, read_image
from models import backbone_checkpoint_fields, build_backbone
from models.hypercut import HyperCUT
from utils.checkpoint import WriteError, atomic_write_text, load_checkpoint, save_checkpoint
from utils.cli import Terminated, interrupts_deferred
from utils.images import save_frames, save_png
from utils.lock import FolderBusy, FolderLock
from utils.report import write_csv, write_json

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("faults") / "data", plain())


@pytest.fixture(scope="module")
def hypercut_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    model = HyperCUT(out_dim=16)
    path = tmp_path_factory.mktemp("hc") / "hypercut.pth"
    torch.save({"model": model.state_dict(), **model.checkpoint_fields(), "epoch": 1}, path)
    return path


@pytest.fixture(scope="module")
def narrow_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_backbone("Jin", width_mult=0.125)
    path = tmp_path_factory.mktemp("jin") / "narrow.pth"
    torch.save({"model": model.state_dict(), **backbone_checkpoint_fields(model), "epoch": 0, "step": 0}, path)
    return path


def hc_argv(root, ckpt_dir, exp, *extra):
    return ["--metadata_root", str(root), "--exp_name", exp, "--checkpoints_dir", str(ckpt_dir), "--device", "cpu",
            "--num_workers", "0", "--crop_size", "36", "--batch_size", "2", "--out_dim", "16", "--lr", "1e-5",
            "--epochs", "1", *extra]


def snapshot(root: Path) -> dict:
    """Every file below root (hidden ones too) and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _sigint_default():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raising KeyboardInterrupt in this process, as under a terminal: a suite started in the background
    without job control (`cmd &`, nohup) inherits SIGINT ignored, and an ignored signal stays ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


# --- 1. every write checked: a full disk or a file-size limit is one line, and the old file stays ----------

def failing_writes(monkeypatch, code=errno.ENOSPC, after_bytes=0):
    """From now on the write layer writes `after_bytes` more bytes, then fails as a full disk (or `code`)."""
    real, left = checkpoint_module._write_all, [after_bytes]

    def write_all(fd, data):
        view = memoryview(data).cast("B")
        if len(view) <= left[0]:
            left[0] -= len(view)
            return real(fd, view)
        real(fd, view[:left[0]])  # a short write: part of the buffer lands, then the disk is full
        left[0] = 0
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(checkpoint_module, "_write_all", write_all)


WRITERS = {
    "checkpoint": lambda p, v: save_checkpoint({"epoch": v, "w": torch.full((4000,), float(v))}, p),
    "json": lambda p, v: write_json(p, {"v": v, "pad": "x" * 5000}),
    "csv": lambda p, v: write_csv(p, ["a", "b"], [[v, "x" * 5000]]),
    "png": lambda p, v: save_png(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(v)), p),
    "text": lambda p, v: atomic_write_text(p, f"{v}" * 5000),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left"), (errno.EFBIG, "file too large")])
def test_a_failed_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, kind, code, reason):
    path = tmp_path / f"out.{kind}"
    WRITERS[kind](path, 1)
    before = path.read_bytes()
    failing_writes(monkeypatch, code, after_bytes=1000)
    with pytest.raises(WriteError) as info:
        WRITERS[kind](path, 2)
    msg = str(info.value)
    assert str(path) in msg and reason in msg and "\n" not in msg
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]  # no temporary file left


def test_a_json_and_its_csv_are_written_as_one(tmp_path, monkeypatch):
    """test_blur2vid.py's --output_json and the CSV beside it: the CSV failing leaves both earlier files."""
    result = {name: [20.0 + k for k in range(7)] for name in test_blur2vid.METRICS}
    result.update({f"{n}_mean": 23.0 for n in test_blur2vid.METRICS}, middle_frame="predicted")
    test_blur2vid.write_results(result, tmp_path / "r.json")
    before = snapshot(tmp_path)
    result["PSNR"] = [1.0] * 7
    json_size = len(json.dumps(result, indent=2)) + 1
    failing_writes(monkeypatch, after_bytes=json_size + 10)  # the JSON completes, the CSV does not
    with pytest.raises(WriteError, match="r.csv: no space left"):
        test_blur2vid.write_results(result, tmp_path / "r.json")
    assert snapshot(tmp_path) == before


def test_the_frames_of_one_image_are_written_as_one(tmp_path, monkeypatch):
    frames = torch.rand(7, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    save_frames(frames, tmp_path)
    before = snapshot(tmp_path)
    failing_writes(monkeypatch, after_bytes=3 * len((tmp_path / "frame_1.png").read_bytes()))
    with pytest.raises(WriteError, match="no space left"):
        save_frames(frames.flip(0), tmp_path)
    assert snapshot(tmp_path) == before


def test_full_disk_while_replacing_a_dataset_keeps_the_old_one(tmp_path, capsys, monkeypatch):
    """The issue's case: --overwrite of a good dataset on a disk that fills up while the new one is written."""
    out = tmp_path / "ds"
    small = ["--size", "32", "--num_train", "2", "--num_val", "1", "--num_test", "1"]
    assert prepare_dataset.main(["synthetic", "--out", str(out), *small]) == 0
    capsys.readouterr()
    before = snapshot(out)
    failing_writes(monkeypatch, after_bytes=20000)  # a few images fit
    err = one_line_error(capsys, prepare_dataset.main, ["synthetic", "--out", str(out), *small, "--seed", "5",
                                                        "--overwrite"])
    assert "no space left" in err and str(out / ".incomplete") in err
    assert snapshot(out) == before and sorted(os.listdir(out)) == sorted({p.split("/")[0] for p in before})


@pytest.mark.parametrize("failing_move", [1, 3, 6])
def test_a_failure_while_moving_the_new_dataset_in_puts_the_old_one_back(tmp_path, capsys, monkeypatch, failing_move):
    import datasets.writer as writer_module
    out = tmp_path / "ds"
    small = ["--size", "32", "--num_train", "2", "--num_val", "1", "--num_test", "1"]
    assert prepare_dataset.main(["synthetic", "--out", str(out), *small]) == 0
    before = snapshot(out)
    real, moves = os.replace, []

    def replace(src, dst):
        if Path(src).parent in (out, out / ".incomplete"):  # commit's moves (not the temporary files')
            moves.append(dst)
            if len(moves) == failing_move:
                raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)
    monkeypatch.setattr(writer_module.os, "replace", replace)
    err = one_line_error(capsys, prepare_dataset.main, ["synthetic", "--out", str(out), *small, "--seed", "5",
                                                        "--overwrite"])
    assert "input/output error" in err
    monkeypatch.undo()
    assert snapshot(out) == before


def test_a_replacement_killed_half_way_is_put_back(tmp_path, capsys, monkeypatch):
    """A kill in the middle of the moves (emulated: the clean-up is skipped) leaves the old dataset aside; the
    error of a reader says how to get it back, and `summary` (or the next writer) puts it back."""
    import datasets.writer as writer_module
    out = tmp_path / "ds"
    small = ["--size", "32", "--num_train", "2", "--num_val", "1", "--num_test", "1"]
    assert prepare_dataset.main(["synthetic", "--out", str(out), *small]) == 0
    before = snapshot(out)
    real, moves = os.replace, []

    class Killed(BaseException):
        pass

    def replace(src, dst):
        if Path(src).parent in (out, out / ".incomplete"):
            moves.append(dst)
            if len(moves) == 4:
                raise Killed()
        return real(src, dst)
    monkeypatch.setattr(writer_module.os, "replace", replace)
    monkeypatch.setattr(writer_module, "finish_replacement", lambda out: False)
    monkeypatch.setattr(writer_module.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(Killed):
        prepare_dataset.main(["synthetic", "--out", str(out), *small, "--seed", "5", "--overwrite"])
    monkeypatch.undo()
    (out / ".lock").unlink(missing_ok=True)  # (a killed process leaves its lock file, but not its lock)
    err = one_line_error(capsys, prepare_dataset.main, ["summary", "--out", str(out / "metadata.json")])
    assert "replacement of this dataset was interrupted" in err and "summary --out" in err
    assert prepare_dataset.main(["summary", "--out", str(out)]) == 0
    assert "put back" in capsys.readouterr().err
    assert snapshot(out) == before


def test_file_size_limit_in_a_training_is_one_line(data, tmp_path):
    """A real EFBIG (ulimit -f) inside torch.save, which used to surface as RuntimeError "unexpected pos"."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as a shell's ulimit -f with the signal ignored: EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (30000, resource.RLIM_INFINITY))
    proc = subprocess.run([sys.executable, "train_hypercut.py", *hc_argv(data, tmp_path, "r")], cwd=REPO, env=ENV,
                          capture_output=True, text=True, preexec_fn=limit, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("error: cannot write ") and "file too large" in err and ".pth" in err
    leftovers = [p for p in (tmp_path / "r").rglob("*") if p.name.endswith(".tmp") or p.name == ".lock"]
    assert not leftovers


RUN_WRITER = """
import sys
from utils.cli import ArgumentParser, run_main
from utils.run import Run

def build_parser():
    p = ArgumentParser()
    p.add_argument("folder")
    p.add_argument("what")
    return p

def body(args):
    run = Run({"checkpoints_dir": args.folder, "exp_name": "r", "resume": False, "load_epoch": None})
    for step in range(100000):
        if args.what == "log":
            run.log("x" * 200)
        else:
            run.scalars({"train/loss": step}, step)
            if step % 500 == 0:
                run.writer.flush()

sys.exit(run_main(build_parser, body))
"""


@pytest.mark.parametrize("what, name", [("log", "log.txt"), ("tensorboard", "tensorboard")])
def test_a_full_log_or_tensorboard_file_is_one_line(tmp_path, what, name):
    """log.txt used to print logging's traceback and go on without a log; TensorBoard's writer thread printed
    one and the main thread raised a traceback."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
    proc = subprocess.run([sys.executable, "-c", RUN_WRITER, str(tmp_path), what], cwd=REPO, env=ENV,
                          capture_output=True, text=True, preexec_fn=limit, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.count("\n") == 0, err
    assert err.startswith(f"error: cannot write {tmp_path / 'r' / name}") and "file too large" in err, err


# --- 5. a signal during a save: the save completes, then exit 130/143 and one line -------------------------

@pytest.mark.parametrize("sig, exc", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_a_signal_during_a_save_is_held_until_the_file_is_complete(tmp_path, monkeypatch, ctrl_c_raises, sig, exc):
    path = tmp_path / "s.pth"
    real, sent = checkpoint_module._write_all, []

    def write_then_signal(fd, data):
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), sig)  # arrives inside torch.save
        real(fd, data)
    monkeypatch.setattr(checkpoint_module, "_write_all", write_then_signal)
    with pytest.raises(exc):
        save_checkpoint({"w": torch.arange(1000.0)}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(1000.0)) and os.listdir(tmp_path) == ["s.pth"]


def test_nested_holds_raise_once_at_the_outermost_end_and_ignored_signals_stay_ignored(ctrl_c_raises):
    with pytest.raises(KeyboardInterrupt, match="outer"):
        with interrupts_deferred("outer"):
            with interrupts_deferred("inner"):
                os.kill(os.getpid(), signal.SIGINT)
            reached = True
    assert reached
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_deferred("x"):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)


SAVER = """
import sys, torch
from utils.checkpoint import save_checkpoint
from utils.cli import ArgumentParser, run_main

def build_parser():
    p = ArgumentParser()
    p.add_argument("path")
    return p

def body(args):
    save_checkpoint({"epoch": 1}, args.path)
    print("saved", flush=True)
    big = {"epoch": 2, "w": torch.zeros(8 * 2 ** 20)}  # 32 MB: most of the time is spent saving
    while True:
        save_checkpoint(big, args.path)

sys.exit(run_main(build_parser, body, interrupted="interrupted; the last save is complete"))
"""


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_to_a_process_saving_ends_in_one_line_with_a_loadable_file(tmp_path, sig, code, word):
    target = tmp_path / "latest.pth"
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(target)], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    try:
        assert proc.stdout.readline().strip() == "saved"
        deadline = time.time() + 120
        while not list(tmp_path.glob(".latest.pth.*.tmp")) and time.time() < deadline:
            time.sleep(0.002)
        proc.send_signal(sig)  # while a save is under way
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert err.strip().startswith(f"error: {word}") and err.strip().count("\n") == 0, err
    assert load_checkpoint(target)["epoch"] in (1, 2) and os.listdir(tmp_path) == ["latest.pth"]


def test_sigterm_to_a_training_is_one_line_and_its_state_resumes(data, tmp_path):
    run = tmp_path / "ck" / "t"
    argv = hc_argv(data, tmp_path / "ck", "t", "--epochs", "1000", "--val_epoch", "1000")
    proc = subprocess.Popen([sys.executable, "train_hypercut.py", *argv],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = run / "training_states" / "latest.pth"

    def epoch_3_saved() -> bool:  # its log line comes before its state: wait for the state itself
        return ((run / "log.txt").exists() and "epoch 3/" in (run / "log.txt").read_text()
                and state.exists() and load_checkpoint(state)["epoch"] >= 3)  # written whole, then renamed

    try:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline and not epoch_3_saved():
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().startswith("error: terminated (SIGTERM); continue with --resume") and err.count("\n") == 1, err
    # the state the signal found (or the next one, written whole) is kept; the run folder is let go
    assert load_checkpoint(state)["epoch"] >= 3 and not (run / ".lock").exists()


# --- 2. one writer per output -----------------------------------------------------------------------------

HOLDER = """
import sys, time
from utils.lock import FolderLock
FolderLock(sys.argv[1], "the folder").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def hold_lock(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_run_folder_in_use_is_refused_naming_the_process_and_a_dead_holder_is_taken_over(data, tmp_path, capsys):
    assert train_hypercut.main(hc_argv(data, tmp_path, "r")) == 0
    capsys.readouterr()
    before = snapshot(tmp_path / "r")
    holder = hold_lock(tmp_path / "r")
    try:
        for extra in ([], ["--resume", "--epochs", "2"]):
            err = one_line_error(capsys, train_hypercut.main, hc_argv(data, tmp_path, "r", *extra))
            assert f"in use by process {holder.pid}" in err
        assert snapshot(tmp_path / "r") == {**before, ".lock": f"{holder.pid}\n".encode()}
    finally:
        holder.kill()  # SIGKILL: the kernel lets go of the lock; its file (with the pid) stays
        holder.wait()
    assert (tmp_path / "r" / ".lock").exists()
    assert train_hypercut.main(hc_argv(data, tmp_path, "r", "--resume", "--epochs", "2")) == 0
    log = (tmp_path / "r" / "log.txt").read_text()
    assert f"took over the run folder's lock left by process {holder.pid}" in log
    assert not (tmp_path / "r" / ".lock").exists()


def test_two_trainings_of_one_run_name_at_once_one_runs_the_other_is_refused(data, tmp_path):
    procs = [subprocess.Popen([sys.executable, "train_hypercut.py", *hc_argv(data, tmp_path, "same", "--epochs", "3")],
                              cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.pid, p.wait(timeout=300), p.communicate()[1].strip()) for p in procs]
    assert sorted(code for _, code, _ in results) == [0, 2], results
    (winner, _, _), (_, _, err) = sorted(results, key=lambda r: r[1])
    assert err.count("\n") == 0 and (f"in use by process {winner}" in err or "already holds a run" in err), err
    log = (tmp_path / "same" / "log.txt").read_text()
    assert log.count("done: epoch 3") == 1 and log.count("epoch 1/3") == 1  # one run's log, not two interleaved
    assert sorted(os.listdir(tmp_path / "same" / "models")) == ["0003.pth"]


def test_a_dataset_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "ds"
    holder = hold_lock(out)
    try:
        err = one_line_error(capsys, prepare_dataset.main, ["synthetic", "--out", str(out), "--size", "32",
                                                            "--overwrite"])
        assert f"dataset folder {out} is in use by process {holder.pid}" in err
        assert os.listdir(out) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_folder_lock_in_one_process(tmp_path):
    lock = FolderLock(tmp_path / "f", "the folder").acquire()
    with pytest.raises(FolderBusy, match=f"process {os.getpid()}"):
        FolderLock(tmp_path / "f", "the folder").acquire()
    lock.release()
    lock.release()
    assert os.listdir(tmp_path / "f") == []
    with FolderLock(tmp_path / "f", "the folder"):
        assert os.listdir(tmp_path / "f") == [".lock"]


def test_no_overwrite_holds_when_another_process_writes_the_order_file_meanwhile(data, hypercut_ckpt, tmp_path,
                                                                                 capsys, monkeypatch):
    out = tmp_path / "orders.json"
    real = generate_order.hypercut_scores

    def scores_while_another_writes(*args, **kwargs):
        out.write_text("the other process's file\n")  # after the existence check, before the write
        return real(*args, **kwargs)
    monkeypatch.setattr(generate_order, "hypercut_scores", scores_while_another_writes)
    err = one_line_error(capsys, generate_order.main, ["--metadata_root", str(data), "--pretrained_path",
                                                       str(hypercut_ckpt), "--save_path", str(out), "--device", "cpu"])
    assert "already exists" in err and "--overwrite" in err
    assert out.read_text() == "the other process's file\n" and os.listdir(tmp_path) == ["orders.json"]


# --- 3. outputs never overwrite inputs or one another --------------------------------------------------------

def eval_argv(root, ckpt, *extra):
    return ["--metadata_root", str(root), "--pretrained_path", str(ckpt), "--no_lpips", "--device", "cpu",
            "--num_workers", "0", *extra]


def test_evaluation_outputs_that_are_inputs_or_each_other_are_refused_before_any_work(data, narrow_ckpt, hypercut_ckpt,
                                                                                      tmp_path, capsys, monkeypatch):
    before = snapshot(data)
    evaluated = []
    monkeypatch.setattr(test_blur2vid, "evaluate", lambda *a, **k: evaluated.append(1))
    cases = [
        (["--output_json", str(data / "metadata.json")], "would overwrite an input, the metadata"),
        (["--output_json", str(data / "000" / "blur.png")], "would overwrite an input, an image of entry"),
        (["--output_json", str(narrow_ckpt)], "would overwrite an input, --pretrained_path"),
        (["--output_json", str(tmp_path / "r.csv")], "give the JSON a .json name"),
        (["--output_json", str(tmp_path / "imgs" / "te%2F0" / "frame_1.png"), "--save_images", str(tmp_path / "imgs")],
         "or inside it"),
        (["--output_json", str(hypercut_ckpt), "--hypercut_path", str(hypercut_ckpt)], "input, --hypercut_path"),
    ]
    for extra, needle in cases:
        err = one_line_error(capsys, test_blur2vid.main, eval_argv(data, narrow_ckpt, *extra))
        assert needle in err, err
    (data / "000" / "sub").mkdir()
    link = data / "000" / "sub" / "frame_1.png"
    os.link(data / "000" / "blur.png", link)  # the same file under the name an output would have
    try:
        os.rename(data / "000" / "sub", data / "te%2F0")
        err = one_line_error(capsys, test_blur2vid.main, eval_argv(data, narrow_ckpt, "--save_images", str(data)))
        assert "would overwrite an input" in err and "frame_1.png" in err
    finally:
        (data / "te%2F0" / "frame_1.png").unlink()
        (data / "te%2F0").rmdir()
    err = one_line_error(capsys, test_hypercut.main, ["--metadata_root", str(data), "--pretrained_path",
                                                      str(hypercut_ckpt), "--output_json", str(hypercut_ckpt),
                                                      "--device", "cpu"])
    assert "would overwrite an input, --pretrained_path" in err
    assert not evaluated and snapshot(data) == before


def test_results_are_never_written_over_another_runs_checkpoint_or_state(data, narrow_ckpt, hypercut_ckpt, tmp_path,
                                                                          capsys, monkeypatch):
    """Files no command reads here but that hold weights or a resume state: JSON results, CSVs and orders
    are refused there, --overwrite or not; an --output_json inside --save_images is refused before work."""
    other_ckpt = tmp_path / "other_run" / "models" / "0001.pth"
    other_ckpt.parent.mkdir(parents=True)
    other_ckpt.write_bytes(hypercut_ckpt.read_bytes())
    state = tmp_path / "other_run" / "training_states" / "latest.pth"
    state.parent.mkdir(parents=True)
    torch.save({"epoch": 3, "optimizer": {}}, state)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    kept = {p: p.read_bytes() for p in (other_ckpt, state, legacy)}
    evaluated = []
    monkeypatch.setattr(test_blur2vid, "evaluate", lambda *a, **k: evaluated.append(1))
    for target in kept:
        err = one_line_error(capsys, test_blur2vid.main, eval_argv(data, narrow_ckpt, "--output_json", str(target)))
        assert "is a PyTorch checkpoint or training state" in err, err
        err = one_line_error(capsys, test_hypercut.main, ["--metadata_root", str(data), "--pretrained_path",
                                                          str(hypercut_ckpt), "--output_json", str(target),
                                                          "--device", "cpu"])
        assert "is a PyTorch checkpoint or training state" in err, err
        err = one_line_error(capsys, generate_order.main, ["--metadata_root", str(data), "--pretrained_path",
                                                           str(hypercut_ckpt), "--save_path", str(target),
                                                           "--overwrite", "--device", "cpu"])
        assert "is a PyTorch checkpoint or training state" in err, err
    # the CSV beside the JSON is checked too
    csv_state = tmp_path / "r.csv"
    csv_state.write_bytes(kept[state])
    err = one_line_error(capsys, test_blur2vid.main, eval_argv(data, narrow_ckpt, "--output_json", str(tmp_path / "r.json")))
    assert "the CSV beside --output_json" in err and "PyTorch checkpoint" in err, err
    for json_path in (tmp_path / "imgs", tmp_path / "imgs" / "r.json"):
        err = one_line_error(capsys, test_blur2vid.main, eval_argv(data, narrow_ckpt, "--output_json", str(json_path),
                                                                   "--save_images", str(tmp_path / "imgs")))
        assert "is --save_images" in err and "or inside it" in err, err
    assert not evaluated and not (tmp_path / "imgs").exists()
    assert all(p.read_bytes() == b for p, b in kept.items())


def test_generate_order_never_writes_over_a_checkpoint_or_an_image_even_with_overwrite(data, hypercut_ckpt, capsys):
    before, ckpt = snapshot(data), hypercut_ckpt.read_bytes()
    for target in (hypercut_ckpt, data / "001" / "sharp" / "3.png"):
        err = one_line_error(capsys, generate_order.main, ["--metadata_root", str(data), "--pretrained_path",
                                                           str(hypercut_ckpt), "--save_path", str(target),
                                                           "--overwrite", "--device", "cpu"])
        assert "would overwrite an input" in err
    assert snapshot(data) == before and hypercut_ckpt.read_bytes() == ckpt


def test_inference_output_that_is_a_photo_is_refused(tmp_path, narrow_ckpt, capsys):
    photos = tmp_path / "x"
    photos.mkdir()
    for name in ("x.png", "frame_1.png"):  # x.png's first output frame would be x/frame_1.png: the other photo
        Image.fromarray(np.full((20, 20, 3), 50, np.uint8)).save(photos / name)
    before = snapshot(photos)
    err = one_line_error(capsys, inference.main, ["--pretrained_path", str(narrow_ckpt), "--blur_path", str(photos),
                                                  "--output_path", str(tmp_path), "--device", "cpu"])
    assert "would overwrite an input, the photo" in err and snapshot(photos) == before


def test_a_run_folder_that_would_write_over_its_inputs_is_refused(data, tmp_path, capsys):
    ds = tmp_path / "runs" / "r" / "visualisations"
    write_dataset(ds, plain())
    before = snapshot(tmp_path)
    err = one_line_error(capsys, train_hypercut.main, hc_argv(ds, tmp_path / "runs", "r"))
    assert "the run folder" in err and "holds an input" in err
    assert snapshot(tmp_path) == before


def test_frames_mode_refuses_an_out_inside_its_src(tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    for out in (tmp_path / "videos", tmp_path / "videos" / "ds"):
        err = one_line_error(capsys, prepare_dataset.main, ["frames", "--src", str(tmp_path / "videos"),
                                                            "--out", str(out)])
        assert "--src" in err and "one holds the other" in err
    assert os.listdir(tmp_path / "videos") == []


# --- 4. --resume compares the flags with the run's ------------------------------------------------------------

@pytest.fixture(scope="module")
def run1(data, tmp_path_factory):
    """A finished 1-epoch HyperCUT run (ADAMax, lr 1e-5, batch 2)."""
    runs = tmp_path_factory.mktemp("resume")
    assert train_hypercut.main(hc_argv(data, runs, "r")) == 0
    return runs


def copy_run(run1, tmp_path):
    import shutil
    shutil.copytree(run1 / "r", tmp_path / "r")
    return tmp_path


def test_resume_with_changed_flags_is_refused_with_the_list(data, run1, tmp_path, capsys):
    runs = copy_run(run1, tmp_path)
    before = snapshot(runs)
    err = one_line_error(capsys, train_hypercut.main, hc_argv(data, runs, "r", "--resume", "--epochs", "2", "--lr",
                                                              "3e-5", "--batch_size", "1", "--no_augment"))
    assert "the flags differ from the run's" in err
    assert "--batch_size 2 -> 1" in err and "--lr 1e-05 -> 3e-05" in err and "--no_augment False -> True" in err
    assert "--allow_changes batch_size lr no_augment" in err
    err = one_line_error(capsys, train_hypercut.main, hc_argv(data, runs, "r", "--resume", "--epochs", "2",
                                                              "--optimizer", "SGD"))
    assert "--optimizer ADAMax -> SGD" in err  # was a KeyError traceback
    err = one_line_error(capsys, train_hypercut.main, hc_argv(data, runs, "r", "--resume", "--out_dim", "8"))
    assert "--out_dim 8 differs from the run's 16" in err and "saved weights" in err
    err = one_line_error(capsys, train_hypercut.main, hc_argv(data, runs, "r", "--resume", "--pretrained_path",
                                                              str(runs / "r" / "models" / "0001.pth")))
    assert "--pretrained_path" in err and "leave it out" in err
    err = one_line_error(capsys, train_hypercut.main, hc_argv(data, runs, "x", "--allow_changes", "lr"))
    assert "--allow_changes applies to a resumed run" in err
    err = one_line_error(capsys, train_hypercut.main, hc_argv(data, runs, "r", "--resume", "--allow_changes",
                                                              "nonsense"))
    assert "--allow_changes nonsense" in err
    assert snapshot(runs) == before


def test_a_resume_refused_for_its_model_leaves_the_run_records_unchanged(data, run1, tmp_path, capsys):
    """The flags match, but the state holds another kind of model (as when train_hypercut resumes a Jin run):
    refused in one line, and args_resume.json is not written (it was, before the state was checked)."""
    runs = copy_run(run1, tmp_path)
    path = runs / "r" / "training_states" / "latest.pth"
    state = load_checkpoint(path)
    state["hypercut_config"] = None  # what a deblurring run's state holds there
    save_checkpoint(state, path)
    before = snapshot(runs)
    err = one_line_error(capsys, train_hypercut.main, hc_argv(data, runs, "r", "--resume", "--epochs", "2"))
    assert "the training state was made with hypercut_config None" in err
    assert snapshot(runs) == before and not (runs / "r" / "args_resume.json").exists()


def test_allowed_changes_are_applied_and_recorded(data, run1, tmp_path):
    runs = copy_run(run1, tmp_path)
    argv = hc_argv(data, runs, "r", "--resume", "--epochs", "2", "--lr", "3e-5", "--optimizer", "SGD",
                   "--batch_size", "1", "--decay_type", "step_1", "--gamma", "0.5",
                   "--allow_changes", "lr", "optimizer", "batch_size", "decay_type", "gamma")
    args = train_hypercut.build_parser().parse_args(argv)
    history = train_hypercut.train(args)
    assert len(history["losses"]) == 2  # batch 1 over the 2 training sequences
    state = load_checkpoint(runs / "r" / "training_states" / "latest.pth")
    group = state["optimizer"]["param_groups"][0]
    assert "momentum" in group  # SGD's state, not ADAMax's
    assert group["lr"] == pytest.approx(3e-5 * 0.5) and group["initial_lr"] == 3e-5  # the new schedule (epoch 1 on)
    changed = state["args"]["resume_history"][0]
    assert changed["epoch"] == 1 and changed["changed"]["lr"] == [1e-5, 3e-5]
    assert changed["changed"]["optimizer"] == ["ADAMax", "SGD"] and changed["changed"]["batch_size"] == [2, 1]
    model_args = load_checkpoint(runs / "r" / "models" / "0002.pth")["args"]
    assert model_args["lr"] == 3e-5 and model_args["resume_history"] == state["args"]["resume_history"]
    assert json.loads((runs / "r" / "args.json").read_text())["lr"] == 1e-5  # what the run started with
    recorded = json.loads((runs / "r" / "args_resume.json").read_text())["resume_history"]
    assert recorded[0]["changed"]["lr"] == [1e-5, 3e-5]
    assert "resuming with changed flags (--allow_changes): batch_size 2 -> 1" in (runs / "r" / "log.txt").read_text()
    # the next resume compares with the changed values, and keeps the history
    args = train_hypercut.build_parser().parse_args(hc_argv(
        data, runs, "r", "--resume", "--epochs", "3", "--lr", "3e-5", "--optimizer", "SGD", "--batch_size", "1",
        "--decay_type", "step_1", "--gamma", "0.5"))
    train_hypercut.train(args)
    state = load_checkpoint(runs / "r" / "training_states" / "latest.pth")
    assert len(state["args"]["resume_history"]) == 1 and state["args"]["lr"] == 3e-5


def test_the_same_paths_spelled_otherwise_are_no_change(data, run1, tmp_path, monkeypatch):
    runs = copy_run(run1, tmp_path)
    monkeypatch.chdir(data.parent)
    argv = hc_argv(Path(data.name) / "metadata.json", runs, "r", "--resume", "--epochs", "2")
    assert train_hypercut.main(argv) == 0


def test_a_frozen_centre_network_is_part_of_the_model_and_starting_weights_are_the_runs(tmp_path):
    """--center_path decides which part trains (fixed); --pretrained_path left out of a resume takes the run's."""
    from utils.errors import FlagError
    from utils.run import check_resume_args
    centre = tmp_path / "centre.pth"
    centre.write_bytes(b"x")
    saved = {"center_path": str(centre), "pretrained_path": "start.pth", "lr": 1e-4}
    flags = {"center_path": None, "pretrained_path": None, "lr": 1e-4, "allow_changes": ["center_path"]}
    with pytest.raises(FlagError, match="--center_path None differs from the run's"):
        check_resume_args(saved, flags, 3, "args.json")
    flags.update(center_path=os.path.relpath(centre), allow_changes=None)  # the same file, named otherwise
    changes, resumed = check_resume_args(saved, flags, 3, "args.json")
    assert changes == {} and resumed["pretrained_path"] == "start.pth" and flags["pretrained_path"] is None


# --- 6. tracebacks that became one line --------------------------------------------------------------------

def test_train_hypercut_on_three_frame_sequences(tmp_path, capsys):
    three = write_dataset(tmp_path / "three", plain(), frames=3)
    err = one_line_error(capsys, train_hypercut.main, hc_argv(three, tmp_path / "runs", "r"))
    assert "at least 6 frames" in err and "gives 3 per sequence" in err
    assert not (tmp_path / "runs").exists()


def test_stage1_path_and_pretrained_path_together_are_refused(data, tmp_path, capsys):
    err = one_line_error(capsys, train_blur2vid.main, [
        "--metadata_root", str(data), "--backbone", "Purohit", "--stage1_path", "a.pth", "--pretrained_path", "b.pth",
        "--checkpoints_dir", str(tmp_path), "--device", "cpu"])
    assert "--stage1_path and --pretrained_path" in err


@pytest.mark.parametrize("decay", ["step_5_5", "step_5_3", "step_0_2", "step_-1"])
def test_decay_milestones_must_increase(data, tmp_path, capsys, decay):
    err = one_line_error(capsys, train_hypercut.main, hc_argv(data, tmp_path, "r", "--decay_type", decay))
    assert "strictly increasing" in err


def test_names_over_255_bytes_are_one_line(data, hypercut_ckpt, narrow_ckpt, tmp_path, capsys):
    long = "n" * 300
    err = one_line_error(capsys, train_hypercut.main, hc_argv(data, tmp_path, long))
    assert "300 bytes long" in err and "255" in err
    err = one_line_error(capsys, test_hypercut.main, ["--metadata_root", str(data), "--pretrained_path",
                                                      str(hypercut_ckpt), "--output_json",
                                                      str(tmp_path / f"{long}.json")])
    assert "305 bytes long" in err
    err = one_line_error(capsys, generate_order.main, ["--metadata_root", str(data), "--pretrained_path",
                                                       str(hypercut_ckpt), "--save_path", str(tmp_path / long)])
    assert "300 bytes long" in err
    save_checkpoint({"e": 1}, tmp_path / ("m" * 250))  # a name near the limit still gets its temporary file
    assert load_checkpoint(tmp_path / ("m" * 250))["e"] == 1
    assert os.listdir(tmp_path) == ["m" * 250]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_outputs_under_proc_are_one_line_before_any_work(data, hypercut_ckpt, tmp_path, capsys):
    err = one_line_error(capsys, test_hypercut.main, ["--metadata_root", str(data), "--pretrained_path",
                                                      str(hypercut_ckpt), "--output_json", "/proc/r.json"])
    assert "--output_json /proc/r.json cannot be written: /proc takes no new files" in err
    err = one_line_error(capsys, train_hypercut.main, hc_argv(data, "/proc", "r"))
    assert "--checkpoints_dir" in err and "/proc" in err


# --- 6. photos oriented as viewers show them ------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(tmp_path, fmt):
    array = np.zeros((20, 30, 3), np.uint8)
    array[:4, :8] = 255  # a bright block top-left of a landscape image
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to show"
    path = tmp_path / f"photo.{fmt.lower()}"
    image.save(path, format=fmt, exif=exif.tobytes(), **({"quality": 100} if fmt == "JPEG" else {"lossless": True}
                                                          if fmt == "WEBP" else {}))
    shown = np.rot90(array, k=-1)  # what a viewer shows: portrait, the block top-right
    img, _ = decode_image_file(path)
    assert tuple(img.shape) == (3, 30, 20)
    assert np.abs(img.permute(1, 2, 0).numpy().astype(int) - shown.astype(int)).max() <= 8
    assert read_image(path).shape == (3, 30, 20)
    from datasets.metadata import _image_size
    assert _image_size(path, "e", decode=False) == _image_size(path, "e", decode=True) == (20, 30)


def test_a_dataset_of_turned_photos_passes_the_header_check(tmp_path):
    root = write_dataset(tmp_path / "d", [("a", "train", (20, 30))])
    for p in (tmp_path / "d").rglob("*.png"):
        image = Image.open(p)
        exif = image.getexif()
        exif[0x0112] = 8
        image.convert("RGB").save(p.with_suffix(".jpg"), exif=exif.tobytes(), quality=95)
    meta = json.loads((root / "metadata.json").read_text())
    for e in meta["data"]:
        for k, v in list(e.items()):
            if k.endswith("_path"):
                e[k] = v.replace(".png", ".jpg")
    (root / "metadata.json").write_text(json.dumps(meta))
    for check in ("headers", True):
        _, entries = load_split(root, "train", check=check)
        assert entries[0].size == (30, 20)

"""Property-based fault tests (hypothesis): mutated metadata.json files and random flag values. Whatever the
input, a script either works or ends with exactly one `error:` line (exit 2): never a traceback, and never
exit 0 with non-finite weights saved. Tiny data and one optimiser step keep each example around a second."""
import contextlib
import copy
import io
import itertools
import json
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prepare_dataset
import test_blur2vid
import test_hypercut
import train_blur2vid
import train_hypercut
from _tiny import plain, write_dataset
from datasets.metadata import PARTITIONS, load_split
from models import backbone_checkpoint_fields, build_backbone
from models.hypercut import HyperCUT
from utils.errors import UserError

# HYPOTHESIS_EXAMPLES=200 for a deeper search than the suite's quick one.
SETTINGS = settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 12)), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_script(main, argv) -> tuple:
    """(exit code, stderr) of main(argv) in-process. Any exception other than SystemExit propagates: a
    traceback fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def assert_works_or_one_error_line(code, err: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err, err
    if code == 0:
        assert not errors, err
    else:
        assert code == 2 and len(errors) == 1, (code, err)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("props")
    data = write_dataset(root / "data", plain(n_train=2, n_val=1, n_test=2))
    torch.manual_seed(0)
    hc = HyperCUT(out_dim=16)
    torch.save({"model": hc.state_dict(), **hc.checkpoint_fields(), "epoch": 1}, root / "hc.pth")
    jin = build_backbone("Jin", width_mult=0.125)
    torch.save({"model": jin.state_dict(), **backbone_checkpoint_fields(jin), "epoch": 0, "step": 0}, root / "jin.pth")
    return {"root": root, "data": data, "meta": json.loads((data / "metadata.json").read_text()),
            "runs": itertools.count()}


# --- mutated metadata ---------------------------------------------------------------------------------

JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.floats(allow_nan=True),
                        st.text(max_size=8), st.lists(st.integers(0, 3), max_size=3),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
ENTRY_KEYS = ["id", "order", "partition", "blur_path", "bbox"] + [f"frame{k:03d}_path" for k in range(1, 9)]


@st.composite
def mutations(draw):
    """A list of (kind, ...) edits of metadata.json."""
    one = st.one_of(
        st.tuples(st.just("drop"), st.integers(0, 9), st.sampled_from(ENTRY_KEYS)),
        st.tuples(st.just("set"), st.integers(0, 9), st.sampled_from(ENTRY_KEYS), JSON_VALUES),
        st.tuples(st.just("order"), st.integers(0, 9), st.sampled_from(["ignore", "keep", "reverse", "random", "Reverse", ""])),
        st.tuples(st.just("partition"), st.integers(0, 9), st.sampled_from(["train", "val", "test", "Train", "all"])),
        st.tuples(st.just("top"), st.sampled_from(["data", "frame_per_seq", "name"]), JSON_VALUES),
        st.tuples(st.just("drop_top"), st.sampled_from(["data", "frame_per_seq", "name"])),
        st.tuples(st.just("frame_per_seq"), st.integers(-1, 9)),
        st.tuples(st.just("shuffle"), st.randoms(use_true_random=False)),
        st.tuples(st.just("duplicate"), st.integers(0, 9)),
        st.tuples(st.just("entry"), st.integers(0, 9), JSON_VALUES),
    )
    return draw(st.lists(one, min_size=1, max_size=4))


def mutate(meta: dict, edits) -> object:
    meta = copy.deepcopy(meta)
    for edit in edits:
        kind, rest = edit[0], edit[1:]
        data = meta.get("data") if isinstance(meta, dict) else None
        entries = data if isinstance(data, list) and data else None
        if kind in ("drop", "set", "order", "partition", "duplicate", "entry") and entries is None:
            continue
        if kind == "drop" and isinstance(entries[rest[0] % len(entries)], dict):
            entries[rest[0] % len(entries)].pop(rest[1], None)
        elif kind == "set" and isinstance(entries[rest[0] % len(entries)], dict):
            entries[rest[0] % len(entries)][rest[1]] = rest[2]
        elif kind in ("order", "partition") and isinstance(entries[rest[0] % len(entries)], dict):
            entries[rest[0] % len(entries)][kind] = rest[1]
        elif kind == "top":
            meta[rest[0]] = rest[1]
        elif kind == "drop_top":
            meta.pop(rest[0], None)
        elif kind == "frame_per_seq":
            meta["frame_per_seq"] = rest[0]
        elif kind == "shuffle" and entries is not None:
            rest[0].shuffle(entries)
        elif kind == "duplicate":
            entries.append(copy.deepcopy(entries[rest[0] % len(entries)]))
        elif kind == "entry":
            entries[rest[0] % len(entries)] = rest[1]
    return meta


@SETTINGS
@given(edits=mutations())
def test_mutated_metadata_reads_or_fails_with_one_line(workspace, edits):
    data = workspace["data"]
    (data / "metadata.json").write_text(json.dumps(mutate(workspace["meta"], edits)))
    for split in PARTITIONS:
        for check in (True, "headers"):
            try:
                _, entries = load_split(data, split, check=check)
            except UserError as e:
                assert str(e) and "\n" not in str(e)
            else:
                assert entries and all(len(e.frame_paths) >= 1 for e in entries)
    assert_works_or_one_error_line(*run_script(prepare_dataset.main, ["summary", "--out", str(data)]))
    code, err = run_script(test_hypercut.main, ["--metadata_root", str(data), "--pretrained_path",
                                                 str(workspace["root"] / "hc.pth"), "--device", "cpu"])
    assert_works_or_one_error_line(code, err)


def test_mutations_reach_both_outcomes(workspace):
    """The strategy is not vacuous: the original file works, a broken one is refused."""
    data = workspace["data"]
    (data / "metadata.json").write_text(json.dumps(workspace["meta"]))
    assert run_script(prepare_dataset.main, ["summary", "--out", str(data)])[0] == 0
    (data / "metadata.json").write_text(json.dumps(mutate(workspace["meta"], [("partition", 0, "all")])))
    code, err = run_script(prepare_dataset.main, ["summary", "--out", str(data)])
    assert code == 2 and "partition 'all'" in err
    (data / "metadata.json").write_text(json.dumps(workspace["meta"]))


# --- random flag values -----------------------------------------------------------------------------------

INTS = ["-1", "0", "1", "2", str(10 ** 30)]
FLOATS = ["nan", "inf", "-inf", "-1", "0", "1e-3", "0.5", "1e30", "1e31", "3.5e38", "1e308"]
FRAMES = ["1 2 3 4 5 6 7", "7 6 5 4 3 2 1", "0", "8", "1 1 2 3 4 5 6", "1 2 3", "2 3 4 5 6 7"]
COMMON = {"--batch_size": INTS, "--num_workers": ["-1", "0", str(10 ** 6)], "--seed": INTS + [str(2 ** 32)],
          "--target_frames": FRAMES}
TRAIN = {**COMMON, "--epochs": INTS, "--crop_size": ["-1", "0", "1", "8", "33", "40", "41", str(10 ** 30)],
         "--lr": FLOATS, "--weight_decay": FLOATS, "--gamma": FLOATS + ["1.5"], "--val_epoch": INTS,
         "--train_step": INTS, "--display_step": INTS, "--lr_decay": INTS, "--skip_nonfinite": INTS,
         "--train_limit": INTS, "--val_limit": INTS, "--load_epoch": INTS,
         "--optimizer": ["SGD", "ADAM", "RMSprop", "ADAMax"], "--decay_type": ["step", "step_1_2", "step_2_1", "x"]}
HYPERCUT = {**TRAIN, "--out_dim": ["-1", "0", "1", "8", str(10 ** 30)], "--slope": FLOATS}
BLUR2VID = {**TRAIN, "--width_mult": ["nan", "inf", "-1", "0", "0.05", "0.125", "5", "1e30"], "--alpha": FLOATS,
            "--img_log_freq": INTS, "--loss_type": ["naive", "order_inv", "hypercut"]}
TEST = {**COMMON, "--width_mult": ["nan", "-1", "0", "0.125", "1", "1e30"], "--test_limit": INTS,
        "--load_epoch": INTS, "--p_mode": ["pair", "sequence"], "--split": ["train", "val", "test"]}


def flag_sets(table):
    return st.lists(st.sampled_from(sorted(table)), min_size=1, max_size=3, unique=True).flatmap(
        lambda flags: st.tuples(*[st.tuples(st.just(f), st.sampled_from(table[f])) for f in flags]))


def as_argv(chosen) -> list:
    argv = []
    for flag, value in chosen:
        argv += [f"{flag}={value}"] if " " not in value else [flag, *value.split()]
    return argv


def assert_saved_weights_finite(run_dir) -> None:
    for path in sorted((run_dir / "models").glob("*.pth")):
        state = torch.load(path, weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


@SETTINGS
@given(chosen=flag_sets(HYPERCUT))
def test_train_hypercut_random_flags(workspace, chosen):
    runs, exp = workspace["root"] / "runs", f"h{next(workspace['runs'])}"
    argv = ["--metadata_root", str(workspace["data"]), "--checkpoints_dir", str(runs), "--exp_name", exp,
            "--device", "cpu", "--num_workers", "0", "--crop_size", "36", "--out_dim", "16", "--batch_size", "2",
            "--epochs", "1"] + as_argv(chosen) + ["--max_steps", "1"]
    code, err = run_script(train_hypercut.main, argv)
    assert_works_or_one_error_line(code, err)
    if code == 0:
        assert_saved_weights_finite(runs / exp)


@SETTINGS
@given(chosen=flag_sets(BLUR2VID))
def test_train_blur2vid_random_flags(workspace, chosen):
    runs, exp = workspace["root"] / "runs", f"b{next(workspace['runs'])}"
    argv = ["--metadata_root", str(workspace["data"]), "--checkpoints_dir", str(runs), "--exp_name", exp,
            "--device", "cpu", "--num_workers", "0", "--crop_size", "40", "--width_mult", "0.125", "--batch_size",
            "2", "--epochs", "1", "--display_step", "0", "--hypercut_path", str(workspace["root"] / "hc.pth")]
    code, err = run_script(train_blur2vid.main, argv + as_argv(chosen) + ["--max_steps", "1"])
    assert_works_or_one_error_line(code, err)
    if code == 0:
        assert_saved_weights_finite(runs / exp)


@SETTINGS
@given(chosen=flag_sets(TEST))
def test_test_blur2vid_random_flags(workspace, chosen):
    argv = ["--metadata_root", str(workspace["data"]), "--pretrained_path", str(workspace["root"] / "jin.pth"),
            "--no_lpips", "--device", "cpu", "--num_workers", "0", "--output_json",
            str(workspace["root"] / "results" / f"t{next(workspace['runs'])}.json")]
    code, err = run_script(test_blur2vid.main, argv + as_argv(chosen))
    assert_works_or_one_error_line(code, err)
    if code == 0:
        result = json.loads((workspace["root"] / "results").joinpath(argv[-1].split("/")[-1]).read_text())
        assert all(v is None or math.isfinite(v) for v in result["pPSNR"])


def test_random_flags_reach_both_outcomes(workspace):
    """The flag strategies are not vacuous: a plain run works, a bad value is one line."""
    runs = workspace["root"] / "runs"
    base = ["--metadata_root", str(workspace["data"]), "--checkpoints_dir", str(runs), "--device", "cpu",
            "--num_workers", "0", "--crop_size", "36", "--out_dim", "16", "--batch_size", "2", "--epochs", "1",
            "--max_steps", "1"]
    assert run_script(train_hypercut.main, base + ["--exp_name", "plain"])[0] == 0
    code, err = run_script(train_hypercut.main, base + ["--exp_name", "bad", "--lr=nan"])
    assert code == 2 and err.startswith("error: --lr must be a finite number")

"""utils.training.fit through the HyperCUT train script: mixed precision, the GradScaler's saved state,
non-finite losses, logging intervals."""
import copy
import json

import pytest
import torch
from _cli import one_line_error

import train_hypercut
import utils.cli
from utils.distributed import DistInfo
from utils.training import Amp, NonFiniteLoss, NonFinitePolicy, amp_dtype
from _tiny import synthetic_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("fit") / "data", 40, {"train": 4, "val": 2, "test": 1}, seed=1)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def argv(data, tmp_path, exp, *extra):
    return ["--metadata_root", str(data), "--checkpoints_dir", str(tmp_path), "--exp_name", exp, "--device", "cpu",
            "--num_workers", "0", "--crop_size", "36", "--out_dim", "16", "--batch_size", "2", "--lr", "1e-5",
            "--train_step", "1", *extra]


def train(flags):
    args = train_hypercut.build_parser().parse_args(flags)
    return train_hypercut.train(args)


def test_amp_modes():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cuda) is None
    assert amp_dtype("bf16", cpu) == torch.bfloat16 and amp_dtype("fp16", cpu) == torch.float16
    assert Amp("fp16", cpu).scaler is not None and Amp("bf16", cpu).scaler is None


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes(data, tmp_path, mode):
    history = train(argv(data, tmp_path, mode, "--amp", mode, "--epochs", "1"))
    assert len(history["losses"]) == 2 and all(torch.isfinite(torch.tensor(history["losses"])))
    state = torch.load(tmp_path / mode / "training_states" / "latest.pth", weights_only=True)
    assert ("grad_scaler" in state) == (mode == "fp16")
    if mode == "fp16":  # the scaler's state is saved and continues on --resume
        assert state["grad_scaler"]["scale"] > 0
        resumed = train(argv(data, tmp_path, mode, "--amp", mode, "--epochs", "2", "--resume"))
        assert len(resumed["losses"]) == 2 and all(torch.isfinite(torch.tensor(resumed["losses"])))
    ckpt = torch.load(tmp_path / mode / "models" / "0001.pth", weights_only=True)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())


def test_non_finite_loss_stops_the_run(data, tmp_path, monkeypatch, capsys):
    """A NaN at step 3 (epoch 2): one error line naming the step and the term, exit 2, and the state of
    epoch 1 is kept as the latest; --skip_nonfinite 1 skips that batch instead and finishes."""
    import models.hypercut as hypercut_module
    real_loss = hypercut_module.hypercut_loss
    calls = {"n": 0}

    def poisoned(scores):
        calls["n"] += 1
        total, diff, same = real_loss(scores)
        if calls["n"] == 3:
            return total * float("nan"), diff * float("nan"), same
        return total, diff, same

    # the training objective looks the loss up in models.hypercut at each call; validation does not use it
    monkeypatch.setattr(hypercut_module, "hypercut_loss", poisoned)
    err = one_line_error(capsys, train_hypercut.main, argv(data, tmp_path, "nan", "--epochs", "2"))
    assert "step 3" in err and "total" in err and "diff" in err and "same" not in err.split("step")[0]
    state = torch.load(tmp_path / "nan" / "training_states" / "latest.pth", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "nan" / "models" / "0002.pth").exists()

    calls["n"] = 0
    history = train(argv(data, tmp_path, "skip", "--epochs", "2", "--skip_nonfinite", "1"))
    assert len(history["losses"]) == 3  # 4 batches, one skipped
    log = (tmp_path / "skip" / "log.txt").read_text()
    assert "batch skipped (1 of --skip_nonfinite 1)" in log and "1 batches skipped" in log


def test_one_non_finite_policy_decides_per_step_or_at_the_epoch_end():
    """NonFinitePolicy: on the CPU (or with --skip_nonfinite) each step before its optimiser step, skipping while
    allowed; on a GPU without it, the epoch's rows at its end, naming the first bad step; one message."""
    logged, names = [], ["total", "diff"]
    nan = torch.tensor([1.0, float("nan")])
    every = NonFinitePolicy(1, True, DistInfo(), logged.append)
    assert not every.skip(torch.tensor([1.0, 2.0]), names, 1, 1)
    assert every.skip(nan, names, 2, 1)
    assert logged == ["step 2: loss term(s) diff not finite; batch skipped (1 of --skip_nonfinite 1)"]
    with pytest.raises(NonFiniteLoss, match=r"^the loss term\(s\) diff became non-finite at step 3 \(epoch 1\); "
                                            r"the run stopped .* --skip_nonfinite N to skip such batches$"):
        every.skip(nan, names, 3, 1)
    every.check_epoch(nan[None].double(), names, 3, 1)  # already looked at step by step
    at_end = NonFinitePolicy(0, False, DistInfo(), logged.append)
    assert not at_end.skip(nan, names, 1, 1)  # no host sync per step
    rows = torch.tensor([[1.0, 2.0], [float("inf"), float("nan")], [1.0, float("nan")]], dtype=torch.float64)
    with pytest.raises(NonFiniteLoss, match=r"term\(s\) total, diff became non-finite at step 6 \(epoch 2\)"):
        at_end.check_epoch(rows, names, 5, 2)
    assert len(logged) == 1


def test_the_flags_are_read_never_written(data, tmp_path):
    """The train script builds its TrainConfig once and changes nothing in the parsed flags; the derived values
    (the default run name, the dataset's name) and the run's records go to args.json and the checkpoints."""
    flags = argv(data, tmp_path, "unused", "--epochs", "1")
    del flags[flags.index("--exp_name"):flags.index("--exp_name") + 2]
    args = train_hypercut.build_parser().parse_args(flags)
    before = copy.deepcopy(vars(args))
    train_hypercut.train(args)
    assert vars(args) == before
    run = next(tmp_path.glob("HyperCUT_*"))
    saved = json.loads((run / "args.json").read_text())
    assert list(saved) == list(before) + ["resolved_paths"]
    assert saved["exp_name"] == run.name and saved["dataset_name"] and before["dataset_name"] is None
    assert torch.load(run / "models" / "0001.pth", weights_only=True)["args"] == saved

def test_bad_numbers_are_refused_before_any_work(data, tmp_path, capsys):
    for flag, value in (("--lr", "inf"), ("--gamma", "nan"), ("--slope", "nan"), ("--weight_decay", "-1")):
        err = one_line_error(capsys, train_hypercut.main, argv(data, tmp_path, "bad", flag, value))
        assert flag in err
    err = one_line_error(capsys, train_hypercut.main, argv(data, tmp_path, "bad", "--target_frames", "1", "2", "3",
                                                           "4", "4", "6", "7"))
    assert "distinct" in err and "4" in err
    assert not (tmp_path / "bad").exists()
    args = train_hypercut.build_parser().parse_args(argv(data, tmp_path, "ok"))
    assert json.loads(json.dumps(vars(args), allow_nan=False))  # nothing non-finite reaches args.json


def test_ctrl_c_during_training_keeps_the_last_epoch(data, tmp_path, monkeypatch, capsys):
    """Ctrl-C in epoch 2: one line naming --resume, exit 130, epoch 1's state kept whole and no temporary
    file left; --resume then finishes the run."""
    import models.hypercut as hypercut_module
    real_loss = hypercut_module.hypercut_loss
    calls = {"n": 0}

    def interrupted(scores):
        calls["n"] += 1
        if calls["n"] == 3:  # the first step of epoch 2 (2 steps per epoch)
            raise KeyboardInterrupt
        return real_loss(scores)

    monkeypatch.setattr(hypercut_module, "hypercut_loss", interrupted)
    with pytest.raises(SystemExit) as info:
        train_hypercut.main(argv(data, tmp_path, "int", "--epochs", "2"))
    err = capsys.readouterr().err.strip()
    assert info.value.code == 130 and "\n" not in err and "interrupted" in err and "--resume" in err
    run = tmp_path / "int"
    state = torch.load(run / "training_states" / "latest.pth", weights_only=True)
    assert state["epoch"] == 1
    assert not list(run.rglob("*.tmp")) and not (run / "models" / "0002.pth").exists()

    monkeypatch.setattr(hypercut_module, "hypercut_loss", real_loss)
    assert train_hypercut.main(argv(data, tmp_path, "int", "--epochs", "2", "--resume")) == 0
    assert (run / "models" / "0002.pth").exists()


def test_time_limit_ends_the_run_within_a_step_and_resume_continues(data, tmp_path, monkeypatch):
    """--time_limit: the run stops at the first step past the limit, even mid-epoch (model saved and
    validated; no state for the partial epoch, so --resume continues from the last complete one); the log
    has the loss every --display_step steps. --state_every N: states only every N epochs and at the last."""
    history = train(argv(data, tmp_path, "tl", "--epochs", "5", "--val_epoch", "10", "--time_limit", "1e-9",
                         "--display_step", "1"))
    run = tmp_path / "tl"
    assert list(history["val"]) == [1] and len(history["losses"]) == 1  # 2 steps per epoch: stopped after one
    assert sorted(p.name for p in (run / "models").glob("*.pth")) == ["0001.pth"]
    log = (run / "log.txt").read_text()
    assert "--time_limit 1e-09 min reached in epoch 1 at step 1" in log
    assert "stopped in epoch 1 after 1 steps (--time_limit); no training state saved" in log
    assert not (run / "training_states" / "latest.pth").exists()
    line = next(x for x in log.splitlines() if "step 1 (epoch 1) | " in x)
    assert f"total {history['losses'][0]:.5f}" in line and "(mean of the last 1 steps)" in line

    history = train(argv(data, tmp_path, "tl2", "--epochs", "1", "--val_epoch", "10", "--display_step", "2"))
    run = tmp_path / "tl2"
    log = (run / "log.txt").read_text()
    line = next(x for x in log.splitlines() if "step 2 (epoch 1) | " in x)
    assert f"total {sum(history['losses']) / 2:.5f}" in line and "(mean of the last 2 steps)" in line
    assert "step 1 (epoch 1) | " not in log
    from utils.run import Run
    saved, save_state = [], Run.save_state
    monkeypatch.setattr(Run, "save_state", lambda self, epoch, *a, **k: (saved.append(epoch), save_state(self, epoch, *a, **k)))
    history = train(argv(data, tmp_path, "tl2", "--epochs", "4", "--val_epoch", "10", "--resume", "--state_every", "2"))
    assert list(history["val"]) == [4] and len(history["losses"]) == 6  # epochs 2, 3, 4
    assert saved == [2, 4]
    assert "stopped in epoch" not in (run / "log.txt").read_text()  # a skipped state is not a stopped epoch
    assert sorted(p.name for p in (run / "models").glob("*.pth")) == ["0001.pth", "0004.pth"]
    assert torch.load(run / "training_states" / "latest.pth", weights_only=True)["epoch"] == 4


@pytest.mark.parametrize("cores, per_machine, expected", [(2, None, 2), (16, None, 8), (1, None, 1), (16, "4", 4),
                                                          (2, "4", 1), (12, "2", 6)])
def test_auto_loader_workers(monkeypatch, cores, per_machine, expected):
    """--num_workers auto: the reference's 8, bounded by this process's share of the cores, at least 1."""
    monkeypatch.setattr(utils.cli, "usable_cores", lambda: cores)
    if per_machine is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", per_machine)
    assert utils.cli.loader_workers("auto") == expected
    assert utils.cli.loader_workers(3) == 3 and utils.cli.loader_workers(0) == 0


def test_auto_workers_are_resolved_and_recorded(data, tmp_path, monkeypatch, capsys):
    """The training scripts default to auto; the run records the count it used, the parsed flags keep "auto";
    a word other than auto or a count out of range is one line naming the flag."""
    monkeypatch.setattr(utils.cli, "usable_cores", lambda: 1)
    flags = argv(data, tmp_path, "auto", "--epochs", "1")
    del flags[flags.index("--num_workers"):flags.index("--num_workers") + 2]
    args = train_hypercut.build_parser().parse_args(flags)
    assert args.num_workers == "auto"
    train_hypercut.train(args)
    assert args.num_workers == "auto"
    assert json.loads((tmp_path / "auto" / "args.json").read_text())["num_workers"] == 1
    for value, message in (("some", "invalid int value: 'some'"), ("300", "--num_workers must be <= 256")):
        err = one_line_error(capsys, train_hypercut.main, argv(data, tmp_path, "bad", "--num_workers", value))
        assert message in err, err

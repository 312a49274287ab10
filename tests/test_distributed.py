"""Both train scripts under torchrun with two CPU processes (gloo): the ranks end with identical weights,
equal to one process with the same global batch; resume under DDP is exact; validation is reduced over
the ranks (every rank holds the whole split's figures)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny import synthetic_dataset


REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_dist_train_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# float32 sums in another order (two half-batches all-reduced vs one batch) after a few Adamax steps
RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("dist") / "data", 48, {"train": 8, "val": 3, "test": 1}, seed=5)


def run(script: str, out: Path, flags: list, processes: int) -> list:
    """train() of `script` with `processes` ranks; returns each rank's {"model", "losses", "val"}."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
    proc = subprocess.run([sys.executable, *launcher, str(WORKER), script, str(out), "--", *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(processes)]


def assert_same_weights(a: dict, b: dict, exact: bool) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=ATOL, msg=k)


def hypercut_flags(data, ckpts, exp, batch, *extra):
    return ["--metadata_root", str(data), "--checkpoints_dir", str(ckpts), "--exp_name", exp, "--device", "cpu",
            "--num_workers", "0", "--crop_size", "40", "--out_dim", "32", "--lr", "1e-5", "--val_epoch", "1",
            "--batch_size", str(batch), *extra]


def test_hypercut_two_processes(data, tmp_path):
    ddp = run("train_hypercut", tmp_path / "ddp", hypercut_flags(data, tmp_path, "ddp", 2, "--epochs", "2"), 2)
    single = run("train_hypercut", tmp_path / "one", hypercut_flags(data, tmp_path, "one", 4, "--epochs", "2"), 1)[0]
    assert_same_weights(ddp[0]["model"], ddp[1]["model"], exact=True)
    assert_same_weights(ddp[0]["model"], single["model"], exact=False)
    assert len(ddp[0]["losses"]) == len(single["losses"]) == 4  # 8 sequences: 2 steps per epoch either way
    mean_of_ranks = [(a + b) / 2 for a, b in zip(ddp[0]["losses"], ddp[1]["losses"])]
    assert mean_of_ranks == pytest.approx(single["losses"], rel=RTOL)
    for epoch in (1, 2):  # validation over all three val sequences on every rank
        assert ddp[0]["val"][epoch] == ddp[1]["val"][epoch]
        assert ddp[0]["val"][epoch]["num_sequences"] == 3
        assert ddp[0]["val"][epoch] == pytest.approx(single["val"][epoch], rel=RTOL)

    # resume under DDP: one epoch, then --resume for the second == two epochs straight
    run("train_hypercut", tmp_path / "split1", hypercut_flags(data, tmp_path, "split", 2, "--epochs", "1"), 2)
    resumed = run("train_hypercut", tmp_path / "split2",
                  hypercut_flags(data, tmp_path, "split", 2, "--epochs", "2", "--resume"), 2)
    assert_same_weights(resumed[0]["model"], ddp[0]["model"], exact=True)
    assert_same_weights(resumed[1]["model"], ddp[1]["model"], exact=True)
    assert resumed[0]["val"][2] == ddp[0]["val"][2]


def test_blur2vid_two_processes(data, tmp_path):
    def flags(exp, batch):
        return ["--metadata_root", str(data), "--checkpoints_dir", str(tmp_path), "--exp_name", exp,
                "--device", "cpu", "--num_workers", "0", "--crop_size", "40", "--width_mult", "0.125",
                "--epochs", "1", "--display_step", "0", "--batch_size", str(batch),
                # SGD: an update linear in the gradient, so float noise stays noise (Adamax's first step is
                # lr * sign(g), which flips on gradients that are zero up to rounding)
                "--optimizer", "SGD", "--lr", "1e-3"]

    ddp = run("train_blur2vid", tmp_path / "ddp", flags("ddp", 2), 2)
    single = run("train_blur2vid", tmp_path / "one", flags("one", 4), 1)[0]
    assert_same_weights(ddp[0]["model"], ddp[1]["model"], exact=True)
    assert_same_weights(ddp[0]["model"], single["model"], exact=False)
    assert ddp[0]["val"][1] == ddp[1]["val"][1]
    assert ddp[0]["val"][1] == pytest.approx(single["val"][1], rel=RTOL)
    assert (tmp_path / "ddp" / "models" / "0001.pth").is_file()

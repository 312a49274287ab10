"""utils.checkpoint: atomic writes, safe loads, RNG state; utils.training.denormals_flushed."""
import os
import pickle
import random

import numpy as np
import pytest
import torch

from utils.checkpoint import (CheckpointError, atomic_write_text, load_checkpoint, rng_state, save_checkpoint,
                              set_rng_state)
from utils.training import denormals_flushed


class _Payload:
    """Something that is not a tensor or a plain container; unpickling it would call __reduce__."""

    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "ckpt.pth"
    obj = {"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3, "args": {"lr": 1e-4, "name": "x"}}
    save_checkpoint(obj, path)
    back = load_checkpoint(path)
    assert torch.equal(back["model"]["w"], obj["model"]["w"])
    assert back["epoch"] == 3 and back["args"] == {"lr": 1e-4, "name": "x"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pth"]  # no temporary file left


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"epoch": 1}, path)
    with pytest.raises(Exception):
        save_checkpoint({"epoch": 2, "bad": lambda: 0}, path)  # lambdas cannot be pickled
    assert load_checkpoint(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]


def test_atomic_write_text_replaces_whole_file(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_text(path, "long old content\n" * 10)
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope\.pth"):
        load_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)
    good = tmp_path / "good.pth"
    save_checkpoint({"model": {"w": torch.randn(64, 64)}}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cannot load checkpoint .*cut\.pth"):
        load_checkpoint(cut)


def test_untrusted_pickle_is_refused_without_unsafe_advice(tmp_path, capfd):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"model": _Payload()}, fh, protocol=2)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "evil.pth" in msg and "arbitrary code" in msg
    assert "weights_only=False" not in msg and "\n" not in msg
    assert "should-never-run" not in capfd.readouterr().out


def test_rng_state_round_trip_through_a_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    path = tmp_path / "rng.pth"
    save_checkpoint({"rng": rng_state()}, path)
    expected = (random.random(), np.random.standard_normal(3), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(path)["rng"])
    got = (random.random(), np.random.standard_normal(3), torch.rand(3))
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])


def test_denormals_flushed_only_inside():
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a float32 denormal
    with denormals_flushed():
        assert (tiny * 1.0).item() == 0.0
    assert (tiny * 1.0).item() > 0.0
    with pytest.raises(RuntimeError):
        with denormals_flushed():
            raise RuntimeError("boom")
    assert (tiny * 1.0).item() > 0.0

"""The seven commands of the authors' README, as written (plus only budget flags), in order, on a tiny
dataset in the seed layout: they must all run, and the two evaluations must pick the right runs."""
import json
import shlex
import shutil

import pytest
import torch
from _cli import one_line_error
from _tiny import synthetic_dataset

import generate_order
import test_blur2vid
import test_hypercut
import train_blur2vid
import train_hypercut
from datasets.blur2vid import Blur2VidDataset

# Verbatim from the reference's README (`dataname` and the paths are the user's).
SEED_COMMANDS = """
python train_hypercut.py --dataset_name dataname --metadata_root path/to/metadata.json
python test_hypercut.py --dataset_name dataname --metadata_root path/to/metadata.json --pretrained_path path/to/pretrained_HyperCUT.pth
python generate_order.py --dataset_name dataname --metadata_root path/to/metadata.json --save_path path/to/generated_metadata.json --pretrained_path path/to/pretrained_HyperCUT.pth
python train_blur2vid.py --dataset_name dataname --metadata_root path/to/generated_metadata.json --batch_size 8 --backbone Jin --loss_type order_inv --target_frames 1 2 3 4 5 6 7
python train_blur2vid.py --dataset_name dataname --metadata_root path/to/generated_metadata.json --batch_size 8 --backbone Jin --loss_type hypercut --hypercut_path path/to/pretrained_HyperCUT.pth --target_frames 1 2 3 4 5 6 7
python test_blur2vid.py --dataset_name dataname --metadata_root path/to/generated_metadata.json --batch_size 8 --backbone Jin --target_frames 1 2 3 4 5 6 7
python test_blur2vid.py --dataset_name dataname --metadata_root path/to/generated_metadata.json --batch_size 8 --backbone Jin --hypercut_path path/to/pretrained_HyperCUT.pth --target_frames 1 2 3 4 5 6 7
""".strip().splitlines()

MAINS = {"train_hypercut.py": train_hypercut.main, "test_hypercut.py": test_hypercut.main,
         "generate_order.py": generate_order.main, "train_blur2vid.py": train_blur2vid.main,
         "test_blur2vid.py": test_blur2vid.main}
# Only what keeps the runs tiny on a CPU.
BUDGET = {"train_hypercut.py": ["--epochs", "1", "--crop_size", "40"],
          "train_blur2vid.py": ["--epochs", "1", "--crop_size", "40", "--width_mult", "0.125"]}
COMMON_BUDGET = ["--device", "cpu", "--num_workers", "0"]


def seed_argv(line: str, generated: str) -> tuple[str, list[str]]:
    """A README line -> (script, argv); generate_order's output goes to another folder than the dataset."""
    words = shlex.split(line.replace("path/to/generated_metadata.json", generated))
    assert words[0] == "python"
    return words[1], words[2:] + BUDGET.get(words[1], []) + COMMON_BUDGET


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: a second OpenMP thread only waits on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def seed_layout(tmp_path, monkeypatch):
    """tmp/path/to/metadata.json (a tiny synthetic dataset), run from tmp as the README's commands are;
    LPIPS weights absent (an empty torch cache, no network)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def offline(*args, **kwargs):
        raise OSError("offline (test)")

    monkeypatch.setattr("utils.metrics.lpips._download", offline)
    synthetic_dataset(tmp_path / "path" / "to", size=48, counts={"train": 8, "val": 2, "test": 2}, seed=3)
    (tmp_path / "orders").mkdir()
    return tmp_path


def test_the_seven_seed_commands_in_order(seed_layout, capsys):
    root = seed_layout
    generated = "orders/generated_metadata.json"
    outputs = []
    for i, line in enumerate(SEED_COMMANDS):
        script, argv = seed_argv(line, generated)
        assert MAINS[script](argv) == 0, line
        outputs.append(capsys.readouterr())
        if i == 0:  # the user puts the HyperCUT they trained where the next commands expect it
            run = root / "checkpoints" / "HyperCUT_ResnetIm2Vec_Concat_2frames_dim128_dataname"
            assert (run / "args.json").is_file()
            shutil.copyfile(run / "models" / "0001.pth", root / "path" / "to" / "pretrained_HyperCUT.pth")

    assert "| hit |" in outputs[1].out
    # generate_order wrote to another folder, and training read the same images from there
    meta = json.loads((root / generated).read_text())
    assert {e["order"] for e in meta["data"]} <= {"ignore", "reverse"}
    assert all(e["blur_path"].startswith("../path/to/") for e in meta["data"])
    a, b = Blur2VidDataset(root / "path" / "to", "val"), Blur2VidDataset(root / generated, "val")
    assert [e.blur_path.resolve() for e in a.entries] == [e.blur_path.resolve() for e in b.entries]
    for loss in ("order_inv", "hypercut"):
        run = root / "checkpoints" / f"Blur2Vid_Jin_{loss}_2frames_dataname"
        assert (run / "models" / "0001.pth").is_file(), loss
        assert json.loads((run / "args.json").read_text())["loss_type"] == loss
    # the first evaluation takes the order_inv run, the second (with --hypercut_path) the hypercut run
    first, second = outputs[5], outputs[6]
    assert "Blur2Vid_Jin_order_inv_2frames_dataname/models/0001.pth" in first.out
    assert "Blur2Vid_Jin_hypercut_2frames_dataname/models/0001.pth" in second.out
    assert "| pPSNR |" in first.out and "hit_x2_x6" in second.out and "hit_x2_x6" not in first.out
    for evaluation in (first, second):  # offline, no AlexNet weights: LPIPS skipped with one warning
        assert "| pLPIPS | skipped |" in evaluation.out
        assert evaluation.err.count("warning: LPIPS skipped") == 1

    # running the first training again does not reuse its folder silently
    script, argv = seed_argv(SEED_COMMANDS[0], generated)
    err = one_line_error(capsys, MAINS[script], argv)
    assert "already holds a run" in err and "--resume" in err and "--exp_name" in err


def test_test_blur2vid_without_a_run(seed_layout, capsys):
    """No run for these flags: one error line naming the runs that do exist."""
    run = seed_layout / "checkpoints" / "Blur2Vid_Jin_naive_2frames_other" / "models"
    run.mkdir(parents=True)
    torch.save({}, run / "0003.pth")
    script, argv = seed_argv(SEED_COMMANDS[5], "path/to/metadata.json")
    err = one_line_error(capsys, MAINS[script], argv)
    assert "Blur2Vid_Jin_order_inv_2frames_dataname" in err and "Blur2Vid_Jin_naive_2frames_other" in err
    err = one_line_error(capsys, MAINS[script], argv + ["--exp_name", "Blur2Vid_Jin_naive_2frames_other",
                                                        "--load_epoch", "2"])
    assert "no model of epoch 2" in err and "3" in err

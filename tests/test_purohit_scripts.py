"""Purohit from the command line on a tiny dataset: stage 1 -> stage 2 -> test (predicted and oracle
centre) -> inference; the stage rules of the flags."""
import json

import pytest
import torch
from _cli import one_line_error

import inference
import test_blur2vid
import train_blur2vid
from models import load_backbone
from _tiny import synthetic_dataset

WIDTH = "0.125"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("purohit") / "data", 40, {"train": 4, "val": 2, "test": 2}, seed=2)


def train_argv(data, ckpts, *extra):
    return ["--metadata_root", str(data), "--checkpoints_dir", str(ckpts), "--backbone", "Purohit",
            "--width_mult", WIDTH, "--crop_size", "32", "--batch_size", "2", "--epochs", "1", "--device", "cpu",
            "--num_workers", "0", "--display_step", "0", *extra]


@pytest.fixture(scope="module")
def stages(data, tmp_path_factory):
    ckpts = tmp_path_factory.mktemp("runs")
    assert train_blur2vid.main(train_argv(data, ckpts, "--stage", "1")) == 0
    stage1 = ckpts / "Blur2Vid_Purohit_stage1_2frames_Synthetic" / "models" / "0001.pth"
    assert train_blur2vid.main(train_argv(data, ckpts, "--stage1_path", str(stage1), "--loss_type", "order_inv",
                                          "--embed_weight", "0.5")) == 0
    return ckpts, stage1, ckpts / "Blur2Vid_Purohit_order_inv_2frames_Synthetic" / "models" / "0001.pth"


def test_stage2_starts_from_stage1_and_trains_only_its_modules(stages):
    _, stage1, stage2 = stages
    a, b = torch.load(stage1, weights_only=True), torch.load(stage2, weights_only=True)
    assert a["stage"] == 1 and b["stage"] == 2 and b["backbone"]["name"] == "Purohit"
    changed = {k.split(".")[0] for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])}
    assert changed == {"bie", "center_net"}  # the RVD stays as stage 1 left it (no --train_decoder)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"] if k.startswith(("rve.", "rvd.")))
    state = torch.load(stage2.parents[1] / "training_states" / "latest.pth", weights_only=True)
    log = (stage2.parents[1] / "log.txt").read_text()
    assert "embed" in log and "center" in log and "tv" in log and state["epoch"] == 1


def test_evaluation_with_predicted_and_oracle_centre(stages, data, tmp_path, capsys):
    ckpts, _, stage2 = stages
    base = ["--metadata_root", str(data), "--checkpoints_dir", str(ckpts), "--backbone", "Purohit",
            "--loss_type", "order_inv", "--device", "cpu", "--num_workers", "0", "--no_lpips"]
    assert test_blur2vid.main(base + ["--output_json", str(tmp_path / "pred.json")]) == 0
    out = capsys.readouterr().out
    assert f"evaluating {stage2}" in out and "oracle" not in out
    assert test_blur2vid.main(base + ["--middle_frame", "gt", "--output_json", str(tmp_path / "gt.json")]) == 0
    out = capsys.readouterr().out
    assert "[oracle centre" in out
    pred, gt = json.loads((tmp_path / "pred.json").read_text()), json.loads((tmp_path / "gt.json").read_text())
    assert pred["middle_frame"] == "predicted" and "oracle centre" in gt["middle_frame"]
    assert "(oracle centre)" in (tmp_path / "gt.csv").read_text() and "oracle" not in (tmp_path / "pred.csv").read_text()
    assert pred["pPSNR"] != gt["pPSNR"]  # the centre really changes the frames

    # the oracle evaluation equals the model run on the ground-truth centre, by hand
    from datasets.blur2vid import Blur2VidDataset
    from utils.metrics.sequence import SequenceMetrics
    model = load_backbone(stage2)
    metrics = SequenceMetrics(lpips=None)
    ds = Blur2VidDataset(data, "test")
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            metrics.update(model(item["blur"][None], item["frames"][None, 3])["frames"], item["frames"][None])
    assert gt["pPSNR"] == pytest.approx(metrics.per_frame("pPSNR"), rel=1e-5)


def test_stage1_checkpoints_are_not_deblurring_models(stages, data, tmp_path, capsys):
    _, stage1, _ = stages
    err = one_line_error(capsys, test_blur2vid.main, ["--metadata_root", str(data), "--pretrained_path", str(stage1),
                                                      "--device", "cpu", "--no_lpips"])
    assert "stage-1" in err
    blur = next(data.glob("*/blur/*.png"))
    err = one_line_error(capsys, inference.main, ["--pretrained_path", str(stage1), "--blur_path", str(blur),
                                                  "--device", "cpu"])
    assert "stage-1" in err


def test_inference_uses_the_predicted_centre(stages, data, tmp_path):
    _, _, stage2 = stages
    blur = next(data.glob("*/blur/*.png"))
    assert inference.main(["--pretrained_path", str(stage2), "--blur_path", str(blur), "--output_path",
                           str(tmp_path / "out"), "--device", "cpu"]) == 0
    frames = sorted((tmp_path / "out" / blur.stem).glob("frame_*.png"))
    assert [f.name for f in frames] == [f"frame_{k}.png" for k in range(1, 8)]


def test_stage_flag_rules(data, tmp_path, capsys):
    main = train_blur2vid.main
    assert "--stage1_path" in one_line_error(capsys, main, train_argv(data, tmp_path))
    assert "--loss_type naive" in one_line_error(capsys, main, train_argv(data, tmp_path, "--stage", "1",
                                                                          "--loss_type", "order_inv"))
    err = one_line_error(capsys, main, ["--metadata_root", str(data), "--backbone", "Jin", "--embed_weight", "1",
                                        "--device", "cpu"])
    assert "Purohit options" in err and "--embed_weight" in err
    err = one_line_error(capsys, main, train_argv(data, tmp_path, "--stage1_path", str(tmp_path / "none.pth")))
    assert "not found" in err

"""run_demo.py --quick: every stage of the pipeline from the command line, outputs checked against the files
the stages wrote; a rerun skips finished stages."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def outer(per_frame):
    return (per_frame[0] + per_frame[-1]) / 2


def test_quick_demo_end_to_end(tmp_path):
    out, data, fresh = tmp_path / "demo", tmp_path / "data", tmp_path / "fresh"
    cmd = [sys.executable, str(REPO / "run_demo.py"), "--quick", "--out", str(out), "--data", str(data),
           "--fresh_data", str(fresh), "--device", "cpu", "--num_workers", "0"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    meta = json.loads((data / "metadata.json").read_text())
    assert meta["generator"]["scene"] == "deadleaves" and meta["generator"]["motion"] == "translation"
    for name in ("metadata_oracle.json", "metadata_hypercut.json", "metadata_hypercut_ext.json"):
        ordered = json.loads((data / name).read_text())
        assert {e["order"] for e in ordered["data"]} <= {"ignore", "reverse"}
    oracle = json.loads((data / "metadata_oracle.json").read_text())["data"]
    assert all((e["order"] == "reverse") == (e["motion"][0] < 0) for e in oracle)
    assert json.loads((out / "hypercut_ext_test.json").read_text())["hit"] == 1.0  # antisymmetric f

    summary = json.loads((out / "summary.json").read_text())
    assert summary["minutes"] > 0
    assert summary["dataset"]["command"][:4] == ["prepare_dataset.py", "synthetic", "--out", str(data)]
    assert "--seed" in summary["dataset"]["command"] and "--scene" in summary["dataset"]["command"]
    fresh_cmd = summary["fresh_test"]["dataset"]["command"]
    assert fresh_cmd[fresh_cmd.index("--seed") + 1] == "1" and fresh_cmd[3] == str(fresh)
    assert set(summary["reference"]) == {"blur", "pair_mean", "oracle_warp", "centre_warp"}
    names = {"order_inv", "naive_random", "naive_oracle", "naive_hypercut", "naive_hypercut_ext", "hypercut"}
    assert set(summary["runs"]) == names and set(summary["fresh_test"]["runs"]) == names
    for name, run in summary["runs"].items():
        res = json.loads((out / f"jin_{name}_test.json").read_text())
        assert run["frames_1_7"] == outer(res["pPSNR"]) and run["frame_4"] == res["pPSNR"][3]
        assert run["mean"] == sum(res["pPSNR"]) / 7 and run["pPSNR"] == res["pPSNR"]
        assert (REPO / run["checkpoint"]).exists() or Path(run["checkpoint"]).exists()
        fres = json.loads((out / "fresh" / f"jin_{name}_test.json").read_text())
        assert summary["fresh_test"]["runs"][name]["frames_1_7"] == outer(fres["pPSNR"])
        assert res["num_sequences"] == 4 and fres["num_sequences"] == 4
    refs = json.loads((out / "references.json").read_text())
    assert summary["reference"]["blur"]["frames_1_7"] == outer(refs["test"]["blur"]["pPSNR"])
    assert summary["fresh_test"]["reference"]["blur"]["frame_4"] == refs["fresh_test"]["blur"]["pPSNR"][3]
    ref = summary["reference"]
    assert ref["centre_warp"]["frames_1_7"] > ref["oracle_warp"]["frames_1_7"] > ref["blur"]["frames_1_7"]
    assert ref["pair_mean"]["frame_4"] == 100.0
    assert 0.0 <= summary["orders"]["paper"] <= 1.0 and 0.0 <= summary["orders"]["ext"] <= 1.0
    assert set(summary["purohit"]) == {"predicted", "gt"}
    assert summary["purohit"]["gt"]["frame_4"] > summary["purohit"]["predicted"]["frame_4"] + 10  # oracle centre

    # every Jin run started from the shipped middle network, kept frozen
    import torch
    from models import load_backbone
    from models.backbones.jin import middle_network_state
    shipped = middle_network_state(REPO / "weights" / "jin_centre_w025_deadleaves.pth")
    for name in ("naive_oracle", "naive_random"):
        model = load_backbone(out / "checkpoints" / f"jin_{name}" / "models" / "0001.pth")
        assert all(torch.equal(model.center.state_dict()[k], v) for k, v in shipped.items())

    text = (out / "summary.md").read_text()
    assert "| naive_oracle |" in text and "| reference: oracle_warp |" in text and "fresh test set" in text
    assert (out / "per_frame.png").stat().st_size > 1000
    assert (out / "figures" / "sequence_0.png").stat().st_size > 1000 and (out / "figures" / "sequence_0.gif").exists()
    frames = sorted((out / "inference").glob("*/frame_*.png"))
    assert len(frames) == 4 * 7 and np.asarray(Image.open(frames[0])).shape == (40, 40, 3)
    assert Image.open(frames[0].parent / "frames.gif").format == "GIF"

    # a second run skips every training and writes the same figures
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train_hypercut.py" not in again.stdout and "train_blur2vid.py" not in again.stdout
    second = json.loads((out / "summary.json").read_text())
    assert second["runs"] == summary["runs"] and second["reference"] == summary["reference"]



def test_a_stage_that_needs_a_chain_starts_after_it_and_not_after_its_failure(tmp_path):
    import io

    import pytest

    import run_demo
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text("{}")
    bad.write_text("{")

    def run(chains, folder):  # python -m json.tool FILE: exit 0 on JSON, 1 otherwise
        log = io.StringIO()
        try:
            run_demo.run_chains(chains, jobs=2, threads=1, logs=tmp_path / folder, log=log)
        finally:
            run.text = log.getvalue()

    run({"a": [("a1", "json.tool", [good]), ("a2", "json.tool", [good])],
         "b": [("b1", "json.tool", [good], "a")]}, "logs1")
    assert run.text.index("a2: exit 0") < run.text.index("== b1") and "b1: exit 0" in run.text
    with pytest.raises(run_demo.StageFailed, match="stage 'a1' failed"):
        run({"a": [("a1", "json.tool", [bad])], "b": [("b1", "json.tool", [good], "a")]}, "logs2")
    assert "a1: exit 1" in run.text and "== b1" not in run.text

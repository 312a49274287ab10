"""run_demo.py --quick: every stage of the pipeline from the command line, outputs checked; a rerun skips
finished stages."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def test_quick_demo_end_to_end(tmp_path):
    out, data = tmp_path / "demo", tmp_path / "data"
    cmd = [sys.executable, str(REPO / "run_demo.py"), "--quick", "--out", str(out), "--data", str(data),
           "--device", "cpu", "--num_workers", "0"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    assert (data / "metadata.json").exists() and (data / "metadata_hypercut_demo.json").exists()
    ordered = json.loads((data / "metadata_hypercut_demo.json").read_text())
    assert {e["order"] for e in ordered["data"]} <= {"ignore", "reverse"}
    hc = json.loads((out / "hypercut_test.json").read_text())
    assert hc["num_sequences"] == 4 and 0.0 <= hc["hit"] <= 1.0
    assert json.loads((out / "hypercut_ext_test.json").read_text())["hit"] == 1.0  # antisymmetric f
    probe = json.loads((out / "probe.json").read_text())
    assert probe["sources"] == ["stored", "oracle", "hypercut:hypercut", "hypercut:hypercut_ext"]
    assert (out / "probe.png").stat().st_size > 1000 and (out / "per_frame.png").stat().st_size > 1000
    for loss in ("order_inv", "hypercut", "hypercut_ext"):
        res = json.loads((out / f"jin_{loss}_test.json").read_text())
        assert res["num_sequences"] == 4 and len(res["pPSNR"]) == 7
        assert res["pLPIPS"] is None or len(res["pLPIPS"]) == 7
        assert 3.0 < res["pPSNR_mean"] < 60.0 and res["pPSNR_mean"] >= res["PSNR_mean"] - 1e-9
        assert (out / f"jin_{loss}_test.csv").exists()
    purohit = {c: json.loads((out / f"purohit_order_inv_{c}_test.json").read_text()) for c in ("predicted", "gt")}
    assert purohit["predicted"]["middle_frame"] == "predicted" and "oracle" in purohit["gt"]["middle_frame"]
    # the oracle centre is the ground truth's frame 4 itself, so its frame-4 pPSNR is far above the predicted one's
    assert purohit["gt"]["pPSNR"][3] > purohit["predicted"]["pPSNR"][3] + 10
    assert (out / "checkpoints" / "purohit_stage1" / "models" / "0001.pth").exists()
    frames = sorted((out / "inference").glob("*/frame_*.png"))
    assert len(frames) == 4 * 7
    assert np.asarray(Image.open(frames[0])).shape == (64, 64, 3)
    gif = Image.open(frames[0].parent / "frames.gif")
    assert gif.format == "GIF" and gif.size == (64, 64) and (frames[0].parent / "contact.png").exists()
    summary = (out / "summary.md").read_text()
    assert "| order_inv |" in summary and "| hypercut_ext |" in summary and "hit" in summary
    assert "probe" in summary and "## Purohit (width 0.125), order_inv" in summary and "| oracle (ground truth) |" in summary
    # frames 1 & 7 against the paper's baseline, beside the no-network references
    base = json.loads((out / "baselines.json").read_text())
    inv, ext = (json.loads((out / f"jin_{k}_test.json").read_text()) for k in ("order_inv", "hypercut_ext"))
    gain = 0.5 * (ext["pPSNR"][0] + ext["pPSNR"][6]) - 0.5 * (inv["pPSNR"][0] + inv["pPSNR"][6])
    assert f"hypercut_ext: {gain:+.2f} dB over order_inv." in summary
    # and predicted in windows of the training crop (40 of the 64x64 images): their own line and figures
    tiled = {k: json.loads((out / f"jin_{k}_test_tiled.json").read_text()) for k in ("order_inv", "hypercut_ext")}
    assert all(t["tile"] == 40 and t["num_sequences"] == 4 for t in tiled.values())
    assert tiled["order_inv"]["pPSNR"] != inv["pPSNR"]  # the windows change what the network sees
    tgain = 0.5 * sum(tiled["hypercut_ext"]["pPSNR"][k] - tiled["order_inv"]["pPSNR"][k] for k in (0, 6))
    assert "The same networks predicting in 40x40 windows" in summary
    assert f"hypercut_ext: {tgain:+.2f} dB over order_inv." in summary.split("40x40 windows")[1]
    assert base["pair_mean"]["pPSNR"][3] == 100.0 and base["pair_mean"]["pPSNR"][0] > base["blur"]["pPSNR"][0]
    assert f"the mean of each true frame pair {0.5 * (base['pair_mean']['pPSNR'][0] + base['pair_mean']['pPSNR'][6]):.2f}" in summary

    # a second run skips both trainings and ends with the same summary
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train_hypercut.py" not in again.stdout and "train_blur2vid.py" not in again.stdout
    assert (out / "summary.md").read_text() == summary

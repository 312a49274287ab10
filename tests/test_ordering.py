"""The ordering study: recorded motion and the oracle order, the pit loss, our HyperCUT extensions, the probe."""
import json
import math

import pytest
import torch

import generate_order
import prepare_dataset
import train_hypercut
from datasets.synthetic import SyntheticConfig, load_photo, prepare_photo, render_sequence
from losses import build_loss, naive_loss
from losses.pit import pit_terms
from models.hypercut import HyperCUT, OrderingObjective, hypercut_loss, load_hypercut
from models.hypercut_ext import MotionIm2Vec, crop_consistency_loss, random_subcrops
from _cli import one_line_error
from lab import probe_order
from utils.motion import phase_correlation


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small embedded dataset with recorded motion (no foreground patches: the probe test needs a
    clean signal from few sequences)."""
    root = tmp_path_factory.mktemp("syn") / "data"
    assert prepare_dataset.main(["synthetic", "--out", str(root), "--size", "64", "--num_train", "40",
                                 "--num_val", "4", "--num_test", "16", "--foreground_p", "0",
                                 "--workers", "2"]) == 0
    return root


def test_phase_correlation_finds_a_known_shift():
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 96, 96, generator=gen), 3, 1, 1)
    a, b = img[..., 10:74, 10:74], img[..., 14:78, 7:71]  # content moves by (+3, -4)
    m, peak = phase_correlation(a, b)
    assert torch.allclose(m, torch.tensor([[3.0, -4.0]]), atol=0.3) and peak.item() > 0.2


def test_recorded_motion_matches_the_frames():
    cfg = SyntheticConfig(size=64, foreground_p=0.0)
    photo = prepare_photo(load_photo("astronaut"), cfg.size)
    recorded, measured = [], []
    for i in range(6):
        out = render_sequence(photo, cfg, torch.Generator().manual_seed(i))
        recorded.append(out["motion"])
        measured.append(phase_correlation(out["sharp"][:1], out["sharp"][-1:])[0][0])
    recorded, measured = torch.stack(recorded), torch.stack(measured)
    assert (recorded.norm(dim=1) > 5).all()
    assert ((recorded - measured).norm(dim=1) < 0.25 * recorded.norm(dim=1) + 1.0).all()


def test_travel_flag_sets_the_camera_motion(tmp_path, capsys):
    """--travel MIN MAX: the recorded motion's length stays inside the range (frame 1 -> 7 spans 6/7 of the
    exposure; travel is in photo pixels and each sequence's photo scale is 0.85-1.15 output pixels per photo
    pixel), is recorded in the metadata, and a bad range is refused."""
    out = tmp_path / "big"
    assert prepare_dataset.main(["synthetic", "--out", str(out), "--size", "64", "--num_train", "6", "--num_val",
                                 "1", "--num_test", "1", "--subframes", "5", "--foreground_p", "0",
                                 "--travel", "40", "44"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["generator"]["travel"] == [40.0, 44.0]
    lengths = [math.hypot(*e["motion"]) for e in meta["data"]]
    assert all(40 * 6 / 7 / 1.15 - 1 <= n <= 44 * 6 / 7 / 0.85 + 1 for n in lengths), lengths
    default = SyntheticConfig(size=64, foreground_p=0.0)
    photo = prepare_photo(load_photo("astronaut"), 64)
    short = [render_sequence(photo, default, torch.Generator().manual_seed(i))["motion"].norm().item()
             for i in range(6)]
    assert max(short) < 22 * 6 / 7 / 0.85 + 1 < 40 * 6 / 7 / 1.15 - 1 <= min(lengths)
    capsys.readouterr()
    err = one_line_error(capsys, prepare_dataset.main, ["synthetic", "--out", str(tmp_path / "bad"),
                                                        "--travel", "20", "10"])
    assert "--travel" in err and "20 10" in err and not (tmp_path / "bad").exists()
    err = one_line_error(capsys, prepare_dataset.main, ["synthetic", "--out", str(tmp_path / "bad"),
                                                        "--travel", "-1", "10"])
    assert "--travel must be >= 0" in err


def test_dataset_records_motion_and_oracle_orders_by_it(tiny, tmp_path, capsys):
    meta = json.loads((tiny / "metadata.json").read_text())
    assert all(len(e["motion"]) == 2 and e["source"] for e in meta["data"])
    out = tiny / "metadata_oracle.json"
    assert generate_order.main(["--metadata_root", str(tiny), "--oracle", "--save_path", str(out)]) == 0
    ordered = json.loads(out.read_text())
    for before, after in zip(meta["data"], ordered["data"]):
        assert after["order"] == ("reverse" if before["motion"][0] < 0 else "ignore")
        assert {k: v for k, v in after.items() if k != "order"} == {k: v for k, v in before.items() if k != "order"}
    assert {e["order"] for e in ordered["data"]} == {"ignore", "reverse"}
    # judged on the motion as stored: running it on its own output changes nothing
    again = tiny / "metadata_oracle2.json"
    assert generate_order.main(["--metadata_root", str(out), "--oracle", "--save_path", str(again)]) == 0
    assert json.loads(again.read_text()) == ordered


def test_oracle_order_errors(tiny, tmp_path, capsys):
    meta = json.loads((tiny / "metadata.json").read_text())
    del meta["data"][3]["motion"]
    bad = tiny / "metadata_nomotion.json"
    bad.write_text(json.dumps(meta))
    err = one_line_error(capsys, generate_order.main, ["--metadata_root", str(bad), "--oracle",
                                                       "--save_path", str(tiny / "o.json")])
    assert "no 'motion'" in err and meta["data"][3]["id"] in err
    err = one_line_error(capsys, generate_order.main, ["--metadata_root", str(tiny), "--save_path",
                                                       str(tiny / "o.json")])
    assert "--pretrained_path" in err and "--oracle" in err
    assert not (tiny / "o.json").exists()


def test_pit_loss_takes_the_better_direction():
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 7, 3, 8, 8, generator=gen)
    pred = torch.stack([gt[0], gt[1].flip(0), torch.rand(7, 3, 8, 8, generator=gen)])
    loss, flipped = pit_terms(pred, gt)
    assert flipped.tolist() == [False, True, flipped[2].item()]
    third = min(naive_loss(pred[2:], gt[2:]).item(), naive_loss(pred[2:], gt[2:].flip(1)).item())
    assert math.isclose(loss.item(), (2 * math.sqrt(1e-6) + third) / 3, rel_tol=1e-5)
    total, terms = build_loss("pit")({"frames": pred}, gt)
    assert terms["flipped"].item() == int(flipped.sum()) and total.requires_grad is False


def test_motion_f_is_antisymmetric_and_loads_back(tmp_path):
    torch.manual_seed(0)
    model = HyperCUT(f_func="MotionIm2Vec")
    assert isinstance(model.f_func, MotionIm2Vec)
    frames = torch.rand(2, 7, 3, 48, 48)
    _, scores = model(frames)
    assert torch.allclose(scores[:, 0::2], -scores[:, 1::2], atol=1e-5)
    assert scores.abs().min() > 0
    torch.save({"model": model.state_dict(), **model.checkpoint_fields()}, tmp_path / "m.pth")
    back = load_hypercut(tmp_path / "m.pth")
    assert back.config["f_func"] == "MotionIm2Vec"
    assert torch.allclose(back(frames)[1], scores, atol=1e-5)


def test_objective_defaults_to_the_paper_and_adds_the_crop_term():
    torch.manual_seed(0)
    model = HyperCUT(f_func="MotionIm2Vec")
    frames = torch.rand(3, 7, 3, 64, 64)
    total, _, _, l_crop, _ = OrderingObjective()(model, frames, key=1)
    assert torch.allclose(total, hypercut_loss(model(frames)[1])[0]) and l_crop.item() == 0
    crops = random_subcrops(frames, 40, 3, seed=5)
    assert crops.shape == (3, 3, 7, 3, 40, 40)
    assert torch.equal(crops, random_subcrops(frames, 40, 3, seed=5))
    assert not torch.equal(crops[:, 0], crops[:, 1])
    u = torch.tensor([[2.0, 3.0, -1.0]])
    expected = (torch.nn.functional.softplus(torch.tensor(-6.0)) + 2 * torch.nn.functional.softplus(torch.tensor(2.0))
                + torch.nn.functional.softplus(torch.tensor(3.0)) - torch.nn.functional.softplus(torch.tensor(2.0))) / 3
    assert torch.allclose(crop_consistency_loss(u), expected)
    obj = OrderingObjective(40, 2, weight=0.5, seed=1)
    total, l_diff, l_same, l_crop, _ = obj(model, frames, key=3)
    assert torch.allclose(total, 0.5 * l_diff + 0.5 * l_same + 0.5 * l_crop) and l_crop.item() > 0


def test_train_hypercut_with_our_extensions(tiny, tmp_path, capsys):
    argv = ["--metadata_root", str(tiny), "--exp_name", "ext", "--checkpoints_dir", str(tmp_path), "--device", "cpu",
            "--crop_size", "64", "--batch_size", "4", "--epochs", "1", "--max_steps", "2", "--num_workers", "0",
            "--lr", "1e-3", "--f_func", "MotionIm2Vec", "--subcrop_size", "40", "--crop_consistency", "1.0"]
    history = train_hypercut.train(train_hypercut.build_parser().parse_args(argv))
    assert len(history["losses"]) == 2 and all(math.isfinite(v) for v in history["losses"])
    model = load_hypercut(tmp_path / "ext" / "models" / "0001.pth")
    assert model.config["f_func"] == "MotionIm2Vec"
    err = one_line_error(capsys, train_hypercut.main, argv[:-4] + ["--crop_consistency", "1.0"])
    assert "--subcrop_size" in err


def test_probe_reads_the_oracle_but_not_a_random_order(tiny, tmp_path):
    out = tmp_path / "probe.json"
    assert probe_order.main(["--metadata_root", str(tiny), "--crop_size", "48", "--train_crops", "6",
                             "--test_crops", "6", "--steps", "150", "--batch_size", "32", "--device", "cpu",
                             "--output_json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["sources"] == ["stored", "oracle"] and result["steps"] == [150]
    stored, oracle = result["agreement"][0]
    assert result["num_test_crops"] >= 80
    assert oracle >= 0.8
    assert abs(stored - 0.5) <= 0.2
    # the oracle-ordered metadata, probed as stored, reads as well as the oracle
    assert generate_order.main(["--metadata_root", str(tiny), "--oracle", "--overwrite",
                                "--save_path", str(tiny / "metadata_oracle.json")]) == 0
    assert probe_order.main(["--metadata_root", str(tiny / "metadata_oracle.json"), "--sources", "stored",
                             "--crop_size", "48", "--train_crops", "6", "--test_crops", "6", "--steps", "150",
                             "--batch_size", "32", "--device", "cpu", "--output_json", str(out)]) == 0
    assert json.loads(out.read_text())["agreement"][0][0] >= 0.8


def test_probe_bad_inputs(tiny, capsys):
    err = one_line_error(capsys, probe_order.main, ["--metadata_root", str(tiny), "--sources", "hypercut"])
    assert "--hypercut_path" in err
    err = one_line_error(capsys, probe_order.main, ["--metadata_root", str(tiny), "--crop_size", "100"])
    assert "--crop_size 100" in err


def matrix_args(tiny, **kw):
    import argparse
    from lab.experiments import order_matrix as om
    base = dict(tiny=tiny, device="cuda", num_workers=2, data_workers=4, ablations=not tiny, probe=True,
                budgets=list(om.BUDGETS), rows=None, hypercuts=list(om.MATRIX_HYPERCUTS), minutes=6.0,
                wide_epochs=None)
    return argparse.Namespace(**{**base, **kw})


def test_order_matrix_jobs_are_well_formed(tmp_path):
    """The GPU driver's job list: every dependency names a job, every script exists, every training
    writes where its evaluation reads, and the matrix has its rows at every budget."""
    from lab.experiments import order_matrix as om
    for tiny in (True, False):
        work = tmp_path / f"work_{tiny}"
        jobs = om.build_jobs(matrix_args(tiny), work, tmp_path / "out")
        names = {j.name for j in jobs}
        assert len(names) == len(jobs)
        for j in jobs:
            assert j.deps <= names, (j.name, j.deps - names)
            script = j.script if j.script.endswith(".py") else j.script.replace(".", "/") + ".py"
            assert (om.REPO / script).is_file(), j.script
            assert "--device" not in j.args or j.args[j.args.index("--device") + 1] == "cuda"
            if j.name != "data":  # everything waits for the dataset, even if its other dependencies are done
                assert "data" in j.deps, j.name
        for budget in om.BUDGETS:
            rows = {j.name[len(f"jin_{budget}_"):] for j in jobs if j.name.startswith(f"jin_{budget}_")}
            if budget == "xlong":
                assert rows == set(om.XLONG_ROWS)
            else:
                assert {"naive", "order_inv", "pit", "oracle", "naive_hc_paper", "naive_hc_ext",
                        "hcloss_paper_a0.2", "hcloss_ext_a0.02"} <= rows
        evals = [j for j in jobs if j.name.startswith("eval_")]
        trains = {j.name: j for j in jobs}
        assert all(e.late for e in evals) and not any(j.late for j in jobs if j not in evals)
        tiled = {e.name: e for e in evals if e.name.startswith("eval_tiled_")}
        assert len(tiled) == len(evals) - len(tiled) > 0  # every trained model is also evaluated in crop tiles
        for name, e in tiled.items():
            plain = trains[name.replace("eval_tiled_", "eval_", 1)]
            assert e.args[e.args.index("--tile") + 1] == "crop" and "--tile" not in plain.args
            assert e.args[e.args.index("--pretrained_path") + 1] is plain.args[plain.args.index("--pretrained_path") + 1]
            out = e.args[e.args.index("--output_json") + 1]
            assert out.parent.name == "tiled" and out.name == plain.args[plain.args.index("--output_json") + 1].name
        for e in evals:
            if e.name in tiled:
                continue
            train = trains[e.name.replace("eval_", "jin_", 1)]
            model = e.args[e.args.index("--pretrained_path") + 1]
            amp = train.args[train.args.index("--amp") + 1] if "--amp" in train.args else None
            if e.name.startswith("eval_wide_"):  # time-bounded: the model is whichever epoch it reached
                run = work / "checkpoints" / train.name
                assert callable(model) and model() is None and not train.is_done()
                (run / "models").mkdir(parents=True)
                torch.save({}, run / "models" / "0007.pth")
                (run / "log.txt").write_text("x done: epoch 7, step 70, 360.0 s\n")
                assert model() == run / "models" / "0007.pth" and train.is_done()
                assert not tiny and amp == "bf16" or tiny
                assert tiny or train.args[train.args.index("--time_limit") + 1] == 6.0
            else:
                assert model == train.args[train.args.index("--checkpoints_dir") + 1] / train.name / "models" / \
                    f"{int(train.args[train.args.index('--epochs') + 1]):04d}.pth"
                # the narrow deblurring runs train in float32 (bf16 slowed the narrow Jin on the H100)
                assert amp == "off"


def test_order_matrix_selects_budgets_rows_and_hypercuts(tmp_path):
    from lab.experiments import order_matrix as om
    jobs = om.build_jobs(matrix_args(False, budgets=["wide"], rows=["naive", "oracle", "hcloss_ext_a0"],
                                     hypercuts=["ext"], ablations=False, probe=False), tmp_path / "w", tmp_path / "o")
    names = {j.name for j in jobs}
    assert {n for n in names if n.startswith("jin_")} == {"jin_wide_naive", "jin_wide_oracle", "jin_wide_hcloss_ext_a0"}
    assert not any(n.startswith(("probe", "hc_paper")) for n in names)
    # the predictions' hit is measured with a HyperCUT that is trained in this run
    assert all(str(tmp_path / "w" / "checkpoints" / "hc_ext") in str(j.args[j.args.index("--hypercut_path") + 1])
               for j in jobs if j.name.startswith("eval_") and not j.name.startswith("eval_tiled_"))
    wide = [j for j in jobs if j.name.startswith("jin_wide_")]
    assert all(j.args[j.args.index("--epochs") + 1] == om.BUDGETS["wide"][1] for j in wide)  # time alone bounds them
    # --wide_epochs: rows run in a later call stop at the epoch (the batches) of an earlier call's rows
    capped = om.build_jobs(matrix_args(False, budgets=["wide"], rows=["naive"], hypercuts=["ext"], ablations=False,
                                       probe=False, wide_epochs=71), tmp_path / "w", tmp_path / "o")
    train = next(j for j in capped if j.name == "jin_wide_naive")
    assert train.args[train.args.index("--epochs") + 1] == 71
    assert train.args[train.args.index("--time_limit") + 1] == 6.0
    with pytest.raises(SystemExit, match="unknown row.*naiv"):
        om.build_jobs(matrix_args(False, rows=["naiv"]), tmp_path / "w", tmp_path / "o")


def test_order_matrix_runs_evaluations_after_the_launch_deadline(tmp_path, capsys):
    """Past --launch_deadline no training starts, but the evaluation of one that finished still does."""
    from lab.experiments import order_matrix as om
    script = tmp_path / "touch.py"
    script.write_text("import sys, time, pathlib\ntime.sleep(float(sys.argv[2]))\npathlib.Path(sys.argv[1]).touch()\n")
    a, b, c = (tmp_path / n for n in "abc")
    jobs = [om.Job("train", str(script), [a, 1.5], a),
            om.Job("eval", str(script), [b, 0], b, deps=["train"], late=True),
            om.Job("train2", str(script), [c, 0], c, deps=["train"])]
    args = matrix_args(True, jobs=3, threads=1, launch_deadline=0.5, deadline=60.0)
    om.run_jobs(jobs, args, tmp_path / "out")
    assert [j.state for j in jobs] == ["done", "done", "skipped"]
    assert a.exists() and b.exists() and not c.exists()


def test_last_epoch_terms_reads_the_train_log(tmp_path):
    from lab.experiments.order_matrix import last_epoch_terms
    log = tmp_path / "log.txt"
    log.write_text("2026-01-01 00:00:00 epoch 1/2 | step 5 | total 0.50000 | base 0.40000 | reg 0.50000 | "
                   "flipped 4.00000 | lr 0.0005 | 3.0 s (total 3.0 s)\n"
                   "2026-01-01 00:00:01 val epoch 1 | pPSNR 20.0000\n"
                   "2026-01-01 00:00:02 epoch 2/2 | step 10 | total 0.30000 | base 0.20000 | reg 0.50000 | "
                   "flipped 3.00000 | lr 0.0005 | 3.0 s (total 6.0 s)\n")
    assert last_epoch_terms(log) == {"total": 0.3, "base": 0.2, "reg": 0.5, "flipped": 3.0}


def test_order_eval_reads_the_direction_of_predictions():
    from utils.order_eval import sequence_signs, summarise
    cfg = SyntheticConfig(size=48, foreground_p=0.0)
    photo = prepare_photo(load_photo("astronaut"), cfg.size)
    seqs = [render_sequence(photo, cfg, torch.Generator().manual_seed(i)) for i in range(4)]
    gt = torch.stack([s["sharp"] for s in seqs])
    rightwards = torch.tensor([1.0 if s["motion"][0] >= 0 else -1.0 for s in seqs])
    pred = torch.stack([gt[0], gt[1].flip(0), gt[2], gt[3].flip(0)])
    torch.manual_seed(0)
    hc = HyperCUT(f_func="FlowIm2Vec")
    signs = sequence_signs(pred, gt, hc)
    assert signs["direction"].tolist() == [1.0, -1.0, 1.0, -1.0]
    assert signs["oracle"].tolist() == rightwards.tolist()
    # the predictions are exact copies: HyperCUT judges them as it judges the ground truth
    assert torch.equal(signs["hc_pred"], signs["direction"] * signs["hc_gt"])
    fig = summarise(signs)
    assert fig["hc_honest"] == 1.0 and fig["num_sequences"] == 4
    assert fig["follows_oracle"] == float((signs["direction"] == rightwards).float().mean())


def test_gif_and_figures(tmp_path):
    from PIL import Image
    from utils.figures import contact_sheet, per_frame_plot, probe_plot, save_gif
    frames = torch.stack([torch.full((3, 8, 10), k / 7) for k in range(7)])
    path = save_gif(frames, tmp_path / "a.gif")
    gif = Image.open(path)
    assert gif.n_frames == 12 and gif.size == (10, 8)  # forwards, then back without repeating the ends
    assert gif.info["loop"] == 0
    contact_sheet([("a", torch.rand(3, 8, 30)), ("b", torch.rand(3, 8, 30))], tmp_path / "c.png", title="t")
    per_frame_plot({"x": [1.0, 2.0, 3.0]}, tmp_path / "p.png")
    probe_plot([1, 2], {"oracle": [0.9, 1.0]}, tmp_path / "q.png")
    for name in ("c.png", "p.png", "q.png"):
        assert Image.open(tmp_path / name).format == "PNG"


def test_blur_baseline_scores_the_blurry_image(tiny):
    from datasets.blur2vid import Blur2VidDataset
    from utils.order_eval import blur_baseline
    from utils.evaluation import make_eval_loader
    dataset = Blur2VidDataset(tiny, "test", augment=None)
    result = blur_baseline(make_eval_loader(dataset, 4, 0), torch.device("cpu"))
    item = dataset[0]
    expected = []
    for i in range(len(dataset)):
        item = dataset[i]
        mse = ((item["blur"] * 255 - item["frames"][3] * 255) ** 2).mean()
        expected.append(10 * math.log10(255 ** 2 / mse.item()))
    assert math.isclose(result["pPSNR"][3], sum(expected) / len(expected), rel_tol=1e-4)
    assert result["pPSNR"][0] == result["pPSNR"][6] and result["pPSNR"][0] < result["pPSNR"][3]


def test_pair_mean_baseline_scores_the_mean_of_each_pair(tiny):
    from datasets.blur2vid import Blur2VidDataset
    from utils.order_eval import pair_mean_baseline
    from utils.evaluation import make_eval_loader
    from utils.metrics.sequence import PSNR_CAP_DB
    dataset = Blur2VidDataset(tiny, "test", augment=None)
    result = pair_mean_baseline(make_eval_loader(dataset, 4, 0), torch.device("cpu"))
    expected = []
    for i in range(len(dataset)):
        f = dataset[i]["frames"] * 255
        mean = (f[0] + f[6]) / 2
        # the pair's score: the mean over its two frames of each one's PSNR (both assignments are equal)
        expected.append(sum(10 * math.log10(255 ** 2 / ((mean - f[k]) ** 2).mean().item()) for k in (0, 6)) / 2)
    assert math.isclose(result["pPSNR"][0], sum(expected) / len(expected), rel_tol=1e-4)
    assert result["pPSNR"][0] == result["pPSNR"][6] and result["pPSNR"][3] == PSNR_CAP_DB
    assert result["pSSIM"][3] == pytest.approx(1.0) and result["pSSIM"][0] < 0.99


def test_shift_images_moves_content():
    from utils.order_eval import shift_images
    img = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    out = shift_images(img, torch.tensor([[2.0, 0.0], [0.0, -3.0]]))
    assert torch.allclose(out[0, :, :, 2:], img[0, :, :, :-2], atol=1e-5)  # content moved right by 2
    assert torch.allclose(out[1, :, :-3], img[1, :, 3:], atol=1e-5)  # moved up by 3
    half = shift_images(img, torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
    assert torch.allclose(half[0, :, :, 1:], (img[0, :, :, 1:] + img[0, :, :, :-1]) / 2, atol=1e-5)
    assert torch.allclose(half[1], img[1], atol=1e-6)


@pytest.fixture(scope="module")
def translation_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dl") / "data"
    assert prepare_dataset.main(["synthetic", "--out", str(root), "--scene", "deadleaves", "--motion", "translation",
                                 "--size", "40", "--num_train", "1", "--num_val", "1", "--num_test", "6",
                                 "--subframes", "5", "--travel", "8", "10"]) == 0
    return root


def test_motion_baselines_move_along_the_recorded_motion(translation_world, tmp_path):
    """oracle_warp: the blur moved along the recorded motion (its middle frame is the blur itself); centre_warp:
    the true middle frame moved the same way. On a pure translation both beat the blur on the outer frames,
    centre_warp by far, and a sequence loaded reversed gets the reversed motion (same figures)."""
    from datasets.blur2vid import Blur2VidDataset
    from utils.evaluation import make_eval_loader
    from utils.metrics.sequence import PSNR_CAP_DB
    from utils.order_eval import blur_baseline, motion_baselines, shift_images
    dataset = Blur2VidDataset(translation_world, "test", augment=None)
    cpu = torch.device("cpu")
    ref = motion_baselines(dataset, cpu, batch_size=4)
    blur = blur_baseline(make_eval_loader(dataset, 4, 0), cpu)
    assert ref["oracle_warp"]["pPSNR"][3] == pytest.approx(blur["pPSNR"][3], rel=1e-6)
    assert ref["centre_warp"]["pPSNR"][3] == PSNR_CAP_DB
    assert ref["oracle_warp"]["pPSNR"][0] > blur["pPSNR"][0] + 1.0
    assert ref["centre_warp"]["pPSNR"][0] > ref["oracle_warp"]["pPSNR"][0] + 3.0
    # frame 1 of centre_warp for sequence 0, by hand
    item, m = dataset[0], torch.tensor(dataset.entries[0].raw["motion"])
    by_hand = shift_images(item["frames"][3][None], -0.5 * m[None])[0]
    mse = ((by_hand.clamp(0, 1) * 255 - item["frames"][0] * 255) ** 2).mean().item()
    assert 10 * math.log10(255 ** 2 / mse) > blur["pPSNR"][0] + 3.0
    meta = json.loads((translation_world / "metadata.json").read_text())
    for e in meta["data"]:
        e["order"] = "reverse"
    flipped = tmp_path / "reversed.json"
    flipped.write_text(json.dumps(meta))
    rev = motion_baselines(Blur2VidDataset(flipped, "test", augment=None, data_root=translation_world), cpu)
    assert rev["centre_warp"]["pPSNR"] == pytest.approx(ref["centre_warp"]["pPSNR"], rel=1e-5)


def test_method_figures_with_each_backbone(tiny, tmp_path):
    """Contact sheet and GIF per sequence from the backbones' output dicts (Jin and Purohit)."""
    from PIL import Image
    from datasets.blur2vid import Blur2VidDataset
    from models import build_backbone
    from utils.figures import method_figures
    dataset = Blur2VidDataset(tiny, "test", augment=None)
    torch.manual_seed(0)
    models = {name: build_backbone(name, width_mult=0.125).eval() for name in ("Jin", "Purohit")}
    written = method_figures(models, dataset, [0, 2], tmp_path, torch.device("cpu"))
    assert [p.name for p in written] == ["sequence_0.png", "sequence_0.gif", "sequence_2.png", "sequence_2.gif"]
    gif = Image.open(tmp_path / "sequence_2.gif")
    # ground truth, Jin, Purohit side by side with 2-pixel gaps; 7 frames forwards then 5 back
    assert gif.size == (3 * 64 + 2 * 2, 64) and gif.n_frames == 12
    sheet = Image.open(tmp_path / "sequence_0.png")
    assert sheet.format == "PNG" and sheet.size[0] > 9 * 64


def test_wide_report_reads_json_csv_and_logs(tmp_path, capsys):
    """lab/experiments/wide_report.py: figures from a run's JSON, or its CSV when only that came back; the loss
    curve from log.txt (the hypercut loss's base term); gains on frames 1/7 over random order and order_inv."""
    from lab.experiments import wide_report
    res = tmp_path / "res"
    res.mkdir()
    (res / "blur.json").write_text(json.dumps({"pPSNR": [19.0, 20, 21, 22, 21, 20, 19.0],
                                                "pSSIM": [0.5] * 7}))
    (res / "jin_wide_naive.json").write_text(json.dumps({"pPSNR": [18.0, 20, 21, 22, 21, 20, 18.5],
                                                          "pSSIM": [0.4] * 7, "hit": None}))
    (res / "jin_wide_order_inv.csv").write_text(
        "metric,frame_1,frame_2,frame_3,frame_4,frame_5,frame_6,frame_7,mean\n"
        "pPSNR,17,19,20,21,20,19,17,19\npSSIM,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3\npLPIPS,,,,,,,,\n")
    (res / "jin_wide_hcloss_ext_a0.json").write_text(json.dumps({"pPSNR": [19.5, 20, 21, 22, 21, 20, 19.5],
                                                                  "pSSIM": [0.45] * 7, "hit": 1.0}))
    (res / "jin_wide_hcloss_ext_a0_log.txt").write_text(
        "t epoch 1/9 | step 22 | total 0.10000 | base 0.09000 | reg 2.0 | lr 0.0005 | 5 s\n"
        "t val epoch 1 | pPSNR 20.0\n"
        "t epoch 2/9 | step 44 | total 0.05000 | base 0.04000 | reg 2.0 | lr 0.0005 | 5 s\n")
    out = tmp_path / "r.md"
    assert wide_report.main(["--results", str(res), "--out", str(out), "--figures", str(tmp_path / "f")]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["runs"]["order_inv"]["pPSNR"][3] == 21.0 and summary["runs"]["order_inv"]["hit"] is None
    assert summary["runs"]["hcloss_ext_a0"]["log"] == {"epoch": [1, 2], "step": [22, 44], "loss": [0.09, 0.04]}
    gains = summary["gains_1_7"]["hcloss_ext_a0"]
    assert gains["over_random"] == pytest.approx(19.5 - 18.25) and gains["over_order_inv"] == pytest.approx(2.5)
    text = out.read_text()
    assert "| hypercut loss, our HyperCUT, alpha 0 | 2 / 44 | 19.50 | - |" in text and "(no log)" in text
    assert "crop size:" not in text and summary["runs"]["naive"]["tiled"] is None
    assert "hcloss_ext_a0: +1.25 over random, +2.50 over order inv" in text
    # a later call without order_inv (lab/benchmarks/device_wide.sh): the gains over what it has
    (res / "jin_wide_order_inv.csv").unlink()
    assert wide_report.main(["--results", str(res), "--out", str(out), "--figures", str(tmp_path / "f")]) == 0
    assert "hcloss_ext_a0: +1.25 over random" in out.read_text() and "order inv" not in out.read_text()
    assert (tmp_path / "f" / "wide_per_frame.png").stat().st_size > 1000
    assert (tmp_path / "f" / "wide_train_loss.png").stat().st_size > 1000
    assert "random order's best" not in out.read_text()
    # with the pair-mean baseline beside it (order_matrix.py writes it): its row, frames 1/7 only
    (res / "pair_mean.json").write_text(json.dumps({"pPSNR": [20.25, 21, 23, 100.0, 23, 21, 20.75],
                                                     "pSSIM": [0.7, 0.7, 0.8, 1.0, 0.8, 0.7, 0.7]}))
    assert wide_report.main(["--results", str(res), "--out", str(out), "--figures", str(tmp_path / "f")]) == 0
    assert "| mean of each true pair (the random order's best, L2) | - | 20.50 | - | (exact) |" in out.read_text()
    assert json.loads(out.with_suffix(".json").read_text())["pair_mean"]["pPSNR"][0] == 20.25
    # with the crop-tiled evaluations (order_matrix.py's eval_tiled_* jobs): a column and their own gains
    (res / "tiled").mkdir()
    (res / "tiled" / "jin_wide_naive.json").write_text(json.dumps({"pPSNR": [19.0, 20, 21, 22, 21, 20, 19.5],
                                                                    "pSSIM": [0.5] * 7, "hit": None}))
    (res / "tiled" / "jin_wide_hcloss_ext_a0.json").write_text(json.dumps({"pPSNR": [21.0, 20, 21, 22, 21, 20, 21.5],
                                                                            "pSSIM": [0.5] * 7, "hit": None}))
    assert wide_report.main(["--results", str(res), "--out", str(out), "--figures", str(tmp_path / "f")]) == 0
    text, summary = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert "| hypercut loss, our HyperCUT, alpha 0 | 2 / 44 | 19.50 | 21.25 |" in text
    assert summary["gains_1_7_tiled"]["hcloss_ext_a0"]["over_random"] == pytest.approx(21.25 - 19.25)
    assert "crop size: naive: +0.00 over random; hcloss_ext_a0: +2.00 over random" in text
    assert summary["gains_1_7"]["hcloss_ext_a0"]["over_random"] == pytest.approx(1.25)  # untouched
    with pytest.raises(SystemExit, match="blur.json is missing"):
        wide_report.main(["--results", str(tmp_path), "--out", str(out), "--figures", str(tmp_path / "f")])


class _GroundTruth(torch.nn.Module):
    """A 'network' that returns each blurry image's own ground truth, forwards or reversed."""

    def __init__(self, dataset, reverse: bool):
        super().__init__()
        items = [dataset[i] for i in range(len(dataset))]
        self.blurs = torch.stack([it["blur"] for it in items])
        self.frames = torch.stack([it["frames"] for it in items])
        self.reverse = reverse

    def forward(self, blur):
        idx = [int(torch.nonzero((self.blurs == b).flatten(1).all(1))[0]) for b in blur]
        frames = self.frames[idx]
        return {"frames": frames.flip(1) if self.reverse else frames}


def test_ordering_figures_order_table(tiny, tmp_path, capsys):
    """ordering_figures.py --hypercut: which order each model follows, per HyperCUT, as JSON and a table."""
    from datasets.blur2vid import Blur2VidDataset
    from lab.experiments import ordering_figures
    from utils.checkpoint import save_checkpoint
    dataset = Blur2VidDataset(tiny, "test", augment=None)
    torch.manual_seed(0)
    hc_path = tmp_path / "hc.pth"
    save_checkpoint(HyperCUT().state_dict(), hc_path)  # the reference's plain state dict
    models = {"gt": _GroundTruth(dataset, False), "reversed": _GroundTruth(dataset, True)}
    path = ordering_figures.order_table(models, {"paper": hc_path}, dataset, tmp_path / "o", torch.device("cpu"))
    saved = json.loads(path.read_text())
    assert saved["num_sequences"] == len(dataset) == 16
    fwd, rev = saved["figures"]["gt"]["paper"], saved["figures"]["reversed"]["paper"]
    hc = load_hypercut(hc_path)
    gt = torch.stack([dataset[i]["frames"] for i in range(len(dataset))])
    with torch.no_grad():
        h_fwd, h_rev = hc.pair_scores(gt)[1][:, 0], hc.pair_scores(gt.flip(1))[1][:, 0]
    mean = lambda t: float(t.float().mean())  # noqa: E731
    # the forward copy always follows the ground truth's direction, the reversed one never
    assert fwd["follows_hypercut"] == pytest.approx(mean(h_fwd >= 0))
    assert rev["follows_hypercut"] == pytest.approx(mean(h_fwd < 0))
    assert fwd["pred_positive"] == pytest.approx(mean(h_fwd >= 0))
    assert rev["pred_positive"] == pytest.approx(mean(h_rev >= 0))
    assert fwd["hc_honest"] == 1.0
    assert rev["hc_honest"] == pytest.approx(mean((h_rev >= 0) == (h_fwd < 0)))
    test_entries = [e for e in json.loads((tiny / "metadata.json").read_text())["data"] if e["partition"] == "test"]
    assert fwd["follows_oracle"] == pytest.approx(mean(torch.tensor([e["motion"][0] >= 0 for e in test_entries])))
    assert rev["follows_oracle"] == pytest.approx(1.0 - fwd["follows_oracle"])
    assert "follows_hypercut (paper)" in capsys.readouterr().out
    # --hypercut without a model to judge: one clear error
    assert ordering_figures.main(["--out", str(tmp_path), "--hypercut", f"paper={hc_path}"]) == 2
    assert "--model" in capsys.readouterr().err

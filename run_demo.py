"""The whole HyperCUT pipeline on the embedded dataset, in one command.

  python run_demo.py                  # about 75 min on 2 idle CPU cores (measured: Jin 3 x 17-18 min, Purohit 9 min)
  python run_demo.py --quick          # a tiny version of every stage, about 2 min: checks the whole path
  python run_demo.py --device cuda --num_workers 4
  python run_demo.py --config gpu     # full-width Jin on 256x256 crops of 320x320 images (one GPU)

Stages, each one of the project's scripts run as a user would (their commands are printed):

  1. dataset      prepare_dataset.py synthetic (skipped when --data already holds a dataset; it is
                  then validated with prepare_dataset.py summary)
  2. hypercut     train_hypercut.py, then test_hypercut.py on the test split (hit / con): the paper's
                  HyperCUT and our extension (FlowIm2Vec + crop consistency, docs/ordering.md)
  3. order        generate_order.py: DATA/metadata_hypercut_demo.json, every sequence in HyperCUT's order
  3b. probe       probe_order.py: can the stored, the oracle and each HyperCUT's order be read from the
                  blur? (OUT/probe.json, OUT/probe.png)
  4. deblur       train_blur2vid.py with the Jin backbone (narrow, --width_mult), once per entry of the
                  config's "runs" (full demo: order_inv, the paper's baseline; naive on the stored random
                  order; the hypercut loss with our HyperCUT, alpha 0; --quick: the paper's hypercut
                  loss instead of naive, so that every loss path runs)
  5. evaluate     test_blur2vid.py for each (pPSNR / pSSIM / PSNR / SSIM per frame, hit/con of the
                  predictions; LPIPS when its weights can be had, otherwise reported as skipped); OUT/per_frame.png;
                  frames 1 & 7 against order_inv and naive, beside two no-network references (the blurry
                  image as every frame; the mean of each true frame pair, OUT/baselines.json); the same
                  networks again predicting in windows of their training crop size (--tile crop,
                  OUT/jin_<loss>_test_tiled.json), since a net trained on small crops scores lower on
                  whole images
  5b. purohit    train_blur2vid.py --backbone Purohit: stage 1 (the video autoencoder), then stage 2
                  with order_inv (the paper's baseline), narrow (--width_mult) on a CPU; test_blur2vid.py
                  with its predicted centre and with the ground truth's (the paper's oracle-centre protocol)
  6. inference    inference.py --gif on four blurry test images: OUT/inference/<image>/frame_k.png,
                  frames.gif, contact.png

Everything goes to --out (default runs/demo, or runs/demo_quick with --quick): checkpoints/, the JSON
and CSV of every evaluation, inference/ and summary.md, the tables side by side. Running it again
continues: finished stages are skipped, an interrupted training resumes from its last epoch.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from utils.cli import ArgumentParser, check_flags, run_main
from utils.errors import FlagError, UserError

REPO = Path(__file__).resolve().parent

# Our HyperCUT extension (docs/ordering.md): f reads a global motion estimate; 4 sub-crops must agree.
EXT_HYPERCUT = ["--f_func", "FlowIm2Vec", "--crop_size", "128", "--subcrop_size", "64", "--subcrops", "4",
                "--crop_consistency", "2.0", "--batch_size", "8", "--lr", "1e-3", "--epochs", "8",
                "--decay_type", "step_6", "--gamma", "0.5", "--val_epoch", "4"]
# Deblurring runs: (name, train_blur2vid.py loss flags, HyperCUT used: "paper" or "ext"): the paper's
# baseline, plain training on the stored (random) order, and the hypercut loss with our HyperCUT's
# readable order (alpha 0: the paper's R costs dB here, README). The paper's hypercut loss is measured
# in the README and by experiments/order_matrix.py.
RUNS = [("order_inv", ["--loss_type", "order_inv"], "paper"),
        ("naive", ["--loss_type", "naive"], "paper"),
        ("hypercut_ext", ["--loss_type", "hypercut", "--alpha", "0"], "ext")]

# Full demo: the settings of the README's measured results (HyperCUT) and a narrow Jin that trains on a
# CPU in minutes. Quick demo: the same stages on a tiny dataset. GPU: full-width Jin on 256x256 crops.
SETTINGS = {
    "full": {
        "data": "data/synthetic", "out": "runs/demo",
        "dataset": [],
        "hypercut": ["--crop_size", "64", "--batch_size", "8", "--lr", "5e-5", "--epochs", "24",
                     "--decay_type", "step_12_18_22", "--gamma", "0.5", "--val_epoch", "4"],
        "hypercut_epochs": 24,
        "jin": ["--width_mult", "0.25", "--crop_size", "64", "--batch_size", "8", "--epochs", "12",
                "--val_epoch", "4", "--display_step", "200"],
        "jin_epochs": 12,
        "hypercut_ext": EXT_HYPERCUT, "hypercut_ext_epochs": 8,
        "probe": [],
        "runs": RUNS,
        "purohit": ["--width_mult", "0.25", "--crop_size", "64", "--batch_size", "8", "--val_epoch", "4",
                    "--display_step", "200"],
        "purohit_epochs": (4, 8),
    },
    "gpu": {
        "data": "data/synthetic_320", "out": "runs/demo_gpu",
        "dataset": ["--size", "320", "--workers", "8"],
        "hypercut": ["--crop_size", "128", "--batch_size", "8", "--lr", "5e-5", "--epochs", "24",
                     "--decay_type", "step_12_18_22", "--gamma", "0.5", "--val_epoch", "4"],
        "hypercut_epochs": 24,
        "jin": ["--width_mult", "1.0", "--crop_size", "256", "--batch_size", "8", "--epochs", "40",
                "--val_epoch", "10", "--display_step", "200"],
        "jin_epochs": 40,
        "hypercut_ext": EXT_HYPERCUT[:2] + ["--crop_size", "320", "--subcrop_size", "256"] + EXT_HYPERCUT[6:],
        "hypercut_ext_epochs": 8,
        "probe": ["--crop_size", "256"],
        "runs": RUNS,
        "purohit": ["--width_mult", "1.0", "--crop_size", "256", "--batch_size", "8", "--val_epoch", "10",
                    "--display_step", "200"],
        "purohit_epochs": (20, 40),
    },
    "quick": {
        "data": "runs/demo_quick/data", "out": "runs/demo_quick",
        "dataset": ["--size", "64", "--num_train", "16", "--num_val", "4", "--num_test", "4"],
        "hypercut": ["--crop_size", "48", "--batch_size", "4", "--lr", "5e-5", "--epochs", "2", "--val_epoch", "1"],
        "hypercut_epochs": 2,
        "jin": ["--width_mult", "0.125", "--crop_size", "40", "--batch_size", "4", "--epochs", "1",
                "--val_epoch", "1", "--display_step", "0"],
        "jin_epochs": 1,
        "hypercut_ext": ["--f_func", "FlowIm2Vec", "--crop_size", "64", "--subcrop_size", "40", "--subcrops", "2",
                         "--crop_consistency", "1.0", "--batch_size", "4", "--lr", "1e-3", "--epochs", "1",
                         "--val_epoch", "1"],
        "hypercut_ext_epochs": 1,
        "probe": ["--crop_size", "40", "--train_crops", "2", "--test_crops", "2", "--steps", "5", "10"],
        "runs": RUNS[:1] + [("hypercut", ["--loss_type", "hypercut"], "paper")] + RUNS[2:],
        "purohit": ["--width_mult", "0.125", "--crop_size", "40", "--batch_size", "4", "--val_epoch", "1",
                    "--display_step", "0"],
        "purohit_epochs": (1, 1),
    },
}
INFERENCE_IMAGES = 4


class StageFailed(UserError):
    pass


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny dataset and runs (a smoke test of the pipeline)")
    p.add_argument("--config", default=None, choices=sorted(SETTINGS),
                   help="full (default), quick (= --quick) or gpu (full-width Jin, 256x256 crops)")
    p.add_argument("--data", default=None, help="dataset root (default data/synthetic; quick: OUT/data)")
    p.add_argument("--out", default=None, help="output folder (default runs/demo; quick: runs/demo_quick)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--num_workers", type=int, default=1, help="data loader workers of every stage")
    return p


def run_stage(name: str, script: str, args: list[str], log) -> None:
    cmd = [sys.executable, script] + [str(a) for a in args]
    shown = "python " + shlex.join([script] + [str(a) for a in args])
    print(f"\n== {name}: {shown}", flush=True)
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {name}: {shown}\n")
    log.flush()
    start = time.time()
    rc = subprocess.call(cmd, cwd=REPO)
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {name}: exit {rc} after {time.time() - start:.1f} s\n")
    log.flush()
    if rc != 0:
        raise StageFailed(f"stage '{name}' failed (exit {rc}); its message is above. Fix it and run the "
                          "same command again: finished stages are skipped")


def train_args(run_dir: Path, epochs: int) -> list[str] | None:
    """None when the run already finished; ["--resume"] when a training state exists; [] to start."""
    if (run_dir / "models" / f"{epochs:04d}.pth").exists():
        return None
    if (run_dir / "training_states" / "latest.pth").exists():
        return ["--resume"]
    return []


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def run_purohit(cfg: dict, data: Path, ckpts: Path, out: Path, common: list, log) -> dict:
    """Purohit's two stages and their evaluation; {centre: test JSON} for the summary."""
    e1, e2 = cfg["purohit_epochs"]
    s1_dir, s2_dir = ckpts / "purohit_stage1", ckpts / "purohit_order_inv"
    stage1 = s1_dir / "models" / f"{e1:04d}.pth"
    base = ["--metadata_root", data, "--checkpoints_dir", ckpts, "--backbone", "Purohit"] + cfg["purohit"] + common
    extra = train_args(s1_dir, e1)
    if extra is not None:
        run_stage("train Purohit (stage 1)", "train_blur2vid.py",
                  base + ["--exp_name", s1_dir.name, "--stage", "1", "--epochs", e1] + extra, log)
    extra = train_args(s2_dir, e2)
    if extra is not None:
        run_stage("train Purohit (stage 2, order_inv)", "train_blur2vid.py",
                  base + ["--exp_name", s2_dir.name, "--stage1_path", stage1, "--loss_type", "order_inv",
                          "--epochs", e2] + extra, log)
    model = s2_dir / "models" / f"{e2:04d}.pth"
    results = {}
    for centre in ("predicted", "gt"):
        result = out / f"purohit_order_inv_{centre}_test.json"
        run_stage(f"test Purohit ({centre} centre)", "test_blur2vid.py",
                  ["--metadata_root", data, "--pretrained_path", model, "--middle_frame", centre,
                   "--output_json", result] + common, log)
        results[centre] = read_json(result)
    return results


def no_network_baselines(data: Path, device: str) -> dict:
    """pPSNR / pSSIM per frame on the test split of the blurry image as every frame and of the mean of each
    true frame pair (the most a random order allows under L2): utils/order_eval.py."""
    from datasets.blur2vid import Blur2VidDataset
    from utils.device import resolve_device
    from utils.evaluation import make_eval_loader
    from utils.order_eval import blur_baseline, pair_mean_baseline
    dev = resolve_device(device)
    return {key: fn(make_eval_loader(Blur2VidDataset(data, "test", augment=None), 20, 0), dev)
            for key, fn in (("blur", blur_baseline), ("pair_mean", pair_mean_baseline))}


def outer(res: dict) -> float:
    """Mean pPSNR over frames 1 and N."""
    from utils.order_eval import outer_frames
    return outer_frames(res["pPSNR"])


def _gains_line(title: str, tests: dict[str, dict]) -> str:
    """Frames 1 & 7 of every run and the gains over order_inv (the paper's baseline) and over naive training
    on the stored random order."""
    line = title + ", ".join(f"{loss} {outer(res):.2f}" for loss, res in tests.items()) + " dB."
    for loss, res in tests.items():
        gains = [f"{outer(res) - outer(tests[ref]):+.2f} dB over {ref}" for ref in ("order_inv", "naive")
                 if ref in tests and ref != loss]
        if loss not in ("order_inv", "naive") and gains:
            line += f" {loss}: " + ", ".join(gains) + "."
    return line


def comparison_lines(tests: dict[str, dict], baselines: dict | None, tiled: dict[str, dict] | None = None) -> list[str]:
    """Frames 1 & 7 of every run with the gains (whole images, then predicted in windows of the training crop
    size when `tiled` is given), and the no-network reference points."""
    lines = ["", _gains_line("pPSNR on frames 1 & 7 (where the order matters): ", tests)]
    if tiled:
        tile = next(iter(tiled.values())).get("tile")
        lines += ["", _gains_line(f"The same networks predicting in {tile}x{tile} windows, the size they were "
                                  "trained on (test_blur2vid.py --tile crop; docs/ordering.md section 10): ", tiled)]
    if baselines:
        lines += ["", f"No network: the blurry image as every frame {outer(baselines['blur']):.2f}; the mean of each "
                      f"true frame pair {outer(baselines['pair_mean']):.2f} (what a network trained on a random order "
                      f"can reach at best under L2; the order matters most above it; docs/ordering.md section 9)."]
    return lines


def summary_markdown(hc: dict, tests: dict[str, dict], out: Path, mode: str, hc_ext: dict | None = None,
                     probe: dict | None = None, purohit: dict | None = None, purohit_flags: list | None = None,
                     baselines: dict | None = None, tiled: dict[str, dict] | None = None) -> str:
    from utils.report import markdown_table
    lines = [f"# HyperCUT demo ({mode})", "", "## HyperCUT ordering, test split", ""]
    keys = ["hit", "hit_x2_x6", "hit_x3_x5", "con@2", "con@3", "num_sequences"]
    rows = [["paper"] + [hc[k] for k in keys]] + ([["ours (FlowIm2Vec + crop consistency)"] + [hc_ext[k] for k in keys]]
                                                 if hc_ext else [])
    lines.append(markdown_table(["HyperCUT"] + keys, rows))
    if probe:
        lines += ["", "## Can the order be read from the blur? (probe_order.py; probe.png)", "",
                  "Held-out fraction of crops whose direction a small CNN reads from the blurry crop (0.5: not at all):",
                  "", markdown_table(["probe steps"] + probe["sources"],
                                     [[st] + a for st, a in zip(probe["steps"], probe["agreement"])], 3)]
    lines += ["", "## Jin deblurring, test split (mean over the 7 frames)", ""]
    names = ["pPSNR", "pSSIM", "pLPIPS", "PSNR", "SSIM", "LPIPS"]
    extra = ["hit", "con@3"]
    rows = []
    for loss, res in tests.items():
        row = [loss]
        for k in names:
            v = res.get(f"{k}_mean")
            row.append("skipped" if v is None else v)
        row += [res.get(k, "-") for k in extra]
        rows.append(row)
    lines.append(markdown_table(["loss"] + names + [f"predictions {k}" for k in extra], rows))
    lines += comparison_lines(tests, baselines, tiled)
    lines += ["", "pPSNR per frame (1..7):", ""]
    lines.append(markdown_table(["loss"] + [str(i + 1) for i in range(len(next(iter(tests.values()))["pPSNR"]))],
                                [[loss] + res["pPSNR"] for loss, res in tests.items()]))
    if purohit:
        width = purohit_flags[purohit_flags.index("--width_mult") + 1] if purohit_flags else "?"
        lines += ["", f"## Purohit (width {width}), order_inv, test split", "",
                  "Stage 1 (video autoencoder), then stage 2; the paper's Purohit table gives the network the "
                  "ground truth's middle frame (oracle centre).", ""]
        lines.append(markdown_table(
            ["centre", "pPSNR mean", "pPSNR frames 1 & 7", "pSSIM mean"] + [f"pPSNR {i + 1}" for i in range(7)],
            [["oracle (ground truth)" if c == "gt" else c, r["pPSNR_mean"], outer(r),
              r["pSSIM_mean"]] + r["pPSNR"] for c, r in purohit.items()]))
    lines += ["", f"Files: {out}/checkpoints/, {out}/*_test.json and .csv, {out}/per_frame.png, {out}/probe.png, "
              f"{out}/inference/ (frames, GIF, contact sheet).", ""]
    return "\n".join(lines)


def main_body(args) -> int:
    check_flags(args)
    if args.quick and args.config not in (None, "quick"):
        raise FlagError(f"--quick and --config {args.config} disagree: give one of them")
    mode = "quick" if args.quick else (args.config or "full")
    cfg = SETTINGS[mode]
    data = Path(args.data or cfg["data"])
    out = Path(args.out or cfg["out"])
    if not data.is_absolute():
        data = (REPO / data) if args.data is None else data.resolve()
    if not out.is_absolute():
        out = (REPO / out) if args.out is None else out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ckpts = out / "checkpoints"
    common = ["--device", args.device, "--num_workers", str(args.num_workers)]
    started = time.time()
    with open(out / "demo_log.txt", "a") as log:
        # 1. dataset
        if (data / "metadata.json").exists():
            run_stage("dataset", "prepare_dataset.py", ["summary", "--out", data], log)
        else:
            run_stage("dataset", "prepare_dataset.py", ["synthetic", "--out", data] + cfg["dataset"], log)

        # 2. HyperCUT
        hc_dir = ckpts / "hypercut"
        extra = train_args(hc_dir, cfg["hypercut_epochs"])
        if extra is not None:
            run_stage("train HyperCUT", "train_hypercut.py",
                      ["--metadata_root", data, "--exp_name", "hypercut", "--checkpoints_dir", ckpts]
                      + cfg["hypercut"] + common + extra, log)
        hc_ckpt = hc_dir / "models" / f"{cfg['hypercut_epochs']:04d}.pth"
        hc_json = out / "hypercut_test.json"
        run_stage("test HyperCUT", "test_hypercut.py",
                  ["--metadata_root", data, "--pretrained_path", hc_ckpt, "--output_json", hc_json] + common, log)

        hc_paths = {"paper": hc_ckpt}
        ext_dir = ckpts / "hypercut_ext"  # our extension (docs/ordering.md)
        extra = train_args(ext_dir, cfg["hypercut_ext_epochs"])
        if extra is not None:
            run_stage("train HyperCUT (ours)", "train_hypercut.py",
                      ["--metadata_root", data, "--exp_name", "hypercut_ext", "--checkpoints_dir", ckpts]
                      + cfg["hypercut_ext"] + common + extra, log)
        hc_paths["ext"] = ext_dir / "models" / f"{cfg['hypercut_ext_epochs']:04d}.pth"
        run_stage("test HyperCUT (ours)", "test_hypercut.py",
                  ["--metadata_root", data, "--pretrained_path", hc_paths["ext"], "--output_json",
                   out / "hypercut_ext_test.json"] + common, log)

        # 3. order
        ordered = data / "metadata_hypercut_demo.json"
        run_stage("order", "generate_order.py",
                  ["--metadata_root", data, "--pretrained_path", hc_ckpt, "--save_path", ordered,
                   "--overwrite", "--device", args.device], log)

        # 3b. can each order be read from the blur?
        probe_json = out / "probe.json"
        if not probe_json.exists():
            run_stage("probe", "probe_order.py",
                      ["--metadata_root", data, "--hypercut_path", hc_paths["paper"], hc_paths["ext"],
                       "--output_json", probe_json, "--device", args.device] + cfg["probe"], log)
        from utils.figures import per_frame_plot, probe_plot
        probe = read_json(probe_json)
        probe_plot(probe["steps"], {src: [a[i] for a in probe["agreement"]] for i, src in enumerate(probe["sources"])},
                   out / "probe.png", title="direction probe: held-out agreement")

        # 4-5. deblurring runs and their evaluation
        tests, tiled = {}, {}
        for loss, loss_flags, hc in cfg["runs"]:
            exp = f"jin_{loss}"
            extra = train_args(ckpts / exp, cfg["jin_epochs"])
            hc_flag = ["--hypercut_path", hc_paths[hc]]  # other losses: only adds hit/con of the predictions
            if extra is not None:
                run_stage(f"train Jin ({loss})", "train_blur2vid.py",
                          ["--metadata_root", data, "--exp_name", exp, "--checkpoints_dir", ckpts,
                           "--backbone", "Jin"] + loss_flags + hc_flag + cfg["jin"] + common + extra, log)
            model = ckpts / exp / "models" / f"{cfg['jin_epochs']:04d}.pth"
            result = out / f"{exp}_test.json"
            run_stage(f"test Jin ({loss})", "test_blur2vid.py",
                      ["--metadata_root", data, "--pretrained_path", model, "--output_json", result]
                      + hc_flag + common, log)
            tests[loss] = read_json(result)
            result = out / f"{exp}_test_tiled.json"
            run_stage(f"test Jin ({loss}, in training-crop windows)", "test_blur2vid.py",
                      ["--metadata_root", data, "--pretrained_path", model, "--output_json", result, "--tile", "crop",
                       "--no_lpips"] + common, log)
            tiled[loss] = read_json(result)
        baselines_json = out / "baselines.json"
        baselines = read_json(baselines_json) if baselines_json.exists() else {}
        if baselines.get("data") != str(data):  # computed once per dataset
            from utils.report import write_json
            baselines = {"data": str(data), **no_network_baselines(data, args.device)}
            write_json(baselines_json, baselines)
        per_frame_plot({"blur as every frame": baselines["blur"]["pPSNR"],
                        **{name: res["pPSNR"] for name, res in tests.items()}}, out / "per_frame.png",
                       title="pPSNR per frame, test split")

        # 5b. Purohit: stage 1 (video autoencoder), stage 2 with order_inv, evaluated with both centres
        purohit = run_purohit(cfg, data, ckpts, out, common, log)

        # 6. inference on a few blurry test images (copied, so the input folder holds only them)
        from datasets.metadata import load_split
        _, entries = load_split(data, "test", check=False)
        inputs = out / "inference_input"
        inputs.mkdir(exist_ok=True)
        for e in entries[:INFERENCE_IMAGES]:
            target = inputs / (e.id.replace("/", "_") + Path(e.blur_path).suffix)
            if not target.exists():
                shutil.copyfile(e.blur_path, target)
        run_stage("inference", "inference.py",
                  ["--backbone", "Jin", "--pretrained_path", ckpts / f"jin_{cfg['runs'][-1][0]}" / "models" /
                   f"{cfg['jin_epochs']:04d}.pth", "--blur_path", inputs, "--output_path", out / "inference",
                   "--device", args.device, "--gif"], log)

        text = summary_markdown(read_json(hc_json), tests, out, mode, read_json(out / "hypercut_ext_test.json"),
                                probe, purohit, cfg["purohit"], baselines, tiled)
        from utils.checkpoint import atomic_write_text
        atomic_write_text(out / "summary.md", text)
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} done in {time.time() - started:.0f} s\n")
    print("\n" + text)
    print(f"demo finished in {(time.time() - started) / 60:.1f} min; summary: {out / 'summary.md'}")
    return 0


def main(argv=None) -> int:
    return run_main(build_parser, main_body, argv, interrupted="interrupted; run the same command again to continue")


if __name__ == "__main__":
    sys.exit(main())

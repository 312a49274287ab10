"""Jin and Purohit side by side on the embedded dataset: naive / order_inv / hypercut at one budget.

  python -m lab.experiments.backbone_table --out results/backbones                  # a GPU: a few minutes
  python -m lab.experiments.backbone_table --tiny --device cpu --out /tmp/bt         # every stage, tiny, CPU

Waves of the project's own commands (run as subprocesses, their logs in OUT/logs/; up to --jobs at once):
  1. prepare_dataset.py synthetic (skipped when --work already holds it)
  2. train_hypercut.py (the demo's HyperCUT), Purohit stage 1 (the video autoencoder), Jin naive and
     order_inv
  3. Jin hypercut, Purohit stage 2 with naive, order_inv and hypercut (from the stage-1 checkpoint)
  4. test_blur2vid.py on the test split for every model; Purohit with its predicted centre and with the
     ground truth's (--middle_frame gt, the oracle protocol of the paper's Purohit table)
Writes OUT/backbones.json and OUT/backbones.md (pPSNR per frame, mean, and the mean of frames 1 and 7).
Running it again with the same --work skips finished trainings and resumes interrupted ones.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recipes import recipe
from utils.cli import ArgumentParser

REPO = Path(__file__).resolve().parents[2]
LOSSES = ("naive", "order_inv", "hypercut")

BUDGETS = {
    # the CPU demo's budget (README "Measured results"): width 0.25, 64x64 crops, batch 8, 12 epochs
    "demo": {"data": [], "hypercut": ["--crop_size", "64", *recipe("hypercut_paper_lab"), "--epochs", "24"],
             # --amp off: narrow networks are launch-bound on a GPU, where bf16 made them slower (README, Speed)
             "deblur": recipe("jin_lab") + ["--val_epoch", "12", "--display_step", "0", "--epochs", "12",
                                            "--amp", "off"],
             "epochs": {"hypercut": 24, "deblur": 12}},
    "tiny": {"data": ["--size", "48", "--num_train", "8", "--num_val", "2", "--num_test", "2"],
             "hypercut": ["--crop_size", "40", "--batch_size", "4", "--lr", "5e-5", "--epochs", "1"],
             "deblur": ["--width_mult", "0.125", "--crop_size", "40", "--batch_size", "4", "--display_step", "0",
                        "--epochs", "1"],
             "epochs": {"hypercut": 1, "deblur": 1}},
}


def run(cmd: list, log: Path, deadline: float) -> bool:
    """One command with its output in `log`; False when it failed or ran past the deadline."""
    left = deadline - time.time()
    if left <= 5:
        return False
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"$ python {' '.join(map(str, cmd))}\n")
        fh.flush()
        try:
            rc = subprocess.run([sys.executable, *map(str, cmd)], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                timeout=left).returncode
        except subprocess.TimeoutExpired:
            fh.write("stopped at the deadline\n")
            return False
    return rc == 0


def train_cmd(script: str, run_dir: Path, epochs: int, flags: list) -> list | None:
    """The training command, with --resume when a state exists; None when the last model is saved."""
    if (run_dir / "models" / f"{epochs:04d}.pth").exists():
        return None
    resume = ["--resume"] if (run_dir / "training_states" / "latest.pth").exists() else []
    return [script, "--checkpoints_dir", run_dir.parent, "--exp_name", run_dir.name, *flags, *resume]


def wave(jobs: list, workers: int, deadline: float) -> dict:
    """Run (name, cmd, log) jobs, up to `workers` at once; {name: ok}."""
    todo = [(n, c, log) for n, c, log in jobs if c is not None]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = dict(zip([n for n, _, _ in todo], pool.map(lambda j: run(j[1], j[2], deadline), todo)))
    return {**{n: True for n, c, _ in jobs if c is None}, **results}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Jin and Purohit side by side on the embedded dataset with the naive, order_inv and hypercut "
                    "losses at one budget: OUT/backbones.md and .json (rerun to resume).",
        epilog="examples:\n"
               "  python -m lab.experiments.backbone_table --out results/backbones                  # a GPU: minutes\n"
               "  python -m lab.experiments.backbone_table --tiny --device cpu --out /tmp/bt         # every stage, tiny")
    p.add_argument("--out", default=os.environ.get("BACKBONE_TABLE_OUT", "results/backbones"),
                   help="results and logs (default: $BACKBONE_TABLE_OUT, else results/backbones)")
    p.add_argument("--work", default=None, help="data and checkpoints (default: runs/backbone_table[_tiny])")
    p.add_argument("--tiny", action="store_true", help="a tiny dataset and 1-epoch runs: checks every stage")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--jobs", type=int, default=4, help="commands at once")
    p.add_argument("--num_workers", type=int, default=2, help="loader workers of each command")
    p.add_argument("--deadline", type=float, default=420, help="seconds; nothing runs past it")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    budget = BUDGETS["tiny" if args.tiny else "demo"]
    out = Path(args.out).resolve()
    work = Path(args.work or ("runs/backbone_table_tiny" if args.tiny else "runs/backbone_table")).resolve()
    logs, ckpts, data = out / "logs", work / "checkpoints", work / "data"
    deadline = time.time() + args.deadline
    common = ["--device", args.device, "--num_workers", str(args.num_workers)]
    e_hc, e_db = budget["epochs"]["hypercut"], budget["epochs"]["deblur"]
    data_flags = ["--metadata_root", data]

    if not (data / "metadata.json").exists():
        if not run(["prepare_dataset.py", "synthetic", "--out", data, *budget["data"]], logs / "data.log", deadline):
            print(f"error: the dataset could not be built; see {logs / 'data.log'}", file=sys.stderr)
            return 1
    hc_dir = ckpts / "hypercut"
    hc = hc_dir / "models" / f"{e_hc:04d}.pth"
    s1_dir = ckpts / "purohit_stage1"
    stage1 = s1_dir / "models" / f"{e_db:04d}.pth"
    deblur = budget["deblur"] + common + data_flags

    def deblur_job(name, backbone, loss, extra=()):
        hc_flag = ["--hypercut_path", hc] if loss == "hypercut" else []
        return (name, train_cmd("train_blur2vid.py", ckpts / name, e_db,
                                ["--backbone", backbone, "--loss_type", loss, *hc_flag, *extra, *deblur]),
                logs / f"{name}.log")

    done = wave([("hypercut", train_cmd("train_hypercut.py", hc_dir, e_hc, budget["hypercut"] + common + data_flags),
                  logs / "hypercut.log"),
                 ("purohit_stage1", train_cmd("train_blur2vid.py", s1_dir, e_db,
                                              ["--backbone", "Purohit", "--stage", "1", *deblur]),
                  logs / "purohit_stage1.log"),
                 deblur_job("jin_naive", "Jin", "naive"), deblur_job("jin_order_inv", "Jin", "order_inv")],
                args.jobs, deadline)
    second = [deblur_job("jin_hypercut", "Jin", "hypercut")] if done.get("hypercut") else []
    if done.get("purohit_stage1"):
        second += [deblur_job(f"purohit_{loss}", "Purohit", loss, ["--stage1_path", stage1])
                   for loss in LOSSES if loss != "hypercut" or done.get("hypercut")]
    done.update(wave(second, args.jobs, deadline))

    tests = []
    for backbone in ("jin", "purohit"):
        for loss in LOSSES:
            name = f"{backbone}_{loss}"
            model = ckpts / name / "models" / f"{e_db:04d}.pth"
            if not done.get(name) or not model.exists():
                continue
            for centre in (("predicted", "gt") if backbone == "purohit" else ("predicted",)):
                result = out / f"{name}_{centre}.json"
                tests.append((f"{name}_{centre}", ["test_blur2vid.py", *data_flags, "--pretrained_path", model,
                                                   "--middle_frame", centre, "--no_lpips", "--batch_size", "4",
                                                   "--output_json", result, *common], logs / f"test_{name}.log"))
    wave(tests, args.jobs, deadline)

    from utils.order_eval import outer_frames
    rows = {}
    for name, _, _ in tests:
        path = out / f"{name}.json"
        if path.exists():
            r = json.loads(path.read_text())
            rows[name] = {"pPSNR": r["pPSNR"], "pPSNR_mean": r["pPSNR_mean"], "pSSIM_mean": r["pSSIM_mean"],
                          "pPSNR_1_7": outer_frames(r["pPSNR"]), "middle_frame": r["middle_frame"]}
    (out / "backbones.json").write_text(json.dumps({"budget": budget, "rows": rows}, indent=2) + "\n")
    lines = ["| model | centre | pPSNR 1..7 | mean | frames 1 & 7 | pSSIM |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name.rsplit('_', 1)[0]} | {r['middle_frame']} | "
                     + " / ".join(f"{v:.2f}" for v in r["pPSNR"])
                     + f" | {r['pPSNR_mean']:.2f} | {r['pPSNR_1_7']:.2f} | {r['pSSIM_mean']:.3f} |")
    (out / "backbones.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    missing = [n for n, ok in done.items() if not ok]
    if missing:
        print(f"not finished (resume with the same --work): {', '.join(missing)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

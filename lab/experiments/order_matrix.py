"""The whole ordering study in one command: dataset, HyperCUTs, direction probe, deblurring matrix.

  python -m lab.experiments.order_matrix --out $OUT                 # one GPU: one invocation of about 6 min, rerun to resume
  python -m lab.experiments.order_matrix --tiny --out /tmp/om       # every stage at a tiny scale, on CPU
  ORDER_MATRIX_OUT=results/om python -m lab.experiments.order_matrix

Stages (each one of the project's commands, run as a subprocess with its log in OUT/logs/):
  data       prepare_dataset.py synthetic (the embedded dataset, with recorded motion) and
             generate_order.py --oracle
  hypercut   train_hypercut.py for every variant in HYPERCUTS (the paper's demo HyperCUT and our
             extensions), then test_hypercut.py and generate_order.py with each
  probe      lab/probe_order.py on 64x64 crops and on full images: stored, oracle and every HyperCUT
  deblur     train_blur2vid.py + test_blur2vid.py for every row of the matrix, at every budget:
             naive on the stored (random) order, order_inv, pit, naive on the oracle order, and per
             HyperCUT variant naive on its order and the hypercut loss with alpha 0, 0.02, 0.2
  report     OUT/matrix.json and OUT/matrix.md: per-frame pPSNR/pSSIM, hit/con of the predictions,
             which order the predictions follow (utils/order_eval.py: is R gamed?), the last epoch's
             loss terms; OUT/probe*.json; figures (per-frame plot, probe plot)

Up to --jobs commands run at once (trainings share the one GPU); the list is in priority order. No
command is started after --launch_deadline seconds and running ones are stopped at --deadline; the
report is written from whatever finished. Running the same command again (same --work) skips what is
done and resumes stopped trainings from their last epoch. Data and checkpoints live in --work
(default runs/order_matrix, or runs/order_matrix_tiny), only results and logs in --out.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from recipes import recipe
from utils.cli import ArgumentParser, above, at_least

REPO = Path(__file__).resolve().parents[2]

# HyperCUT variants: flags of train_hypercut.py and the number of epochs (the final checkpoint).
HYPERCUTS = {
    # the paper's model (recipes.py)
    "paper": (["--crop_size", "64", *recipe("hypercut_paper_lab")], 24),
    # our extension (recipes.py, lab/ordering.md): f reads a global motion estimate, 4 sub-crops must agree
    "ext": (recipe("hypercut_ext") + ["--crop_size", "128", "--subcrop_size", "64", "--subcrops", "4",
                                      "--decay_type", "step_6", "--gamma", "0.5", "--val_epoch", "4"], 8),
    # ablations, for the probe table only
    "flow": (["--f_func", "FlowIm2Vec", "--crop_size", "64", "--batch_size", "8", "--lr", "1e-3",
              "--decay_type", "step_6", "--gamma", "0.5", "--val_epoch", "4"], 8),
    "corr_crop": (["--f_func", "CorrIm2Vec", "--crop_size", "128", "--subcrop_size", "64", "--subcrops", "4",
                   "--crop_consistency", "2.0", "--batch_size", "8", "--lr", "1e-3", "--decay_type", "step_8",
                   "--gamma", "0.5", "--val_epoch", "4"], 12),
    "motion_crop": (["--f_func", "MotionIm2Vec", "--crop_size", "128", "--subcrop_size", "64", "--subcrops", "2",
                     "--crop_consistency", "1.0", "--batch_size", "8", "--lr", "1e-3", "--decay_type", "step_3",
                     "--gamma", "0.5", "--val_epoch", "4"], 4),
    "paper_crop": (["--crop_size", "128", "--subcrop_size", "64", "--subcrops", "2", "--crop_consistency", "1.0",
                    *recipe("hypercut_paper_lab")], 24),
    "paper_slope02": (["--slope", "0.2", "--crop_size", "64", *recipe("hypercut_paper_lab")], 24),
}
MATRIX_HYPERCUTS = ("paper", "ext")  # the variants that get deblurring rows

# Budgets of the deblurring matrix: train_blur2vid.py flags and epochs. At the demo budget every
# network is still worse than returning the blurry image as every frame (lab/ordering.md), so a
# longer and a much longer one follow; the much longer one only for the rows that matter most.
BUDGETS = {
    "demo": (recipe("jin_lab") + ["--val_epoch", "4"], 12),
    "long": (recipe("jin_lab") + ["--val_epoch", "12"], 48),
    "xlong": (recipe("jin_lab") + ["--val_epoch", "40"], 120),
}
# A GPU budget bounded by time, not epochs (--budgets wide): the paper's full-width Jin, bf16, batch 16 of
# 64x64 crops, for --minutes of training each, the lr decayed x0.9 every 30 epochs (22 steps each).
WIDE = ["--width_mult", "1", "--crop_size", "64", "--batch_size", "16", "--amp", "bf16", "--val_epoch", "100000",
        "--state_every", "20", "--lr_decay", "30"]
BUDGETS["wide"] = (WIDE, 100000)
XLONG_ROWS = ("naive", "order_inv", "oracle", "naive_hc_ext", "hcloss_ext_a0")
# The rows that start first: the longest runs of the most informative rows, then the demo budget's
# key rows, then everything else (a run stopped by the deadline resumes on the next invocation).
KEY_ROWS = ("naive", "order_inv", "oracle", "pit", "hcloss_ext_a0", "naive_hc_ext", "naive_hc_paper",
            "hcloss_paper_a0.2")

TINY = {
    "dataset": ["--size", "64", "--num_train", "12", "--num_val", "4", "--num_test", "4"],
    "hypercut": ["--crop_size", "48", "--batch_size", "4", "--max_steps", "2", "--val_epoch", "1"],
    "hypercut_crop": ["--crop_size", "64", "--subcrop_size", "48", "--batch_size", "4", "--max_steps", "2",
                      "--val_epoch", "1"],
    "jin": ["--width_mult", "0.125", "--crop_size", "40", "--batch_size", "4", "--max_steps", "2", "--val_epoch", "1"],
    "probe": ["--crop_size", "48", "--train_crops", "2", "--test_crops", "2", "--steps", "3", "6", "--batch_size", "8"],
}

LATE_MARGIN = 30.0  # seconds before --deadline after which not even an evaluation starts
ROWS = ("naive", "order_inv", "pit", "oracle")  # the order-free rows; HyperCUT rows are added per variant
ALPHAS = ("0", "0.02", "0.2")


class Job:
    """One command: a top-level script (x.py) or a module (lab.x). `done`: the file whose existence means it
    finished, or a function saying so. An argument may be a function, called when the command starts (a path
    known only then)."""
    def __init__(self, name, script, args, done, deps=(), resumable: Path | None = None, late: bool = False):
        self.name, self.script, self.args, self.deps = name, script, list(args), set(deps)
        self.late = late  # short (an evaluation): may start after --launch_deadline, until --deadline - LATE_MARGIN
        self.is_done = done if callable(done) else done.exists
        self.resumable = resumable  # a training state: relaunch with --resume when it exists
        self.proc = self.log = None
        self.state = "done" if self.is_done() else "waiting"
        self.seconds = None

    def command(self) -> list:
        extra = ["--resume"] if self.resumable is not None and self.resumable.exists() else []
        launch = [self.script] if self.script.endswith(".py") else ["-m", self.script]  # a lab module
        return [sys.executable, *launch] + [str(a() if callable(a) else a) for a in self.args] + extra


def last_model(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "models").glob("*.pth"))
    return found[-1] if found else None


def finished_run(run_dir: Path):
    """Whether a train script's run ended (its log's last line says 'done:') with a model saved."""
    def done() -> bool:
        log = run_dir / "log.txt"
        lines = log.read_text().strip().splitlines() if log.exists() else []
        return bool(lines) and " done: " in lines[-1] and last_model(run_dir) is not None
    return done


def build_jobs(args, work: Path, out: Path) -> list:
    data, ck, res = work / "data", work / "checkpoints", out / "results"
    tiny = args.tiny
    device = ["--device", args.device]
    workers = ["--num_workers", str(args.num_workers)]
    # the narrow Jin is launch-bound on a GPU: bf16 autocast made its step slower on the H100 (180 -> 223 ms,
    # lab/benchmarks/RESULTS_cuda_h100.md), so the deblurring runs train in float32
    deblur_amp = ["--amp", "off"]
    jobs = [Job("data", "prepare_dataset.py",
                ["synthetic", "--out", data, "--workers", str(args.data_workers), "--overwrite"] + (TINY["dataset"] if tiny else []),
                data / "metadata.json"),
            Job("oracle_order", "generate_order.py", ["--metadata_root", data, "--oracle", "--overwrite",
                                                      "--save_path", data / "metadata_oracle.json"],
                data / "metadata_oracle.json", deps=["data"])]

    def hc_ckpt(v):
        epochs = 1 if tiny else HYPERCUTS[v][1]
        return ck / f"hc_{v}" / "models" / f"{epochs:04d}.pth"

    variants = [v for v in HYPERCUTS if v in args.hypercuts or args.ablations]
    for v in variants:
        flags, epochs = HYPERCUTS[v]
        if tiny:
            keep = [f for f in ("--f_func", "--crop_consistency") if f in flags]
            flags = [x for f in keep for x in (f, flags[flags.index(f) + 1])]
            flags += TINY["hypercut_crop"] if "--subcrop_size" in HYPERCUTS[v][0] else TINY["hypercut"]
            epochs = 1
        jobs.append(Job(f"hc_{v}", "train_hypercut.py",
                        ["--metadata_root", data, "--exp_name", f"hc_{v}", "--checkpoints_dir", ck, "--epochs", epochs]
                        + flags + device + workers, hc_ckpt(v), deps=["data"],
                        resumable=ck / f"hc_{v}" / "training_states" / "latest.pth"))
        jobs.append(Job(f"hctest_{v}", "test_hypercut.py",
                        ["--metadata_root", data, "--pretrained_path", hc_ckpt(v), "--output_json",
                         res / f"hypercut_{v}.json"] + device, res / f"hypercut_{v}.json", deps=["data", f"hc_{v}"]))
        if v in args.hypercuts:
            jobs.append(Job(f"order_{v}", "generate_order.py",
                            ["--metadata_root", data, "--pretrained_path", hc_ckpt(v), "--overwrite",
                             "--save_path", data / f"metadata_hc_{v}.json"] + device,
                            data / f"metadata_hc_{v}.json", deps=["data", f"hc_{v}"]))

    probe_common = (TINY["probe"] if tiny else []) + device
    hc_paths = [hc_ckpt(v) for v in variants]
    for name, crop in (("probe", []), ("probe_full", ["--crop_size", "0"])):
        if (tiny and crop) or not args.probe:
            continue
        jobs.append(Job(name, "lab.probe_order",
                        ["--metadata_root", data, "--hypercut_path"] + hc_paths + crop + probe_common
                        + ["--output_json", res / f"{name}.json"], res / f"{name}.json",
                        deps=["data"] + [f"hc_{v}" for v in variants]))
    for v in args.hypercuts if args.probe else ():  # HyperCUT's full-image order (generate_order's) as the probe sees it
        jobs.append(Job(f"probe_order_{v}", "lab.probe_order",
                        ["--metadata_root", data / f"metadata_hc_{v}.json", "--sources", "stored"] + probe_common
                        + ["--output_json", res / f"probe_order_{v}.json"], res / f"probe_order_{v}.json",
                        deps=[f"order_{v}"]))

    rows = []  # (row name, metadata, loss flags, deps, hypercut used for hit)
    rows.append(("naive", data, ["--loss_type", "naive"], ["data"], "paper"))
    rows.append(("order_inv", data, ["--loss_type", "order_inv"], ["data"], "paper"))
    rows.append(("pit", data, ["--loss_type", "pit"], ["data"], "paper"))
    rows.append(("oracle", data / "metadata_oracle.json", ["--loss_type", "naive"], ["oracle_order"], "paper"))
    for v in args.hypercuts:
        rows.append((f"naive_hc_{v}", data / f"metadata_hc_{v}.json", ["--loss_type", "naive"], [f"order_{v}"], v))
        for a in ALPHAS:
            rows.append((f"hcloss_{v}_a{a}", data, ["--loss_type", "hypercut", "--hypercut_path", hc_ckpt(v),
                                                    "--alpha", a], ["data", f"hc_{v}"], v))
    if args.rows:
        unknown = sorted(set(args.rows) - {r[0] for r in rows})
        if unknown:
            raise SystemExit(f"error: --rows: unknown row(s) {', '.join(unknown)}; the rows are "
                             + ", ".join(r[0] for r in rows))
        rows = [r for r in rows if r[0] in args.rows]
    # priority: the time-bounded budget, then the demo budget's key rows, then the rest, then the long budget
    ordered = [("wide", r) for r in rows] + \
              [("xlong", r) for r in rows if r[0] in XLONG_ROWS] + \
              [("demo", r) for r in rows if r[0] in KEY_ROWS] + \
              [("long", r) for r in rows if r[0] in KEY_ROWS] + \
              [("demo", r) for r in rows if r[0] not in KEY_ROWS] + \
              [("long", r) for r in rows if r[0] not in KEY_ROWS]
    for budget, (row, meta, loss, deps, hc) in ordered:
        if budget not in args.budgets:
            continue
        hc = hc if hc in args.hypercuts else args.hypercuts[0]  # the HyperCUT that measures the predictions' hit
        flags, epochs = BUDGETS[budget]
        amp = deblur_amp
        if budget == "wide":
            flags, amp = flags + ["--time_limit", args.minutes], []
            epochs = args.wide_epochs or epochs
        if tiny:
            flags, epochs = TINY["jin"] + (["--time_limit", args.minutes] if budget == "wide" else []), 1
        exp = f"jin_{budget}_{row}"
        run_dir = ck / exp
        if budget == "wide":
            done, model = finished_run(run_dir), (lambda d=run_dir: last_model(d))
        else:
            done = model = run_dir / "models" / f"{epochs:04d}.pth"
        jobs.append(Job(exp, "train_blur2vid.py",
                        ["--metadata_root", meta, "--exp_name", exp, "--checkpoints_dir", ck, "--backbone", "Jin",
                         "--epochs", epochs, "--display_step", "0"] + loss + flags + device + workers + amp, done, deps=deps,
                        resumable=run_dir / "training_states" / "latest.pth"))
        jobs.append(Job(f"eval_{budget}_{row}", "test_blur2vid.py",
                        ["--metadata_root", data, "--pretrained_path", model, "--no_lpips", "--hypercut_path",
                         hc_ckpt(hc), "--batch_size", "10", "--output_json", res / f"{exp}.json"] + device,
                        res / f"{exp}.json", deps=[exp, f"hc_{hc}"], late=True))
        # the same model predicting in windows of its training crop size (test_blur2vid.py --tile crop):
        # how much of the gap to the blur is the crop-vs-whole-image mismatch (lab/ordering.md section 10)
        jobs.append(Job(f"eval_tiled_{budget}_{row}", "test_blur2vid.py",
                        ["--metadata_root", data, "--pretrained_path", model, "--no_lpips", "--tile", "crop",
                         "--batch_size", "10", "--output_json", res / "tiled" / f"{exp}.json"] + device,
                        res / "tiled" / f"{exp}.json", deps=[exp], late=True))
    for j in jobs[1:]:  # everything reads the dataset; a dependency may be done already (a HyperCUT carried over)
        j.deps.add("data")
    return jobs


def run_jobs(jobs: list, args, out: Path) -> None:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.time()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    by_name = {j.name: j for j in jobs}
    status_every, last_status = 30.0, 0.0
    while True:
        now = time.time() - start
        running = [j for j in jobs if j.state == "running"]
        for j in running:
            rc = j.proc.poll()
            if rc is None and now > args.deadline:
                j.proc.terminate()
                try:
                    j.proc.wait(20)
                except subprocess.TimeoutExpired:
                    j.proc.kill()
                rc = "stopped"
            if rc is not None:
                j.log.close()
                j.seconds = time.time() - j.started
                j.state = "done" if rc == 0 and j.is_done() else ("stopped" if rc == "stopped" else "failed")
                print(f"[{now:6.0f} s] {j.state}: {j.name} ({j.seconds:.0f} s){'' if j.state == 'done' else ', see ' + str(logs / (j.name + '.log'))}",
                      flush=True)
        for j in jobs:  # a job whose dependency failed or was stopped cannot run
            if j.state == "waiting" and any(by_name[d].state in ("failed", "stopped", "skipped") for d in j.deps):
                j.state = "skipped"
        running = [j for j in jobs if j.state == "running"]
        for j in jobs:  # past the launch deadline only evaluations start, and only until shortly before the stop
            if j.state == "waiting" and now >= args.launch_deadline and (not j.late or now >= args.deadline - LATE_MARGIN):
                j.state = "skipped"
        for j in jobs:
            if len(running) >= args.jobs:
                break
            if j.state == "waiting" and all(by_name[d].state == "done" for d in j.deps):
                j.log = open(logs / f"{j.name}.log", "a")
                cmd = j.command()
                j.log.write(f"$ {shlex.join(cmd)}\n")
                j.log.flush()
                j.proc = subprocess.Popen(cmd, cwd=REPO, stdout=j.log, stderr=subprocess.STDOUT, env=env)
                j.started, j.state = time.time(), "running"
                running.append(j)
        if not running and not any(j.state == "waiting" for j in jobs):
            break
        if now - last_status > status_every:
            last_status = now
            counts = {s: sum(j.state == s for j in jobs) for s in ("done", "running", "waiting", "failed", "skipped")}
            print(f"[{now:6.0f} s] " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
        time.sleep(0.5)
    print(f"jobs finished after {time.time() - start:.0f} s: "
          + ", ".join(f"{s} {sum(j.state == s for j in jobs)}" for s in ("done", "failed", "stopped", "skipped")), flush=True)


def last_epoch_terms(log_path: Path) -> dict:
    """The loss terms of the last 'epoch N/M | ...' line of a train_blur2vid.py log.txt."""
    terms = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            if " | step " in line and "epoch " in line and "val epoch" not in line:
                parts = [p.strip() for p in line.split("|")]
                terms = {k: float(v) for k, v in (p.split(" ", 1) for p in parts[2:] if p.count(" ") == 1)
                         if k not in ("lr",) and _is_float(v)}
    return terms


def _f3(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def order_analysis(work: Path, res: Path, tiny: bool, device_name: str) -> dict:
    """utils.order_eval figures of every finished deblurring model, with each matrix HyperCUT."""
    import torch
    from datasets.blur2vid import Blur2VidDataset
    from models import load_backbone
    from models.hypercut import load_hypercut
    from utils.device import resolve_device
    from utils.order_eval import order_figures
    from utils.evaluation import make_eval_loader
    device = resolve_device(device_name)
    data, ck = work / "data", work / "checkpoints"
    loader = make_eval_loader(Blur2VidDataset(data, "test", augment=None), 20, 2 if device.type == "cuda" else 0, device)
    hcs = {}
    for v in MATRIX_HYPERCUTS:
        path = ck / f"hc_{v}" / "models" / f"{1 if tiny else HYPERCUTS[v][1]:04d}.pth"
        if path.exists():
            hcs[v] = load_hypercut(path, map_location=device)
    out = {}
    for result in sorted(res.glob("jin_*.json")):
        exp = result.stem
        models = sorted((ck / exp / "models").glob("*.pth"))
        if not models:
            continue
        model = load_backbone(models[-1], map_location=device)
        with torch.no_grad():
            out[exp] = order_figures(model, loader, device, hcs)
    return out


FIGURE_ROWS = ("naive", "order_inv", "pit", "oracle", "naive_hc_paper", "naive_hc_ext", "hcloss_ext_a0")


def sequence_figures(work: Path, out: Path, device_name: str, indices=(0, 1, 2)) -> None:
    """Contact sheets and GIFs (utils.figures.method_figures) of a few test sequences, demo budget. In
    each GIF: ground truth, then the rows of FIGURE_ROWS that finished, left to right."""
    from datasets.blur2vid import Blur2VidDataset
    from models import load_backbone
    from utils.device import resolve_device
    from utils.figures import method_figures
    device = resolve_device(device_name)
    models = {}
    for row in FIGURE_ROWS:
        found = sorted((work / "checkpoints" / f"jin_demo_{row}" / "models").glob("*.pth"))
        if found:
            models[row] = load_backbone(found[-1], map_location=device)
    dataset = Blur2VidDataset(work / "data", "test", augment=None)
    if models:
        method_figures(models, dataset, [i for i in indices if i < len(dataset)], out / "figures", device)
        print("figures: " + str(out / "figures") + " (GIF columns: ground truth, " + ", ".join(models) + ")")


def write_report(args, work: Path, out: Path, jobs: list) -> None:
    from utils.figures import per_frame_plot, probe_plot
    from utils.report import markdown_table, write_json
    from utils.checkpoint import atomic_write_text
    res = out / "results"
    lines = ["# Order matrix (lab/experiments/order_matrix.py)", "",
             f"Mode {'tiny' if args.tiny else 'full'}, device {args.device}; budgets: "
             + ("tiny (" + " ".join(TINY["jin"]) + ")" if args.tiny else
                "; ".join(f"{b}: {' '.join(f)} --epochs {e}" for b, (f, e) in BUDGETS.items())), ""]
    hc_rows = []
    for v in HYPERCUTS:
        p = res / f"hypercut_{v}.json"
        if p.exists():
            r = json.loads(p.read_text())
            hc_rows.append([v] + [r.get(k) for k in ("hit", "hit_x2_x6", "hit_x3_x5", "con@2", "con@3")])
    if hc_rows:
        lines += ["## HyperCUT variants, test split", "",
                  markdown_table(["variant", "hit", "hit_x2_x6", "hit_x3_x5", "con@2", "con@3"], hc_rows, 3), ""]
    probes = {}
    for name in ["probe", "probe_full"] + [f"probe_order_{v}" for v in MATRIX_HYPERCUTS]:
        p = res / f"{name}.json"
        if p.exists():
            r = json.loads(p.read_text())
            probes[name] = r
            lines += [f"## Direction probe: {name} ({'full images' if not r['crop_size'] else str(r['crop_size']) + ' crops'}"
                      f", {r['num_train_crops']} / {r['num_test_crops']} crops)", "",
                      markdown_table(["steps"] + r["sources"], [[s] + a for s, a in zip(r["steps"], r["agreement"])], 3)]
            if r.get("hypercut_on_test_crops"):
                lines += ["", "on held-out crops: " + "; ".join(f"{k}: hit {_f3(v['hit'])}, crop agreement {_f3(v['crop_agreement'])}, motion rule {_f3(v['motion_rule'])}" for k, v in r["hypercut_on_test_crops"].items())]
            lines.append("")
    if "probe" in probes:
        r = probes["probe"]
        probe_plot(r["steps"], {s: [a[i] for a in r["agreement"]] for i, s in enumerate(r["sources"])},
                   out / "probe.png", title="direction probe, 64x64 crops, held-out")
    analysis = order_analysis(work, res, args.tiny, args.device)
    matrix, table, series = {}, [], {}
    import torch
    from datasets.blur2vid import Blur2VidDataset
    from utils.device import resolve_device
    from utils.order_eval import blur_baseline, outer_frames, pair_mean_baseline
    from utils.evaluation import make_eval_loader
    for key, fn, row, label in (
            ("blur", blur_baseline, "blur (every frame = the blurry image)", "blur as every frame"),
            ("pair_mean", pair_mean_baseline, "mean of each ground-truth pair (random order's L2 optimum)",
             "mean of each true pair (random order's best)")):
        base = fn(make_eval_loader(Blur2VidDataset(work / "data", "test", augment=None), 20, 0),
                  resolve_device(args.device))
        matrix[key] = {"row": row, **base, "pPSNR_1_7": outer_frames(base["pPSNR"])}
        exact_middle = key == "pair_mean"  # its frame 4 is the ground truth (100 dB): no frame-4 or mean figure
        table.append(["-", label, matrix[key]["pPSNR_1_7"], "-"]
                     + (["-"] * 3 if exact_middle else [base["pPSNR"][3], base["pPSNR_mean"], base["pSSIM_mean"]])
                     + ["-"] * 7)
    for budget in BUDGETS:
        for result in sorted(res.glob(f"jin_{budget}_*.json")):
            exp = result.stem
            r = json.loads(result.read_text())
            row = exp[len(f"jin_{budget}_"):]
            terms = last_epoch_terms(work / "checkpoints" / exp / "log.txt")
            tiled_path = res / "tiled" / result.name
            tiled = json.loads(tiled_path.read_text()) if tiled_path.exists() else None
            entry = {"budget": budget, "row": row, "pPSNR": r["pPSNR"], "pSSIM": r["pSSIM"],
                     "pPSNR_mean": r["pPSNR_mean"], "pSSIM_mean": r["pSSIM_mean"],
                     "pPSNR_1_7": outer_frames(r["pPSNR"]), "PSNR_mean": r["PSNR_mean"],
                     "hit": r.get("hit"), "con@3": r.get("con@3"), "hypercut_path": r.get("hypercut_path"),
                     "last_epoch_terms": terms, "order": analysis.get(exp, {}),
                     "tiled": None if tiled is None else {"tile": tiled["tile"], "pPSNR": tiled["pPSNR"],
                                                         "pSSIM": tiled["pSSIM"],
                                                         "pPSNR_1_7": outer_frames(tiled["pPSNR"])}}
            matrix[exp] = entry
            oa = entry["order"]
            table.append([budget, row, entry["pPSNR_1_7"], entry["tiled"] and entry["tiled"]["pPSNR_1_7"], r["pPSNR"][3], entry["pPSNR_mean"], entry["pSSIM_mean"],
                          entry["hit"], next((f["follows_oracle"] for f in oa.values() if f.get("follows_oracle") is not None), None),
                          oa.get("paper", {}).get("follows_hypercut"), oa.get("ext", {}).get("follows_hypercut"),
                          terms.get("base"), terms.get("reg"), terms.get("total")])
            series.setdefault(budget, {"blur as every frame": matrix["blur"]["pPSNR"]})[row] = r["pPSNR"]
    write_json(out / "matrix.json", {"matrix": matrix, "probes": probes,
                                     "jobs": {j.name: {"state": j.state, "seconds": j.seconds} for j in jobs}})
    if table:
        lines += ["## Deblurring matrix, test split (pPSNR in dB, p_mode pair)", "",
                  markdown_table(["budget", "row", "pPSNR 1/7", "1/7 in crop tiles", "pPSNR 4", "pPSNR mean", "pSSIM mean", "hit (pred)",
                                  "follows oracle", "follows HC paper", "follows HC ext", "base", "R", "train loss"],
                                 table, 3), "",
                  "Per-frame pPSNR / pSSIM of every run: matrix.json. 1/7 in crop tiles: the same model predicting in "
                  "windows of its training crop size (test_blur2vid.py --tile crop). follows_*: fraction of test sequences whose "
                  "prediction is in that order (utils/order_eval.py).", ""]
    for budget, curves in series.items():
        per_frame_plot(curves, out / f"per_frame_{budget}.png", title=f"pPSNR per frame, {budget} budget")
    if "demo" in series:
        sequence_figures(work, out, args.device)
    failed = [j.name for j in jobs if j.state != "done"]
    if failed:
        lines += ["Not finished: " + ", ".join(f"{j.name} ({j.state})" for j in jobs if j.state != "done"), ""]
    atomic_write_text(out / "matrix.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="The whole ordering study in one resumable command: dataset, HyperCUTs, direction probes, the "
                    "deblurring matrix at several budgets, OUT/matrix.md and figures (lab/ordering.md section 7).",
        epilog="examples:\n"
               "  python -m lab.experiments.order_matrix --out $OUT              # one GPU: about 6 min a call; rerun\n"
               "  python -m lab.experiments.order_matrix --tiny --out /tmp/om    # every stage at a tiny scale, CPU")
    p.add_argument("--out", default=os.environ.get("ORDER_MATRIX_OUT"),
                   help="results folder (default: $ORDER_MATRIX_OUT)")
    p.add_argument("--work", default=None, help="data and checkpoints (default: runs/order_matrix[_tiny])")
    p.add_argument("--tiny", action="store_true", help="tiny dataset and 2-step runs: checks every stage on CPU")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--jobs", type=at_least(1, 256), default=None, help="commands at once (default: 8 on CUDA, 2 on CPU)")
    p.add_argument("--num_workers", type=at_least(0, 256), default=None,
                   help="data loader workers per training (default: 1; tiny 0)")
    p.add_argument("--threads", type=int, default=None, help="OMP threads per command (default: 2; tiny 1)")
    p.add_argument("--data_workers", type=int, default=None, help="dataset rendering processes (default: CPU count)")
    p.add_argument("--launch_deadline", type=float, default=None,
                   help="start no command after this many seconds, evaluations excepted "
                        "(default: 300; none with --tiny)")
    p.add_argument("--deadline", type=float, default=None,
                   help="stop running commands after this many seconds (default: 340, or the launch deadline + "
                        "--minutes + 2 min with --budgets wide; none with --tiny)")
    p.add_argument("--ablations", action="store_true", default=None,
                   help="also train the ablation HyperCUTs for the probe (default: on, except --tiny)")
    p.add_argument("--no_ablations", dest="ablations", action="store_false",
                   help="only the HyperCUTs of the matrix (paper, ext): leaves the GPU to the deblurring runs")
    p.add_argument("--budgets", nargs="+", default=["demo", "long", "xlong"], choices=sorted(BUDGETS),
                   help="deblurring budgets to run (wide: full-width Jin for --minutes each, one GPU)")
    p.add_argument("--rows", nargs="+", default=None, help="only these rows of the matrix (default: all)")
    p.add_argument("--hypercuts", nargs="+", default=list(MATRIX_HYPERCUTS), choices=list(MATRIX_HYPERCUTS),
                   help="HyperCUTs that get deblurring rows")
    p.add_argument("--no_probe", dest="probe", action="store_false", help="skip the direction probes")
    p.add_argument("--minutes", type=above(0), default=6.0, help="training time of each run of the wide budget")
    p.add_argument("--wide_epochs", type=at_least(1), default=None,
                   help="also stop each wide run after this many epochs (22 steps each), so that rows run in "
                        "different calls see the same batches; default: --minutes alone")
    return p


def resolved_settings(flags: argparse.Namespace, cuda_available: bool) -> argparse.Namespace:
    """The flags with every automatic value filled in, as a new Namespace (the parsed one stays as given)."""
    s = argparse.Namespace(**vars(flags))
    s.device = flags.device or ("cuda" if cuda_available else "cpu")
    cuda = s.device.startswith("cuda")
    s.jobs = flags.jobs or (8 if cuda else 2)
    # one loader worker each: on the H100 run 11 trainings with 2 workers each oversubscribed 16 cores
    s.num_workers = flags.num_workers if flags.num_workers is not None else (0 if flags.tiny else 1)
    s.threads = flags.threads or (1 if flags.tiny or not cuda else 2)
    s.data_workers = flags.data_workers or max(1, min(16, os.cpu_count() or 1))
    s.ablations = (not flags.tiny) if flags.ablations is None else flags.ablations
    never = float("inf")
    # one device call of under 10 minutes by default; with the wide budget, long enough for a run started at
    # the launch deadline to train its --minutes, validate and be evaluated
    s.launch_deadline = flags.launch_deadline or (never if flags.tiny else 300.0)
    wide_end = s.launch_deadline + 60.0 * flags.minutes + 120.0 if "wide" in flags.budgets else 0.0
    s.deadline = flags.deadline or (never if flags.tiny else max(340.0, wide_end))
    return s


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # the flags' ranges are checked here
    if not args.out:
        print("error: give --out or set ORDER_MATRIX_OUT", file=sys.stderr)
        return 2
    import torch
    args = resolved_settings(args, torch.cuda.is_available())
    out = Path(args.out).resolve()
    work = Path(args.work or REPO / ("runs/order_matrix_tiny" if args.tiny else "runs/order_matrix")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)  # the report's evaluations run in this process
    jobs = build_jobs(args, work, out)
    print(f"{len(jobs)} commands, {sum(j.state == 'done' for j in jobs)} already done; device {args.device}, "
          f"{args.jobs} at once; work {work}, results {out}", flush=True)
    run_jobs(jobs, args, out)
    write_report(args, work, out, jobs)
    return 0 if all(j.state == "done" for j in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())

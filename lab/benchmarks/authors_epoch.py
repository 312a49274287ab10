"""A HyperCUT training epoch end to end: the authors' train_hypercut.py against ours, same machine, same images.

Both trainers run as their users run them, one after the other, on one dataset in this project's layout
(metadata.json; the authors' loader reads it through a link at dataset/Blur2Vid/RB2V/<name> in their folder),
with the authors' defaults: batch 8, 256x256 crops, their augmentations, Adamax. The figure is sequences per
second over whole epochs (loading, augmentation, forward, backward, optimiser step), after one warm-up epoch,
from each trainer's own log: theirs logs the start of every epoch, ours the seconds of each. Both get
--val_limit 1 (their first validation otherwise scores the whole training split one sequence at a time) and
--lr 5e-5 (the throughput does not depend on it; at 5e-4 our GPU run could stop on a non-finite loss).

Beside the trainers, the two loaders alone (the same DataLoader settings, no model), and on CUDA the GPU's busy
share (nvidia-smi's utilization, sampled every 200 ms over the timed epochs): a trainer whose rate is its
loader's and whose GPU idles is bound by its loader.

Their code is used as they release it, minus models/backbones/jin_backbone.py (it imports a module they did
not release, and their model registry imports every file there); it needs CUDA, albumentations 1.3.1, qudida
0.0.4 and opencv-python-headless (plus scikit-learn, which qudida imports).

  python -m lab.benchmarks.authors_epoch --authors ~/HyperCUT --device cuda            # everything, on a GPU
  python -m lab.benchmarks.authors_epoch --runs ours_fp32 ours_loader --device cpu \\
      --num_train 16 --size 288 --epochs 1 --no_write                                 # our side on a CPU
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from lab.benchmarks.machine import cpu_name
from utils.cli import ArgumentParser, AutoOr, at_least, loader_workers

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "lab" / "benchmarks" / "results" / "authors_epoch.md"
RUNS = ("theirs", "ours_fp32", "ours_amp", "theirs_loader", "ours_loader")
THEIR_EPOCH = re.compile(r"^(\d\d-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) - INFO: Running epoch (\d+)/\d+", re.M)
OUR_EPOCH = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) epoch (\d+)/\d+ \| .*\| ([\d.]+) s \(total", re.M)


# --- the two logs -----------------------------------------------------------------------------------------

def their_epochs(log: str) -> dict[int, float]:
    """{epoch: start time (s since the epoch)} from their logger's 'Running epoch k/N' lines."""
    return {int(k): datetime.strptime(t, "%y-%m-%d %H:%M:%S.%f").timestamp() for t, k in THEIR_EPOCH.findall(log)}


def their_timed(log: str, warmup: int = 1) -> tuple[list[float], tuple[float, float]]:
    """Seconds of each whole epoch after `warmup` ones (an epoch ends when the next starts), and the window."""
    starts = their_epochs(log)
    ks = sorted(k for k in starts if k >= warmup and k + 1 in starts)
    if not ks:
        raise ValueError("their log has fewer than two epoch starts after the warm-up")
    return [starts[k + 1] - starts[k] for k in ks], (starts[ks[0]], starts[ks[-1] + 1])


def our_timed(log: str, warmup: int = 1) -> tuple[list[float], tuple[float, float]]:
    """Seconds of each epoch after `warmup` ones from our log.txt's epoch lines, and the window (1 s steps)."""
    rows = [(datetime.strptime(t, "%Y-%m-%d %H:%M:%S").timestamp(), int(k), float(s))
            for t, k, s in OUR_EPOCH.findall(log)]
    timed = [r for r in rows if r[1] > warmup]
    if not timed:
        raise ValueError("our log has no epoch line after the warm-up")
    return [r[2] for r in timed], (timed[0][0] - timed[0][2], timed[-1][0])


# --- setup ---------------------------------------------------------------------------------------------

def render_data(data: Path, size: int, num_train: int, workers: int) -> None:
    """The photos world of prepare_dataset.py synthetic at `size`, if `data` holds no dataset yet."""
    if (data / "metadata.json").is_file():
        return
    cmd = [sys.executable, "prepare_dataset.py", "synthetic", "--out", str(data), "--size", str(size),
           "--num_train", str(num_train), "--num_val", "8", "--num_test", "8", "--workers", str(workers)]
    print("render:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)


def prepare_authors(source: Path, tree: Path) -> None:
    """Their release's code in `tree` (from a checkout, or a git directory file by file), without
    jin_backbone.py and without their images (assets/)."""
    if not (tree / "train_hypercut.py").is_file():
        if (source / "train_hypercut.py").is_file():
            shutil.copytree(source, tree, ignore=shutil.ignore_patterns(".git", "assets"))
        elif (source / "HEAD").is_file():  # file by file: a partial mirror may lack its large files (the GIFs)
            git = ["git", "--git-dir", str(source)]
            names = subprocess.run(git + ["ls-tree", "-r", "--name-only", "HEAD"], check=True, capture_output=True,
                                   text=True).stdout.split()
            for path in (n for n in names if not n.startswith("assets/")):
                blob = subprocess.run(git + ["show", f"HEAD:{path}"], capture_output=True)
                if blob.returncode == 0:
                    (tree / path).parent.mkdir(parents=True, exist_ok=True)
                    (tree / path).write_bytes(blob.stdout)
                elif path.endswith(".py"):
                    raise SystemExit(f"--authors {source}: cannot read {path} from it")
        else:
            raise SystemExit(f"--authors {source}: neither a checkout of their release (train_hypercut.py) "
                             f"nor a git directory")
    (tree / "models" / "backbones" / "jin_backbone.py").unlink(missing_ok=True)


def link_data(tree: Path, data: Path, name: str) -> None:
    """The dataset where their loader looks for it: dataset/Blur2Vid/RB2V/<metadata name>."""
    link = tree / "dataset" / "Blur2Vid" / "RB2V" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(data.resolve(), target_is_directory=True)


class GpuSampler:
    """nvidia-smi's utilization.gpu every 200 ms, each sample stamped on arrival; mean(window)."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "200", "-i", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.samples.append((time.time(), float(line.strip())))
            except ValueError:
                pass

    def mean(self, window: tuple[float, float]) -> float | None:
        inside = [u for t, u in self.samples if window[0] <= t <= window[1]]
        return sum(inside) / len(inside) if inside else None

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


CPU_SHIM = """# lab/benchmarks/authors_epoch.py --cpu_shim: the authors' trainer without CUDA (a check, not a figure)
import torch
torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
_device = torch.device
class _IsDevice(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, _device)
class device(metaclass=_IsDevice):
    def __new__(cls, *a, **k):
        return _device("cpu") if a and str(a[0]).startswith("cuda") else _device(*a, **k)
torch.device = device
"""


def their_env(out: Path, cpu_shim: bool) -> dict | None:
    """The environment of their trainer: unchanged, or with CPU_SHIM loaded at start (sitecustomize)."""
    if not cpu_shim:
        return None
    (out / "cpu_shim").mkdir(exist_ok=True)
    (out / "cpu_shim" / "sitecustomize.py").write_text(CPU_SHIM)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(out / "cpu_shim"), os.environ.get("PYTHONPATH", "")])}


def run_logged(cmd: list, cwd: Path, log: Path, timeout: float, env: dict | None = None) -> int:
    shown = ["<code>" if len(str(c)) > 200 else str(c) for c in cmd]
    print(f"run ({cwd}): {' '.join(shown)}", flush=True)
    with open(log, "w") as out:
        try:
            return subprocess.run(list(map(str, cmd)), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  env=env).returncode
        except subprocess.TimeoutExpired:
            return 124


LOADER_CODE = """
import sys, time, torch
from torch.utils.data import DataLoader
epochs, batch, workers, which = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if which == "theirs":
    from data.seq7_dataset import Seq7TrainDataset
    ds = Seq7TrainDataset(metadata_root=sys.argv[5], target_frames=[1, 2, 3, 4, 5, 6, 7])
    make = lambda: DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)
    loader = None
else:
    import train_hypercut
    from utils.training import make_loader, set_epoch
    args = train_hypercut.build_parser().parse_args(sys.argv[5:])
    ds, _ = train_hypercut.build_datasets(args)
    loader = make_loader(ds, batch, train=True, num_workers=workers, seed=0, device=torch.device(args.device))
    make = lambda: loader
for e in range(epochs + 1):
    if loader is not None:
        set_epoch(loader, e)
    t, n = time.perf_counter(), 0
    for b in make():
        n += len(b["meta"]["id"]) if which == "theirs" else len(b["index"])
    if e:
        print(f"epoch {e}: {n} sequences in {time.perf_counter() - t:.3f} s", flush=True)
"""


# --- the runs ------------------------------------------------------------------------------------------

def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="A HyperCUT training epoch end to end, the authors' trainer against ours (same "
                                   "machine, same images, their defaults); appends to "
                                   "lab/benchmarks/results/authors_epoch.md.",
                       epilog="example:\n  python -m lab.benchmarks.authors_epoch --authors ~/HyperCUT --device cuda")
    p.add_argument("--authors", default=None, help="their release: a checkout, or a bare git directory (needed for "
                                                   "the runs theirs and theirs_loader)")
    p.add_argument("--out", default="runs/authors_epoch", help="work folder (data, their tree, run folders, logs)")
    p.add_argument("--data", default=None, help="dataset to train on (default: OUT/data, rendered if missing)")
    p.add_argument("--size", type=at_least(256, 4096), default=320, help="image size of the rendered dataset")
    p.add_argument("--num_train", type=at_least(8, 100000), default=384, help="training sequences rendered")
    p.add_argument("--epochs", type=at_least(1, 100), default=3, help="timed epochs (after one warm-up epoch)")
    p.add_argument("--batch_size", type=at_least(1, 1024), default=8, help="sequences per batch (theirs: 8)")
    p.add_argument("--num_workers", type=AutoOr(int, 0, 256), default="auto",
                   help="loader workers of both (auto: our training default)")
    p.add_argument("--device", default="cuda", help="our device (theirs always uses CUDA)")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS, help="what to run, in this order")
    p.add_argument("--cpu_shim", action="store_true",
                   help="run their trainer without CUDA, its .cuda() calls mapped to the CPU (to check this benchmark "
                        "on a machine without a GPU; not their setup, not a figure to report)")
    p.add_argument("--timeout", type=at_least(10), default=300, help="seconds per run")
    p.add_argument("--no_write", action="store_true", help="print only (no section appended to --results)")
    p.add_argument("--prepare_only", action="store_true",
                   help="only copy their release to OUT/authors (before a call to a GPU machine that reaches nothing)")
    p.add_argument("--results", default=str(RESULTS), help="the markdown file a section is appended to")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    out = Path(args.out).resolve()
    if args.prepare_only:
        if not args.authors:
            raise SystemExit("--prepare_only needs --authors")
        prepare_authors(Path(args.authors).expanduser(), out / "authors")
        print(f"their release is in {out / 'authors'}")
        return 0
    (out / "logs").mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve() if args.data else out / "data"
    workers = loader_workers(args.num_workers)
    render_data(data, args.size, args.num_train, max(1, min(16, os.cpu_count() or 1)))
    import json
    meta = json.loads((data / "metadata.json").read_text())
    name, n_train = meta["name"], sum(e["partition"] == "train" for e in meta["data"])
    tree = out / "authors"
    if any(r.startswith("theirs") for r in args.runs):
        if not args.authors:
            raise SystemExit("--authors is needed for the runs theirs and theirs_loader")
        prepare_authors(Path(args.authors).expanduser(), tree)
        link_data(tree, data, name)

    epochs_total = args.epochs + 1  # one warm-up epoch
    results = {"_data": str(data)}
    gpu = GpuSampler() if args.device.startswith("cuda") else None
    ours_common = ["--metadata_root", data, "--batch_size", args.batch_size, "--crop_size", "256",
                   "--num_workers", workers, "--device", args.device, "--val_limit", "1", "--lr", "5e-5"]
    try:
        for run in args.runs:
            log = out / "logs" / f"{run}.log"
            if run == "theirs":
                shutil.rmtree(tree / "checkpoints", ignore_errors=True)
                rc = run_logged([sys.executable, "train_hypercut.py", "--dataset_name", name, "--metadata_root",
                                 data / "metadata.json", "--num_epochs", epochs_total + 1, "--val_epoch", 100000,
                                 "--val_limit", 1, "--num_workers", workers, "--batch_size", args.batch_size,
                                 "--lr", "5e-5"], tree, log, args.timeout, their_env(out, args.cpu_shim))
                logs = sorted((tree / "checkpoints").glob("*/*.log"))
                text = logs[-1].read_text() if logs else ""
                if rc != 0 or not logs:
                    results[run] = {"error": f"exit {rc}; see {log}"}
                    continue
                seconds, window = their_timed(text)
            elif run in ("ours_fp32", "ours_amp"):
                run_dir = out / "ours" / run
                shutil.rmtree(run_dir, ignore_errors=True)
                rc = run_logged([sys.executable, str(REPO / "train_hypercut.py"), *ours_common, "--exp_name", run,
                                 "--checkpoints_dir", out / "ours", "--epochs", epochs_total, "--val_epoch",
                                 epochs_total, "--amp", "off" if run == "ours_fp32" else "auto",
                                 "--display_step", "0"], REPO, log, args.timeout)
                if rc != 0:
                    results[run] = {"error": f"exit {rc}; see {log}"}
                    continue
                seconds, window = our_timed((run_dir / "log.txt").read_text())
            else:
                which = run.split("_")[0]
                extra = ([data / "metadata.json"] if which == "theirs" else [*ours_common, "--exp_name", "x"])
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                    [str(tree if which == "theirs" else REPO), os.environ.get("PYTHONPATH", "")])}
                t0 = time.time()
                rc = run_logged([sys.executable, "-c", LOADER_CODE, args.epochs, args.batch_size, workers, which,
                                 *extra], tree if which == "theirs" else REPO, log, args.timeout, env)
                if rc != 0:
                    results[run] = {"error": f"exit {rc}; see {log}"}
                    continue
                seconds = [float(s) for s in re.findall(r"sequences in ([\d.]+) s", log.read_text())]
                window = (t0, time.time())
            rate = n_train * len(seconds) / sum(seconds)
            results[run] = {"seconds": seconds, "rate": rate,
                            "gpu_busy": gpu.mean(window) if gpu is not None and "loader" not in run else None}
            print(f"{run}: {rate:.1f} sequences/s over {len(seconds)} epochs "
                  f"({', '.join(f'{s:.2f}' for s in seconds)} s)", flush=True)
    finally:
        if gpu is not None:
            gpu.stop()

    section = report(results, args, workers, n_train, meta)
    print(section)
    if not args.no_write:
        results_md = Path(args.results)
        results_md.parent.mkdir(parents=True, exist_ok=True)
        head = "" if results_md.exists() else (
            "# A HyperCUT training epoch: the authors' trainer against ours\n\n"
            "From `lab/benchmarks/authors_epoch.py` (how it measures: its docstring). Sequences per second over "
            "whole epochs after a warm-up epoch, both trainers on the same machine and images, one after the other.\n")
        with open(results_md, "a") as f:
            f.write(head + "\n" + section + "\n")
    return 0


def report(results: dict, args, workers: int, n_train: int, meta: dict) -> str:
    import torch
    device = args.device
    card = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else "none"
    from PIL import Image
    with Image.open(Path(results["_data"]) / meta["data"][0]["blur_path"]) as im:
        size = f"{im.height}x{im.width}"
    theirs = results.get("theirs", {}).get("rate")
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M')}: {n_train} training sequences of {size}, batch "
             f"{args.batch_size}, 256x256 crops, {workers} loader workers, {args.epochs} timed epochs",
             "",
             f"- GPU: {card}; CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, "
             f"Python {platform.python_version()}",
             f"- command: `python -m lab.benchmarks.authors_epoch {' '.join(sys.argv[1:])}`",
             "",
             "| run | sequences/s | epoch seconds | GPU busy | vs theirs |",
             "|---|---|---|---|---|"]
    for run in args.runs:
        r = results.get(run, {"error": "not run"})
        if "error" in r:
            lines.append(f"| {run} | failed: {r['error']} | | | |")
            continue
        busy = f"{r['gpu_busy']:.0f}%" if r.get("gpu_busy") is not None else "-"
        ratio = f"{r['rate'] / theirs:.2f}x" if theirs else "-"
        lines.append(f"| {run} | {r['rate']:.1f} | {', '.join(f'{s:.2f}' for s in r['seconds'])} | {busy} | {ratio} |")
    lines += ["", "- theirs: their train_hypercut.py (fp32, DataParallel, workers re-started every epoch); ours_fp32: "
              "`--amp off`; ours_amp: the default `--amp auto` (bf16 on CUDA); *_loader: the loader alone, no model."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Speed, memory and FLOPs of the models, against the code of the tag baseline-r7.

  python -m lab.benchmarks.bench                                  # auto device, writes lab/benchmarks/RESULTS.md
  python -m lab.benchmarks.bench --device cuda --out $OUT/RESULTS.md
  python -m lab.benchmarks.bench --device cpu --quick --threads 2

Per model (one registered Case each): a training step (zero_grad, forward, loss, backward, Adamax
step) and inference (inference_mode), with milliseconds (median of interleaved repeats), samples/s,
peak memory, FLOPs per step (torch.utils.flop_counter) and the share of a same-run matmul's FLOP/s;
on CUDA also under bf16 and fp16 autocast. Where the baseline code is found (--baseline auto: `git
archive baseline-r7`), the same step of the baseline model, with the same weights, is timed in turn
with ours (A, B, A, B, ...), and the table gives the speed-up. Also: HyperCUT's batched scoring
against a loop of one pair at a time (the authors' test loop), and SSIM against scikit-image.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import importlib.util
import io
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from lab.benchmarks.machine import cpu_name
from utils.cli import ArgumentParser

REPO = Path(__file__).resolve().parents[2]

BASELINE_TAG = "baseline-r7"
DEFAULT_OUT = REPO / "lab" / "benchmarks" / "RESULTS.md"


# ---------------------------------------------------------------------------------------------------
# cases: one per model; add a model by registering one more


@dataclass
class Case:
    name: str
    module: str  # dotted module holding the model, loaded from our tree and from the baseline's
    build: Callable  # module -> model (float32, on the CPU)
    train_input: Callable  # (device kind, quick) -> tuple of tensor shapes: (inputs..., )
    infer_input: Callable
    loss: Callable  # (module, model, *tensors) -> scalar loss
    infer: Callable  # (model, *tensors) -> output
    exact_flops: Callable | None = None  # model -> context manager switching exact shortcuts off
    notes: list = field(default_factory=list)


CASES: list[Case] = []


def register(case: Case) -> Case:
    CASES.append(case)
    return case


def _hypercut_loss(mod, model, frames):
    return mod.hypercut_loss(model(frames)[1])[0]


@contextlib.contextmanager
def _hypercut_unfused(model):
    f = model.f_func
    saved = getattr(f, "fuse_stem", False)
    f.fuse_stem = False
    try:
        yield
    finally:
        f.fuse_stem = saved


def _hypercut_shapes(kind, quick):
    if kind == "cuda":
        return ((8, 7, 3, 128, 128),) if quick else ((8, 7, 3, 256, 256),)
    return ((2, 7, 3, 64, 64),) if quick else ((8, 7, 3, 128, 128),)


register(Case(
    "HyperCUT", "models.hypercut", lambda mod: mod.HyperCUT(),
    train_input=_hypercut_shapes, infer_input=_hypercut_shapes,
    loss=_hypercut_loss, infer=lambda model, frames: model(frames),
    exact_flops=_hypercut_unfused,
    notes=["HyperCUT: one sample = one 7-frame sequence (6 pairs through f)."]))


def _frames(out):
    """The predicted frames of a backbone's output: the contract's dict (models/__init__.py), or the
    plain tensor of older trees (the baseline's Jin)."""
    return out["frames"] if isinstance(out, dict) else out


def _jin_loss(mod, model, blur, frames):
    return (_frames(model(blur)) - frames).abs().mean()


def _jin_train_shapes(kind, quick):
    b, s = ((4, 128) if quick else (8, 256)) if kind == "cuda" else ((1, 64) if quick else (1, 128))
    return (b, 3, s, s), (b, 7, 3, s, s)


def _jin_infer_shapes(kind, quick):
    if kind == "cuda":
        return ((1, 3, 640, 960),)
    return ((1, 3, 160, 240),) if quick else ((1, 3, 320, 480),)


for _width in (1.0, 0.25):
    register(Case(
        f"Jin (width {_width:g})", "models.backbones.jin",
        (lambda w: lambda mod: mod.JinBackbone(width_mult=w))(_width),
        train_input=_jin_train_shapes, infer_input=_jin_infer_shapes,
        loss=_jin_loss, infer=lambda model, blur: model(blur),
        notes=[] if _width != 1.0 else ["Jin: one sample = one blurry image -> 7 frames; training loss "
                                        "= L1 against random frames."]))


register(Case(
    "Purohit", "models.backbones.purohit", lambda mod: mod.PurohitBackbone(),
    train_input=_jin_train_shapes, infer_input=_jin_infer_shapes,
    loss=_jin_loss, infer=lambda model, blur: model(blur),
    notes=["Purohit: stage-2 forward (centre network, then the recurrent video decoder) at width 1; "
           "training loss = L1 of the finest scale's frames (its multi-scale loss adds little)."]))


# ---------------------------------------------------------------------------------------------------
# measurement helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def interleaved(fns: dict, device, repeats: int, warmup: int = 1) -> dict:
    """Median seconds of each fn, timed in turn (A, B, A, B, ...) after warm-up runs."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


_M_MMAP_THRESHOLD = -3


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _tune_malloc_for_rss() -> bool:
    """Make glibc return large blocks to the OS on free (mmap from 1 MiB on), so the resident set
    follows what torch holds and its peak measures a step's memory. False where that is not possible."""
    libc = _libc()
    return bool(libc is not None and hasattr(libc, "mallopt") and libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20))


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise, hiding a later peak)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the resident-set high-water mark (Linux >= 4.0)
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak extra memory of one call: torch.cuda.max_memory_allocated on CUDA; on a CPU the peak
    resident set size above the one before the call (/proc: VmHWM after resetting it), or, without
    /proc, the growth of getrusage's maxrss (0 unless the call sets a new process high)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.deferred = device.type != "cuda"  # measured after all timings (see prepare)
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated above the memory allocated before the call"
        elif _reset_peak_rss() and Path("/proc/self/status").exists():
            self.method = ("peak resident set size (VmHWM, reset before each call) above the resident set "
                           "before the call")
        else:
            self.method = "growth of resource.getrusage maxrss (a lower bound: 0 unless a new process peak)"

    def prepare(self) -> None:
        """On a CPU, after every timing: from here on glibc returns freed blocks of 1 MiB and more to the
        OS, so the resident set follows what torch holds. (Fresh pages for every large tensor slow
        allocation-heavy code down, which is why no timing runs after this.)"""
        if self.method.startswith("peak") and _tune_malloc_for_rss():
            self.method += "; measured after all timings, with glibc's mmap threshold at 1 MiB so freed tensors leave it"

    def __call__(self, fn) -> int:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            fn()
            sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) - before
        if self.method.startswith("peak"):
            _trim_heap()
            before = _rss_bytes()
            _reset_peak_rss()
            fn()
            return max(0, _peak_rss_bytes() - before)
        import resource
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_flops_per_s(device, dtype=torch.float32, repeats: int = 5) -> float:
    n = 4096 if device.type == "cuda" else 2048
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    reps = 20 if device.type == "cuda" else 1
    times = [timed(lambda: [a @ b for _ in range(reps)], device) for _ in range(repeats + 1)][1:]
    return 2 * n ** 3 * reps / min(times)


# ---------------------------------------------------------------------------------------------------
# code versions


def extract_baseline(spec: str) -> tuple[Path | None, str]:
    """(folder with the baseline's source, note). spec: 'auto' (git archive of the tag), 'none' or a folder."""
    if spec == "none":
        return None, "baseline column skipped (--baseline none)"
    if spec != "auto":
        path = Path(spec)
        if not (path / "models").is_dir():
            return None, f"baseline column skipped: {path} holds no models/ folder"
        return path, f"baseline: the code in {path}"
    try:
        tar = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE_TAG], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        copy = REPO / f".{BASELINE_TAG}"  # a copy made beforehand where this tree has no git history
        if (copy / "models").is_dir():
            return copy, f"baseline: the copy of {BASELINE_TAG} in {copy.name}/"
        why = e.stderr.decode(errors="replace").strip().splitlines()[-1] if getattr(e, "stderr", None) else str(e)
        why = why.strip() or "git failed"
        return None, (f"baseline column skipped: no git tag {BASELINE_TAG} here ({why}); pass --baseline DIR "
                      f"with a copy of it (`mkdir DIR && git archive {BASELINE_TAG} | tar -x -C DIR`), or "
                      f"make that copy in .{BASELINE_TAG}/")
    folder = Path(tempfile.mkdtemp(prefix="bench_baseline_"))
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        try:
            t.extractall(folder, filter="data")
        except TypeError:  # Python without extraction filters
            t.extractall(folder)
    return folder, f"baseline: git tag {BASELINE_TAG} (extracted to a temporary folder)"


def load_module(name: str, root: Path | None):
    """Our module (root None) or the same file of the baseline tree, imported under another name. The
    baseline file's own imports (models.convention, utils.checkpoint) resolve to our tree's modules."""
    if root is None:
        return importlib.import_module(name)
    path = root / (name.replace(".", "/") + ".py")
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"_baseline_.{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------------------
# runs


def _random(shapes, device, gen):
    return tuple(torch.rand(s, generator=gen).to(device) for s in shapes)


def _train_step(case, mod, model, inputs, opt, amp):
    def step():
        opt.zero_grad(set_to_none=True)
        with amp():
            loss = case.loss(mod, model, *inputs)
        loss.backward()
        opt.step()
    return step


def _infer_step(case, model, inputs, amp):
    def step():
        with torch.inference_mode(), amp():
            case.infer(model, *inputs)
    return step


def _autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def fmt_shape(shapes) -> str:
    return " + ".join("x".join(map(str, s)) for s in shapes)


def measure_memory(pending: list, peak) -> None:
    """Peak MB of each (row, key, step) in pending, which it empties."""
    while pending:
        row, key, fn = pending.pop(0)
        row[key] = peak(fn) / 2**20


def run_case(case, device, args, baseline_root, peak, memory, log) -> list[dict]:
    """Rows of one model; on a CPU its memory measurements are appended to `memory` for later."""
    gen = torch.Generator().manual_seed(0)
    mod = load_module(case.module, None)
    torch.manual_seed(0)
    model = case.build(mod).to(device)
    base_mod = load_module(case.module, baseline_root) if baseline_root else None
    base_model = None
    if base_mod is not None:
        try:
            base_model = case.build(base_mod).to(device)
            base_model.load_state_dict(model.state_dict())
        except Exception as e:  # noqa: BLE001 - an older tree may lack the model or differ in keys
            log(f"  {case.name}: baseline not usable ({type(e).__name__}: {e})")
            base_model = None
    precisions = [("fp32", None)]
    if device.type == "cuda":
        precisions += [("bf16", torch.bfloat16), ("fp16", torch.float16)]
    rows = []
    for mode in ("train", "infer"):
        shapes = (case.train_input if mode == "train" else case.infer_input)(device.type, args.quick)
        inputs = _random(shapes, device, gen)
        samples = shapes[0][0]
        for prec, dtype in precisions:
            amp = _autocast(device, dtype)
            if mode == "train":
                model.train()
                ours = _train_step(case, mod, model, inputs, torch.optim.Adamax(model.parameters(), lr=1e-9), amp)
            else:
                model.eval()
                ours = _infer_step(case, model, inputs, amp)
            fns = {"ours": ours}
            if base_model is not None and dtype is None:
                if mode == "train":
                    base_model.train()
                    fns["base"] = _train_step(case, base_mod, base_model, inputs,
                                              torch.optim.Adamax(base_model.parameters(), lr=1e-9), amp)
                else:
                    base_model.eval()
                    fns["base"] = _infer_step(case, base_model, inputs, amp)
            log(f"  {case.name} {mode} {prec} {fmt_shape(shapes)} ...")
            secs = interleaved(fns, device, args.repeats)
            flops = count_flops(ours)
            exact = flops
            if case.exact_flops is not None:
                with case.exact_flops(model):
                    exact = count_flops(ours)
            row = {"case": case.name, "mode": mode, "precision": prec, "input": fmt_shape(shapes),
                   "ms": secs["ours"] * 1e3, "samples_s": samples / secs["ours"],
                   "gflop": flops / 1e9, "arch_gflop": exact / 1e9,
                   "arch_flop_s": exact / secs["ours"], "run_flop_s": flops / secs["ours"]}
            memory.append((row, "peak_mb", ours))
            if "base" in secs:
                row.update(base_ms=secs["base"] * 1e3, speedup=secs["base"] / secs["ours"])
                memory.append((row, "base_peak_mb", fns["base"]))
            if not peak.deferred:
                measure_memory(memory, peak)
            rows.append(row)
            log(f"    {row['ms']:.1f} ms" + (f", baseline {row['base_ms']:.1f} ms ({row['speedup']:.2f}x)"
                                            if "base_ms" in row else ""))
    if device.type == "cuda":
        del model, base_model
        torch.cuda.empty_cache()
    return rows


def run_scoring(device, args, baseline_root, log) -> list[dict]:
    """HyperCUT scores of B sequences: our batched call (test_hypercut.py) against one pair per call
    (the authors' test loop, batch 1), both with our model; and the baseline's batched call."""
    mod = load_module("models.hypercut", None)
    torch.manual_seed(0)
    model = mod.HyperCUT().to(device).eval()
    (shape,) = _hypercut_shapes(device.type, args.quick)
    frames = torch.rand(shape, generator=torch.Generator().manual_seed(1)).to(device)
    net = model.to_network(frames)
    pairs = mod.sequence_pairs(shape[1])

    def batched():
        with torch.inference_mode():
            model.pair_scores_network(net)

    def loop():
        with torch.inference_mode():
            for b in range(net.shape[0]):
                for i, j in pairs:
                    model.score(model.embed_pair(net[b:b + 1, i], net[b:b + 1, j]))

    fns = {"batched": batched, "loop": loop}
    base_mod = load_module("models.hypercut", baseline_root) if baseline_root else None
    if base_mod is not None:
        base = base_mod.HyperCUT().to(device).eval()
        base.load_state_dict(model.state_dict())

        def base_batched():
            with torch.inference_mode():
                base.pair_scores_network(net)
        fns["baseline batched"] = base_batched
    log(f"  HyperCUT scoring {fmt_shape([shape])} ...")
    secs = interleaved(fns, device, args.repeats)
    return [{"what": k, "input": fmt_shape([shape]), "ms": v * 1e3, "vs_loop": secs["loop"] / v} for k, v in secs.items()]


def run_ssim(device, args, log) -> list[dict]:
    """utils.metrics.image.ssim on the device against scikit-image's structural_similarity, image by image on
    the CPU (Gaussian weights, sigma 1.5, data range 255), on the same frames; also checks that they agree to 1e-4."""
    import numpy as np
    from skimage.metrics import structural_similarity

    from utils.metrics.image import ssim
    sizes = [(2, 7, 128, 128), (1, 7, 360, 640)] if args.quick else [(8, 7, 128, 128), (1, 7, 720, 1280)]
    rows = []
    gen = torch.Generator().manual_seed(2)
    for b, t, h, w in sizes:
        gt = torch.rand(b, t, 3, h, w, generator=gen)
        pred = (gt + 0.1 * torch.randn(gt.shape, generator=gen)).clamp(0, 1)
        a = (pred.reshape(-1, 3, h, w).double() * 255).permute(0, 2, 3, 1).numpy()
        c = (gt.reshape(-1, 3, h, w).double() * 255).permute(0, 2, 3, 1).numpy()
        dp, dg = pred.to(device), gt.to(device)

        def ours():
            return ssim(dp, dg)

        def skimage():
            return np.array([structural_similarity(a[i], c[i], data_range=255, channel_axis=-1, gaussian_weights=True,
                                                   sigma=1.5, use_sample_covariance=False) for i in range(len(a))])

        log(f"  SSIM {b}x{t} frames of {h}x{w} ...")
        secs = interleaved({"ours": ours, "skimage": skimage}, device, 1 if args.quick else 3)
        dev = float(np.abs(ours().double().cpu().numpy().reshape(-1) - skimage()).max())
        rows.append({"frames": f"{b}x{t} of {h}x{w}", "ours_ms": secs["ours"] * 1e3,
                     "skimage_ms": secs["skimage"] * 1e3, "speedup": secs["skimage"] / secs["ours"], "max_dev": dev})
    return rows


# ---------------------------------------------------------------------------------------------------
# report


def machine(device) -> list[str]:
    lines = [f"- CPU: {cpu_name()}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads",
             f"- torch {torch.__version__}, Python {platform.python_version()}"]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, "
                     f"cuDNN {torch.backends.cudnn.version()}, TF32 in convolutions "
                     f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}, in matmul "
                     f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    else:
        lines.append("- GPU: none used")
    return lines


def load_average() -> str:
    try:
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def render(args, device, rows, scoring, ssim_rows, matmul, notes, peak_method, load_start, wall) -> str:
    cmd = "python -m lab.benchmarks.bench" + ("" if not args.argv else " " + shlex.join(args.argv))
    out = ["# Benchmark results", "", f"Command: `{cmd}`", "",
           f"Date: {time.strftime('%Y-%m-%d %H:%M')}; total wall time {wall:.0f} s; device {device}", "",
           *machine(device),
           f"- load average (1, 5, 15 min) at start: {load_start}; at end: {load_average()}", "",
           "Same-run matmul reference: " + ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in matmul.items())
           + (" (float32 matmul with torch's default precision; cuDNN convolutions may use TF32, so a share "
              "above 100% is possible)" if device.type == "cuda" else ""), "",
           "## Models", "",
           "| model | step | precision | input | ms | samples/s | peak MB | GFLOP run | GFLOP arch | "
           "% matmul (arch) | % matmul (run) | baseline ms | baseline peak MB | speed-up |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = (f"{r['base_ms']:.1f} | {r['base_peak_mb']:.0f} | {r['speedup']:.2f}x" if "base_ms" in r else "- | - | -")
        out.append(f"| {r['case']} | {r['mode']} | {r['precision']} | {r['input']} | {r['ms']:.1f} | "
                   f"{r['samples_s']:.2f} | {r['peak_mb']:.0f} | {r['gflop']:.1f} | {r['arch_gflop']:.1f} | "
                   f"{100 * r['arch_flop_s'] / matmul[r['precision']]:.0f}% | "
                   f"{100 * r['run_flop_s'] / matmul[r['precision']]:.0f}% | {base} |")
    out += ["", "- train = zero_grad, forward, loss, backward, Adamax step; infer = forward under inference_mode.",
            "- GFLOP run: counted by torch.utils.flop_counter on the step as it runs. GFLOP arch: the same with "
            "exact shortcuts switched off (HyperCUT's fused stem), i.e. the architecture's layer-by-layer FLOPs; "
            "% matmul (arch) = arch FLOPs / time / the same-precision matmul FLOP/s.",
            f"- peak MB: {peak_method}.",
            "- ms: median over the repeats; ours and the baseline timed in turn in one process (A, B, A, B, ...)."]
    out += [f"- {n}" for n in notes]
    if scoring:
        out += ["", "## HyperCUT scoring: batched against one pair per call", "",
                "| scoring | input | ms | speed-up over the batch-1 loop |", "|---|---|---|---|"]
        out += [f"| {r['what']} | {r['input']} | {r['ms']:.1f} | {r['vs_loop']:.2f}x |" for r in scoring]
        out += ["", "- loop: for each sequence, for each of the 6 pairs, f(g(pair)) and h at batch 1 "
                "(the authors' test loop), with our model."]
    if ssim_rows:
        out += ["", "## SSIM against scikit-image", "",
                "| frames | ours ms | scikit-image ms | speed-up | max deviation |", "|---|---|---|---|---|"]
        out += [f"| {r['frames']} | {r['ours_ms']:.0f} | {r['skimage_ms']:.0f} | {r['speedup']:.2f}x | "
                f"{r['max_dev']:.1e} |" for r in ssim_rows]
        out += ["", f"- ours: utils.metrics.image.ssim on {device}; scikit-image: structural_similarity image by image on "
                "the CPU (data_range 255, channel_axis, gaussian_weights, sigma 1.5, population covariance)."]
    return "\n".join(out) + "\n"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Speed, memory and FLOPs of every model (a training step and inference), against the code of "
                    f"the tag {BASELINE_TAG} on the same weights; HyperCUT scoring and SSIM beside their references.",
        epilog="examples:\n"
               "  python -m lab.benchmarks.bench                       # auto device, writes lab/benchmarks/RESULTS.md\n"
               "  python -m lab.benchmarks.bench --device cpu --quick --threads 2 --out /tmp/bench.md")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="small inputs and few repeats (a smoke run)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="where to write the markdown results (default: lab/benchmarks/RESULTS.md)")
    p.add_argument("--baseline", default="auto",
                   help=f"'auto' (git archive of tag {BASELINE_TAG}), 'none', or a folder holding that code")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per step (default: 5, CUDA 10, quick 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--cases", nargs="*", default=None,
                   help=f"models to run (default: all, {' '.join(c.name for c in CASES)})")
    p.add_argument("--no_extras", action="store_true", help="skip the scoring and SSIM comparisons")
    return p


def main(argv=None) -> int:
    p = build_parser()
    flags = p.parse_args(argv)
    # the settings: the parsed flags with the command line and the automatic repeats filled in (a new Namespace)
    args = argparse.Namespace(**vars(flags), argv=list(sys.argv[1:] if argv is None else argv))
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    if flags.repeats is None:
        args.repeats = 3 if flags.quick else (10 if device.type == "cuda" else 5)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as the training scripts do
    cases = CASES if args.cases is None else [c for c in CASES if c.name in args.cases]
    start, load_start = time.perf_counter(), load_average()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    baseline_root, baseline_note = extract_baseline(args.baseline)
    log(baseline_note)
    peak = PeakMemory(device)
    matmul = {"fp32": matmul_flops_per_s(device)}
    if device.type == "cuda":
        matmul["bf16"] = matmul_flops_per_s(device, torch.bfloat16)
        matmul["fp16"] = matmul_flops_per_s(device, torch.float16)
    rows, memory = [], []
    for case in cases:
        rows += run_case(case, device, args, baseline_root, peak, memory, log)
    scoring = ssim_rows = []
    if not args.no_extras:
        scoring = run_scoring(device, args, baseline_root, log)
        ssim_rows = run_ssim(device, args, log)
    matmul_end = matmul_flops_per_s(device)
    matmul["fp32"] = max(matmul["fp32"], matmul_end)  # the better of start and end: what the machine could do
    if memory:
        log("  peak memory ...")
        peak.prepare()
        measure_memory(memory, peak)
    notes = [baseline_note] + [n for c in cases for n in c.notes]
    text = render(args, device, rows, scoring, ssim_rows, matmul, notes, peak.method, load_start,
                  time.perf_counter() - start)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

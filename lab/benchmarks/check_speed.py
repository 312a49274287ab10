"""Time of the pre-training file check (datasets.metadata.check_files) on a whole dataset: every image
decoded in full (the default; one thread and the thread pool) and headers only (--quick_check).

  python prepare_dataset.py synthetic --out data/synthetic      # the embedded dataset: 500 x 8 images
  python -m lab.benchmarks.check_speed --data data/synthetic
  python -m lab.benchmarks.check_speed --data data/synthetic --no_write

Wall and CPU time are both reported, with the load average: on a shared machine the wall time is the
CPU time divided by the share of the cores this process gets.
"""
from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path

from datasets.metadata import check_files, check_workers, metadata_file, parse_entries, read_metadata
from utils.cli import ArgumentParser

REPO = Path(__file__).resolve().parents[2]

RESULTS = REPO / "lab" / "benchmarks" / "results" / "check_speed.md"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Time of the pre-training image check on a whole dataset: every image decoded (one thread, the "
                    "thread pool) and headers only; appends to lab/benchmarks/results/check_speed.md.",
        epilog="example:\n  python -m lab.benchmarks.check_speed --data data/synthetic --no_write")
    p.add_argument("--data", default="data/synthetic", help="dataset root")
    p.add_argument("--no_write", action="store_true", help="print only")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    meta = read_metadata(args.data)
    root = metadata_file(args.data).parent
    images = sum(1 + meta.get("frame_per_seq", 7) for _ in meta["data"])
    rows = []
    for label, decode, workers in (("full decode, 1 thread", True, 1),
                                   (f"full decode, {check_workers()} threads (default)", True, None),
                                   ("headers only (--quick_check)", False, None)):
        entries = parse_entries(meta, root)
        load = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), cpu_seconds()
        check_files(entries, decode=decode, workers=workers)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        rows.append(f"| {label} | {wall:.2f} | {cpu:.2f} | {load:.1f} |")
        print(rows[-1], flush=True)
    section = "\n".join([
        f"## {time.strftime('%Y-%m-%d %H:%M')}: {len(meta['data'])} sequences, {images} images ({args.data})",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "", "| check | wall s | CPU s | load average (1 min) before |", "|---|---|---|---|", *rows, ""])
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else "# Pre-training file check\n"
        RESULTS.write_text(old.rstrip("\n") + "\n\n" + section)
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()

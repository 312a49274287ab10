"""The report of the time-bounded full-width budget (lab/experiments/order_matrix.py --budgets wide) from the
files a device run brought back: test_blur2vid.py results (.json, or .csv where only that came back), the
runs' log.txt, and the blur-as-every-frame baseline. Writes a markdown table, a JSON summary, the per-frame
pPSNR plot and the training-loss curves (the naive loss, or the hypercut loss's base term, per epoch).

  python -m lab.experiments.wide_report --results lab/results/wide_h100 --out lab/results/wide_h100.md \
      --figures lab/figures --prefix h100_wide --card "NVIDIA H100 80GB HBM3"
"""
from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

from utils.cli import ArgumentParser

ROWS = [("order_inv", "order_inv (the paper's baseline)"), ("naive", "naive, stored (random) order"),
        ("oracle", "naive on the oracle order (ceiling)"), ("naive_hc_ext", "naive on our HyperCUT's order"),
        ("hcloss_ext_a0", "hypercut loss, our HyperCUT, alpha 0"), ("pit", "pit (min over both orders)"),
        ("naive_hc_paper", "naive on the paper HyperCUT's order"),
        ("hcloss_paper_a0", "hypercut loss, paper's HyperCUT, alpha 0"),
        ("hcloss_paper_a0.02", "hypercut loss, paper's HyperCUT, alpha 0.02"),
        ("hcloss_paper_a0.2", "hypercut loss, paper's HyperCUT, alpha 0.2 (the paper's)"),
        ("hcloss_ext_a0.02", "hypercut loss, our HyperCUT, alpha 0.02"),
        ("hcloss_ext_a0.2", "hypercut loss, our HyperCUT, alpha 0.2")]
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+ \| step (\d+) \| total ([\d.]+)(?: \| base ([\d.]+))?")


def read_result(folder: Path, row: str) -> dict | None:
    """pPSNR/pSSIM per frame and hit of one run: its test_blur2vid JSON, else the CSV it also wrote."""
    js, cs = folder / f"jin_wide_{row}.json", folder / f"jin_wide_{row}.csv"
    if js.exists():
        r = json.loads(js.read_text())
        return {"pPSNR": r["pPSNR"], "pSSIM": r["pSSIM"], "hit": r.get("hit")}
    if cs.exists():
        with open(cs, newline="") as fh:
            table = {line[0]: [float(v) for v in line[1:-1]] for line in csv.reader(fh)
                     if line and line[0] in ("pPSNR", "pSSIM")}
        return {"pPSNR": table["pPSNR"], "pSSIM": table["pSSIM"], "hit": None}
    return None


def read_log(path: Path) -> dict:
    """Per-epoch (epoch, step, image loss) of a train_blur2vid log.txt; the image loss is the hypercut
    loss's base term when there is one (with alpha 0 it equals the total)."""
    epochs, steps, loss = [], [], []
    if path.exists():
        for line in path.read_text().splitlines():
            m = EPOCH_LINE.search(line)
            if m and "val epoch" not in line:
                epochs.append(int(m[1]))
                steps.append(int(m[2]))
                loss.append(float(m[4] if m[4] is not None else m[3]))
    return {"epoch": epochs, "step": steps, "loss": loss}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="The report of a full-width (order_matrix --budgets wide) device run from its returned files: "
                    "a markdown table, a JSON summary, the per-frame pPSNR plot and the training-loss curves.",
        epilog="example:\n"
               "  python -m lab.experiments.wide_report --results lab/results/wide_h100 --out /tmp/wide_h100.md "
               "--figures /tmp/figs --prefix h100_wide")
    p.add_argument("--results", required=True,
                   help="folder with jin_wide_<row>.json/.csv, *_log.txt, blur.json (and, optional, pair_mean.json "
                        "and tiled/jin_wide_<row>.json: test_blur2vid.py --tile crop)")
    p.add_argument("--out", required=True, help="markdown report to write (a .json beside it)")
    p.add_argument("--figures", required=True, help="folder for the two PNGs")
    p.add_argument("--prefix", default="wide", help="file name prefix of the PNGs")
    p.add_argument("--card", default="", help="the GPU's name, for the titles (default: none)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from utils.checkpoint import atomic_write_text
    from utils.figures import curves_plot, per_frame_plot
    from utils.order_eval import outer_frames
    from utils.report import markdown_table, write_json
    folder, out, figs = Path(args.results), Path(args.out), Path(args.figures)
    blur_path = folder / "blur.json"
    if not blur_path.exists():
        raise SystemExit(f"error: {blur_path} is missing (utils.order_eval.blur_baseline on the test split)")
    blur = json.loads(blur_path.read_text())
    summary, table, series, curves = {}, [], {"blur as every frame": blur["pPSNR"]}, {}
    def f(v, digits):
        return "-" if v is None else f"{v:.{digits}f}"

    table.append(["blur as every frame (no network)", "-", f(outer_frames(blur["pPSNR"]), 2), "-",
                  f(blur["pPSNR"][3], 2), f(sum(blur["pPSNR"]) / 7, 2), f(sum(blur["pSSIM"]) / 7, 3), "-", "-"])
    pair_path = folder / "pair_mean.json"  # utils.order_eval.pair_mean_baseline, when the call computed it
    pair_mean = json.loads(pair_path.read_text()) if pair_path.exists() else None
    if pair_mean is not None:
        table.append(["mean of each true pair (the random order's best, L2)", "-",
                      f(outer_frames(pair_mean["pPSNR"]), 2), "-", "(exact)", "-", "-", "-", "-"])
    tiled_folder = folder / "tiled"  # the same models predicting in windows of their crop size (--tile crop)
    for row, label in ROWS:
        r = read_result(folder, row)
        if r is None:
            continue
        t = read_result(tiled_folder, row)
        log = read_log(folder / f"jin_wide_{row}_log.txt")
        f17 = outer_frames(r["pPSNR"])
        summary[row] = {**r, "label": label, "pPSNR_1_7": f17, "pPSNR_mean": sum(r["pPSNR"]) / len(r["pPSNR"]),
                        "pSSIM_mean": sum(r["pSSIM"]) / len(r["pSSIM"]), "log": log,
                        "tiled": None if t is None else {"pPSNR": t["pPSNR"], "pSSIM": t["pSSIM"],
                                                         "pPSNR_1_7": outer_frames(t["pPSNR"])}}
        last = f"{log['epoch'][-1]} / {log['step'][-1]}" if log["epoch"] else "(no log)"
        table.append([label, last, f(f17, 2), f(t and outer_frames(t["pPSNR"]), 2), f(r["pPSNR"][3], 2), f(summary[row]["pPSNR_mean"], 2),
                      f(summary[row]["pSSIM_mean"], 3), f(r["hit"], 2), f(log["loss"][-1] if log["loss"] else None, 4)])
        series[label] = r["pPSNR"]
        if log["step"] and row != "order_inv":  # order_inv's loss is over pairs: another scale
            curves[label] = (log["step"][1:], log["loss"][1:])  # from epoch 2: epoch 1's mean dwarfs the rest
    card = f" ({args.card})" if args.card else ""
    ends = sorted(s["log"]["step"][-1] for s in summary.values() if s["log"]["step"])
    steps = "" if not ends else f", {ends[0]:,} steps" if ends[0] == ends[-1] else f", {ends[0]:,}-{ends[-1]:,} steps"
    per_frame = per_frame_plot(series, figs / f"{args.prefix}_per_frame.png",
                               title=f"pPSNR per frame, test split, full-width Jin{steps}{card}")
    loss = curves_plot(curves, figs / f"{args.prefix}_train_loss.png", "step (batch 16, 64x64 crops)",
                       "training L1 (epoch mean)", title=f"image loss per epoch, from epoch 2{card}")
    lines = markdown_table(["run", "epochs / steps", "pPSNR 1/7", "1/7 in crop tiles", "pPSNR 4", "pPSNR mean", "pSSIM mean",
                            "hit (pred)", "last epoch's loss"], table)
    def gains_of(get):
        ref = get(summary.get("naive")), get(summary.get("order_inv"))
        return {row: {"over_random": None if ref[0] is None or get(s) is None else get(s) - ref[0],
                      "over_order_inv": None if ref[1] is None or get(s) is None else get(s) - ref[1]}
                for row, s in summary.items()}
    gains = gains_of(lambda s: s and s["pPSNR_1_7"])
    tiled_gains = gains_of(lambda s: s and s["tiled"] and s["tiled"]["pPSNR_1_7"])
    write_json(out.with_suffix(".json"), {"card": args.card, "blur": blur, "pair_mean": pair_mean, "runs": summary,
                                          "gains_1_7": gains, "gains_1_7_tiled": tiled_gains})

    def gain_line(title, gains):
        return title + "; ".join(f"{row}: " + ", ".join(f"{v:+.2f} over {k[5:].replace('_', ' ')}"
                                                          for k, v in g.items() if v is not None)
                                 for row, g in gains.items() if any(v is not None for v in g.values()))
    tiled_line = [gain_line("The same, predicting in windows of the training crop size: ", tiled_gains), ""] \
        if any(s["tiled"] for s in summary.values()) else []
    atomic_write_text(out, "\n".join([f"# Full-width Jin, time-bounded budget{card}", "", lines, "",
                                      gain_line("Gain in pPSNR on frames 1/7 (dB): ", gains), ""] + tiled_line
                                     + [f"Figures: {per_frame}, {loss}", ""]))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

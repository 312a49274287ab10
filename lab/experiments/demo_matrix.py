"""The order matrix on the demo's dead-leaves world, at the demo's budget and a longer one.

  python run_demo.py                                     # first: the data, both HyperCUTs, their orders
  python -m lab.experiments.demo_matrix --demo runs/demo --out runs/demo_matrix
  python -m lab.experiments.demo_matrix --demo runs/demo --out runs/demo_matrix --budgets demo

Rows: order_inv; the naive loss on the stored (random) order, the oracle's, the paper HyperCUT's and ours;
the hypercut loss (alpha 0.2, the paper's, and 0.02) with each HyperCUT; pit. Every row is a narrow Jin
started from the same shipped middle network (frozen), trained as run_demo.py trains its runs, for the
demo's epochs ("demo") or twice as many ("long"); rows the demo already trained are read from it.
Also runs the direction probe (lab/probe_order.py) on every order. Writes OUT/matrix.json and OUT/matrix.md:
per-frame pPSNR and pSSIM on the test split, frames 1/7, frame 4, which order each network's predictions
follow, and the references (blur, pair mean, oracle warp, centre warp).
"""
from __future__ import annotations

import sys
from pathlib import Path

import run_demo
from run_demo import ORDER_FILES, SETTINGS, entry, read_json, run_chains, run_stage, train_args
from utils.cli import ArgumentParser, run_main
from utils.report import markdown_table, write_json

# (name, loss flags, order, HyperCUT used by the loss or to score the predictions)
ROWS = [("order_inv", ["--loss_type", "order_inv"], "stored", "ext"),
        ("naive_random", ["--loss_type", "naive"], "stored", "ext"),
        ("naive_oracle", ["--loss_type", "naive"], "oracle", "ext"),
        ("naive_hypercut", ["--loss_type", "naive"], "paper", "paper"),
        ("naive_hypercut_ext", ["--loss_type", "naive"], "ext", "ext"),
        ("hypercut_a0.2", ["--loss_type", "hypercut", "--alpha", "0.2"], "paper", "paper"),
        ("hypercut_a0.02", ["--loss_type", "hypercut", "--alpha", "0.02"], "paper", "paper"),
        ("hypercut_ext_a0.2", ["--loss_type", "hypercut", "--alpha", "0.2"], "ext", "ext"),
        ("hypercut_ext_a0.02", ["--loss_type", "hypercut", "--alpha", "0.02"], "ext", "ext"),
        ("pit", ["--loss_type", "pit"], "stored", "ext")]
BUDGETS = {"demo": 1, "long": 2}  # times the demo's epochs


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="The order matrix on the demo's world (after run_demo.py).",
                       epilog="example:\n  python -m lab.experiments.demo_matrix --demo runs/demo --out runs/demo_matrix")
    p.add_argument("--demo", default="runs/demo", help="the output folder of a finished run_demo.py")
    p.add_argument("--data", default=None, help="its dataset (default: the full config's, data/deadleaves)")
    p.add_argument("--out", default="runs/demo_matrix", help="output folder")
    p.add_argument("--budgets", nargs="+", default=["demo", "long"], choices=sorted(BUDGETS),
                   help="demo: the demo's epochs; long: twice as many")
    p.add_argument("--rows", nargs="+", default=None, help="only these rows (default: all)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--num_workers", type=int, default=1, help="data loader workers of every stage")
    p.add_argument("--jobs", type=int, default=None, help="trainings at once (default: one per CPU core)")
    return p


def jin_flags(epochs: int) -> list:
    """The demo's Jin flags with its epochs and schedule scaled (decay at 5/6 of the run)."""
    flags = list(SETTINGS["full"]["jin"])
    flags = [str(run_demo.REPO / a) if a == run_demo.CENTRE else a for a in flags]
    flags[flags.index("--epochs") + 1] = str(epochs)
    flags[flags.index("--decay_type") + 1] = f"step_{max(1, round(epochs * 5 / 6))}"
    flags[flags.index("--val_epoch") + 1] = str(epochs)
    return flags


def main_body(args) -> int:
    demo, out = Path(args.demo).resolve(), Path(args.out).resolve()
    data = Path(args.data).resolve() if args.data else run_demo.REPO / SETTINGS["full"]["data"]
    hc = {"paper": demo / "checkpoints" / "hypercut" / "models" / f"{SETTINGS['full']['hypercut_epochs']:04d}.pth",
          "ext": demo / "checkpoints" / "hypercut_ext" / "models" / f"{SETTINGS['full']['hypercut_ext_epochs']:04d}.pth"}
    for path in list(hc.values()) + [data / f for f in ORDER_FILES.values()]:
        if not path.exists():
            raise run_demo.StageFailed(f"{path} is missing: run python run_demo.py first (or pass --demo / --data)")
    out.mkdir(parents=True, exist_ok=True)
    common = ["--device", args.device, "--num_workers", str(args.num_workers)]
    rows = [r for r in ROWS if args.rows is None or r[0] in args.rows]
    result = {"data": str(data), "references": read_json(demo / "references.json")["test"], "budgets": {}}
    with open(out / "matrix_log.txt", "a") as log:
        probe_json = out / "probe.json"
        if not probe_json.exists():
            run_stage("probe", "lab.probe_order", ["--metadata_root", data, "--hypercut_path", hc["paper"], hc["ext"],
                                                  "--crop_size", "40", "--output_json", probe_json] + common[:2], log)
        result["probe"] = read_json(probe_json)
        import os
        jobs = args.jobs or min(os.cpu_count() or 1, len(rows))
        threads = max(1, (os.cpu_count() or 1) // jobs)
        plan = []  # (budget, epochs, name, order, hc_key, run_dir, result json, trained here)
        chains = {}
        for budget in args.budgets:
            epochs = SETTINGS["full"]["jin_epochs"] * BUDGETS[budget]
            for name, loss, order, hc_key in rows:
                in_demo = budget == "demo" and (demo / "checkpoints" / f"jin_{name}").is_dir()
                ckpts = (demo / "checkpoints") if in_demo else out / f"checkpoints_{budget}"
                run_dir = ckpts / f"jin_{name}"
                res_json = out / f"{budget}_{name}_test.json"
                stages = []
                extra = train_args(run_dir, epochs)
                if extra is not None:
                    stages.append((f"train {name} ({budget})", "train_blur2vid.py",
                                   ["--metadata_root", data / ORDER_FILES[order], "--exp_name", run_dir.name,
                                    "--checkpoints_dir", ckpts, "--backbone", "Jin"] + loss
                                   + (["--hypercut_path", hc[hc_key]] if "hypercut" in loss else [])
                                   + jin_flags(epochs) + common + extra))
                if not res_json.exists():
                    stages.append((f"test {name} ({budget})", "test_blur2vid.py",
                                   ["--metadata_root", data, "--pretrained_path", run_dir / "models" / f"{epochs:04d}.pth",
                                    "--hypercut_path", hc[hc_key], "--output_json", res_json, "--no_lpips"] + common))
                chains[f"{budget}_{name}"] = stages
                plan.append((budget, epochs, name, order, hc_key, res_json))
        run_chains(chains, jobs, threads, out / "logs", log)
        for budget, epochs, name, order, hc_key, res_json in plan:
            res = read_json(res_json)
            part = result["budgets"].setdefault(budget, {"epochs": epochs, "runs": {}})
            part["runs"][name] = {**entry(res), "order": order, "hypercut": hc_key,
                                  "order_of_predictions": res.get("order_of_predictions")}
    write_json(out / "matrix.json", result)
    (out / "matrix.md").write_text(report(result))
    print(report(result))
    return 0


def report(result: dict) -> str:
    ref = result["references"]
    lines = ["# The order matrix on the dead-leaves world", "",
             "pPSNR (dB) on the test split, whole images; every network a narrow Jin from the same frozen middle network.", ""]
    rows = [[f"reference: {k}", None] + [entry(v)[m] for m in ("frames_1_7", "frame_4", "mean")] + [entry(v)["pSSIM"]["frames_1_7"], None]
            for k, v in ref.items()]
    for budget, part in result["budgets"].items():
        for name, r in part["runs"].items():
            follows = (r.get("order_of_predictions") or {}).get("follows_oracle")
            rows.append([name, f"{budget} ({part['epochs']} ep)", r["frames_1_7"], r["frame_4"], r["mean"],
                         r["pSSIM"]["frames_1_7"], follows])
    lines.append(markdown_table(["", "budget", "frames 1 & 7", "frame 4", "mean", "pSSIM 1 & 7",
                                 "predictions follow the oracle"], rows, 2))
    probe = result.get("probe")
    if probe:
        lines += ["", "Direction probe (lab/probe_order.py): held-out share of crops whose order a small CNN reads from the blur:", "",
                  markdown_table(["steps"] + probe["sources"], [[s] + a for s, a in zip(probe["steps"], probe["agreement"])], 2)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    return run_main(build_parser, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())

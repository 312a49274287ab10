"""The whole HyperCUT pipeline on a synthetic world where networks visibly learn, in one command.

Renders a dead-leaves world (a new texture per sequence, one global translation each), trains the paper's
HyperCUT and ours, orders the data with each (and by the recorded motion: the oracle), trains a narrow Jin
once per order from the same start, and scores every network beside the references that need no network.
"""
from __future__ import annotations

import utils.threads  # noqa: F401  (first: OpenMP's wait policy, before torch loads)

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from recipes import recipe
from utils.cli import ArgumentParser, at_least, check_flags, run_main
from utils.errors import FlagError, UserError

REPO = Path(__file__).resolve().parent
# The order-free middle network the demo starts from (trained by the command in weights/README.md).
CENTRE = "weights/jin_centre_w025_deadleaves.pth"

WORLD = ["--scene", "deadleaves", "--motion", "translation", "--travel", "6", "12"]
# Deblurring runs: (name, loss flags, order): "stored" is the rendering's own direction (uniformly random),
# "oracle" the recorded motion's (generate_order.py --oracle), "paper" / "ext" the order of the paper's
# HyperCUT / of ours.
RUNS = [("order_inv", ["--loss_type", "order_inv"], "stored"),
        ("naive_random", ["--loss_type", "naive"], "stored"),
        ("naive_oracle", ["--loss_type", "naive"], "oracle"),
        ("naive_hypercut", ["--loss_type", "naive"], "paper"),
        ("naive_hypercut_ext", ["--loss_type", "naive"], "ext")]
ORDER_FILES = {"stored": "metadata.json", "oracle": "metadata_oracle.json", "paper": "metadata_hypercut.json",
               "ext": "metadata_hypercut_ext.json"}
# The HyperCUTs and the narrow Jin: recipes.py, with each config's crops and epochs.
SETTINGS = {
    "full": {
        "data": "data/deadleaves", "fresh": "data/deadleaves_fresh", "out": "runs/demo",
        "dataset": WORLD + ["--size", "60", "--num_train", "1000", "--num_val", "32", "--num_test", "100", "--seed", "0"],
        "fresh_dataset": WORLD + ["--size", "60", "--num_train", "0", "--num_val", "0", "--num_test", "100",
                                  "--seed", "1"],
        "hypercut": ["--crop_size", "48", *recipe("hypercut_paper"), "--epochs", "3", "--val_epoch", "3"],
        "hypercut_epochs": 3,
        "hypercut_ext": recipe("hypercut_ext") + ["--crop_size", "60", "--subcrop_size", "40", "--subcrops", "4",
                                                  "--epochs", "2", "--val_epoch", "2"],
        "hypercut_ext_epochs": 2,
        "jin": recipe("jin_demo") + ["--crop_size", "40", "--batch_size", "8", "--epochs", "7", "--decay_type",
                                     "step_6", "--gamma", "0.3", "--val_epoch", "7", "--display_step", "125",
                                     "--center_path", CENTRE],
        "jin_epochs": 7,
        "runs": RUNS, "purohit": None, "figures": [0, 1, 2],
    },
    "quick": {
        "data": "runs/demo_quick/data", "fresh": "runs/demo_quick/data_fresh", "out": "runs/demo_quick",
        "dataset": WORLD + ["--size", "40", "--num_train", "16", "--num_val", "4", "--num_test", "4", "--seed", "0"],
        "fresh_dataset": WORLD + ["--size", "40", "--num_train", "0", "--num_val", "0", "--num_test", "4",
                                  "--seed", "1"],
        "hypercut": ["--crop_size", "40", *recipe("hypercut_paper", batch_size=4), "--epochs", "1",
                     "--val_epoch", "1"],
        "hypercut_epochs": 1,
        "hypercut_ext": recipe("hypercut_ext", batch_size=4) + ["--crop_size", "40", "--subcrop_size", "36",
                                                                "--subcrops", "2", "--epochs", "1", "--val_epoch", "1"],
        "hypercut_ext_epochs": 1,
        "jin": recipe("jin_demo") + ["--crop_size", "40", "--batch_size", "4", "--epochs", "1", "--val_epoch", "1",
                                     "--display_step", "2", "--center_path", CENTRE],
        "jin_epochs": 1,
        # every loss path runs: the paper's hypercut loss too
        "runs": RUNS + [("hypercut", ["--loss_type", "hypercut"], "paper")],
        "purohit": {"flags": ["--width_mult", "0.125", "--crop_size", "40", "--batch_size", "4", "--val_epoch", "1",
                              "--display_step", "0"], "epochs": (1, 1)},
        "figures": [0],
    },
    "gpu": {
        "data": "data/deadleaves_120", "fresh": "data/deadleaves_120_fresh", "out": "runs/demo_gpu",
        "dataset": WORLD[:-2] + ["--travel", "12", "24", "--size", "120", "--num_train", "4000", "--num_val", "64",
                                 "--num_test", "200", "--seed", "0", "--workers", "8"],
        "fresh_dataset": WORLD[:-2] + ["--travel", "12", "24", "--size", "120", "--num_train", "0", "--num_val", "0",
                                       "--num_test", "200", "--seed", "1", "--workers", "8"],
        "hypercut": ["--crop_size", "96", *recipe("hypercut_paper"), "--epochs", "6", "--val_epoch", "3"],
        "hypercut_epochs": 6,
        "hypercut_ext": recipe("hypercut_ext") + ["--crop_size", "120", "--subcrop_size", "80", "--subcrops", "4",
                                                  "--epochs", "4", "--val_epoch", "2"],
        "hypercut_ext_epochs": 4,
        "jin": ["--width_mult", "1.0", "--batch_size", "8", "--optimizer", "ADAM", "--lr", "1e-3", "--crop_size", "80",
                "--epochs", "20", "--decay_type", "step_15", "--gamma", "0.3", "--val_epoch", "10", "--display_step", "200"],
        "jin_epochs": 20,
        "runs": RUNS, "purohit": None, "figures": [0, 1, 2],
    },
}
INFERENCE_IMAGES = 4
TEST_BATCH = 8  # sequences per evaluation batch: the same figures as one by one, in about half the time


class StageFailed(UserError):
    pass


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="The whole pipeline on the dead-leaves world: data, both HyperCUTs, their orders, a narrow Jin per "
                    "order, evaluation; writes runs/demo/summary.md. Run it again to continue.",
        epilog="examples:\n  python run_demo.py              # about 27 min on 2 CPU cores\n"
               "  python run_demo.py --quick      # every stage on a tiny dataset, a few minutes\n"
               "  python run_demo.py --config gpu --device cuda --num_workers 8")
    p.add_argument("--quick", action="store_true", help="tiny dataset and runs: every stage in a few minutes")
    p.add_argument("--config", default=None, choices=sorted(SETTINGS),
                   help="full, quick (= --quick) or gpu (full-width Jin on 120x120 images) (default: full)")
    p.add_argument("--data", default=None, help="dataset root (default: the config's, e.g. data/deadleaves)")
    p.add_argument("--fresh_data", default=None,
                   help="the fresh test set: the same world, another seed (default: the config's)")
    p.add_argument("--out", default=None, help="output folder (default: runs/demo; quick: runs/demo_quick)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--num_workers", type=at_least(0, 256), default=1, help="data loader workers of every stage")
    p.add_argument("--jobs", type=at_least(1, 256), default=None,
                   help="deblurring runs trained at once, each on its share of the cores (default: one per CPU core "
                        "on a CPU, 1 on a GPU)")
    return p


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def shown_path(path: Path) -> str:
    """A path as the user would type it from the repository (relative when inside it)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _argv(script: str, args: list) -> list[str]:
    """python's arguments: a script (x.py) or a module run with -m (any other name)."""
    launch = [script] if script.endswith(".py") else ["-m", script]
    return launch + [shown_path(a) if isinstance(a, Path) else str(a) for a in args]


def run_stage(name: str, script: str, args: list, log) -> None:
    """Run one script in the foreground, its output on the console."""
    argv = _argv(script, args)
    print(f"\n== {name}: python {shlex.join(argv)}", flush=True)
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {name}: python {shlex.join(argv)}\n")
    log.flush()
    start = time.time()
    rc = subprocess.call([sys.executable] + argv, cwd=REPO)
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {name}: exit {rc} after {time.time() - start:.1f} s\n")
    log.flush()
    if rc != 0:
        raise StageFailed(f"stage '{name}' failed (exit {rc}); its message is above. Fix it and run the "
                          "same command again: finished stages are skipped")


def run_chains(chains: dict, jobs: int, threads: int, logs: Path, log) -> None:
    """Run chains of stages {chain name: [(stage name, script, args[, needs]), ...]}, up to `jobs` chains at once,
    in the dict's order, the stages of a chain one after another, each process with `threads` torch threads;
    each chain's output goes to logs/<chain>.log. A stage with `needs` (a chain name) starts once that chain
    has finished. Small networks on a CPU use one core badly: two one-thread trainings side by side do about
    1.6x the work of one two-thread training (measured on 2 cores, narrow Jin, 40x40 crops), but more
    processes than cores lose again: five one-thread runs on 2 cores took 175 s per epoch each (35 s per
    run-epoch), two took 56-58 s (28-29 s per run-epoch)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    logs.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    unfinished = [len([c for c in chains.values() if c])]
    finished = {chain: threading.Event() for chain in chains}
    for chain, stages in chains.items():
        if not stages:  # nothing to run: done already
            finished[chain].set()
    failed: set = set()

    def env_now() -> dict:
        """The cores shared by the chains still running or waiting (the last chains get them all)."""
        env = dict(os.environ)
        if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            share = (os.cpu_count() or 1) // max(1, min(jobs, unfinished[0]))
            env["OMP_NUM_THREADS"] = str(max(threads, share))
        return env

    def say(text: str) -> None:
        with lock:
            print(text, flush=True)
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            log.flush()

    def run_chain(chain: str, stages: list) -> None:
        try:
            with open(logs / f"{chain}.log", "a") as out:
                for name, script, args, *needs in stages:
                    for other in needs:
                        finished[other].wait()
                        if other in failed:
                            raise StageFailed(f"stage '{name}' needs the chain '{other}', which failed (see above)")
                    argv = _argv(script, args)
                    say(f"== {name}: python {shlex.join(argv)}")
                    out.write(f"\n== {name}: python {shlex.join(argv)}\n")
                    out.flush()
                    start = time.time()
                    with lock:
                        env = env_now()
                    rc = subprocess.call([sys.executable] + argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         env=env)
                    say(f"   {name}: exit {rc} after {time.time() - start:.1f} s")
                    if rc != 0:
                        out.flush()
                        tail = (logs / f"{chain}.log").read_text().strip().splitlines()[-1:]
                        raise StageFailed(f"stage '{name}' failed (exit {rc}): {tail[0] if tail else ''} (its whole "
                                          f"output: {logs / f'{chain}.log'}). Fix it and run the same command again: "
                                          "finished stages are skipped")
        except BaseException:
            failed.add(chain)
            raise
        finally:
            with lock:
                unfinished[0] -= 1
            finished[chain].set()

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(run_chain, chain, stages) for chain, stages in chains.items() if stages]
        for f in futures:
            f.result()


def train_args(run_dir: Path, epochs: int) -> list[str] | None:
    """None when the run already finished; ["--resume"] when a training state exists; [] to start."""
    if (run_dir / "models" / f"{epochs:04d}.pth").exists():
        return None
    if (run_dir / "training_states" / "latest.pth").exists():
        return ["--resume"]
    return []


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def figures(per_frame: list) -> dict:
    """{"frames_1_7", "frame_4", "mean"} of a per-frame list (7 frames)."""
    return {"frames_1_7": (per_frame[0] + per_frame[-1]) / 2, "frame_4": per_frame[len(per_frame) // 2],
            "mean": sum(per_frame) / len(per_frame)}


def entry(result: dict) -> dict:
    """A run's or a reference's figures for summary.json: pPSNR (the three F keys), per frame, and pSSIM."""
    return {**figures(result["pPSNR"]), "pPSNR": result["pPSNR"], "pSSIM": figures(result["pSSIM"])}


def references(data: Path, device: str) -> dict:
    """The no-network rows on the test split: blur as every frame, the mean of each true pair, the blur moved
    along the recorded motion (oracle_warp) and the true middle frame moved along it (centre_warp)."""
    from datasets.blur2vid import Blur2VidDataset
    from utils.device import resolve_device
    from utils.evaluation import make_eval_loader
    from utils.order_eval import blur_baseline, motion_baselines, pair_mean_baseline
    dev = resolve_device(device)
    dataset = Blur2VidDataset(data, "test", augment=None)
    out = {key: fn(make_eval_loader(dataset, 20, 0), dev)
           for key, fn in (("blur", blur_baseline), ("pair_mean", pair_mean_baseline))}
    out.update(motion_baselines(dataset, dev))
    return out


def make_dataset(name: str, root: Path, flags: list, log) -> list:
    """Render a dataset (or validate the one already there); returns its command (after `python`)."""
    workers = [] if "--workers" in flags else ["--workers", str(min(8, os.cpu_count() or 1))]
    command = ["prepare_dataset.py", "synthetic", "--out", shown_path(root)] + flags + workers
    if (root / "metadata.json").exists():
        run_stage(f"{name} (already there: checked)", "prepare_dataset.py", ["summary", "--out", root], log)
    else:
        run_stage(name, command[0], command[1:], log)
    return command


def order_agreement(data: Path) -> dict:
    """Share of train sequences each order file orders as the oracle does (1: the oracle's order; 0: its
    reverse, which is as readable; 0.5: unrelated to the motion)."""
    oracle = read_json(data / ORDER_FILES["oracle"])["data"]
    out = {}
    for key in ("paper", "ext"):
        mine = read_json(data / ORDER_FILES[key])["data"]
        pairs = [(a["order"], b["order"]) for a, b in zip(mine, oracle) if a.get("partition") == "train"]
        out[key] = sum((a == "reverse") == (b == "reverse") for a, b in pairs) / max(1, len(pairs))
    return out


def run_purohit(cfg: dict, data: Path, ckpts: Path, out: Path, common: list, log) -> dict:
    """Purohit's two stages (stage 2 with order_inv) and their evaluation with the predicted and the true
    centre; {centre: test JSON}."""
    e1, e2 = cfg["purohit"]["epochs"]
    s1_dir, s2_dir = ckpts / "purohit_stage1", ckpts / "purohit_order_inv"
    base = ["--metadata_root", data, "--checkpoints_dir", ckpts, "--backbone", "Purohit"] + cfg["purohit"]["flags"] + common
    extra = train_args(s1_dir, e1)
    if extra is not None:
        run_stage("train Purohit (stage 1)", "train_blur2vid.py",
                  base + ["--exp_name", s1_dir.name, "--stage", "1", "--epochs", e1] + extra, log)
    extra = train_args(s2_dir, e2)
    if extra is not None:
        run_stage("train Purohit (stage 2, order_inv)", "train_blur2vid.py",
                  base + ["--exp_name", s2_dir.name, "--stage1_path", s1_dir / "models" / f"{e1:04d}.pth",
                          "--loss_type", "order_inv", "--epochs", e2] + extra, log)
    results = {}
    for centre in ("predicted", "gt"):
        result = out / f"purohit_order_inv_{centre}_test.json"
        run_stage(f"test Purohit ({centre} centre)", "test_blur2vid.py",
                  ["--metadata_root", data, "--pretrained_path", s2_dir / "models" / f"{e2:04d}.pth",
                   "--middle_frame", centre, "--output_json", result, "--no_lpips"] + common, log)
        results[centre] = read_json(result)
    return results


def summary_markdown(summary: dict, hc: dict, mode: str) -> str:
    from utils.report import markdown_table
    lines = [f"# HyperCUT demo ({mode})", "",
             f"Data: `python {shlex.join(summary['dataset']['command'])}`; fresh test set: "
             f"`python {shlex.join(summary['fresh_test']['dataset']['command'])}`. {summary['minutes']:.1f} min.", "",
             "## HyperCUT ordering, test split", ""]
    keys = ["hit", "con@2", "con@3"]
    lines.append(markdown_table(["HyperCUT"] + keys + ["train orders as the oracle"],
                                [[name] + [hc[name][k] for k in keys] + [summary["orders"][name]]
                                 for name in ("paper", "ext")], 3))
    lines += ["", "(1 or 0: a consistent function of the motion, as readable as the oracle's order; 0.5: unrelated)", ""]
    for title, part in (("test split", summary), ("fresh test set (another seed)", summary["fresh_test"])):
        lines += ["", f"## pPSNR (dB), {title}, whole images", ""]
        rows = [[f"reference: {k}"] + [v["frames_1_7"], v["frame_4"], v["mean"], v["pSSIM"]["frames_1_7"]]
                for k, v in part["reference"].items()]
        rows += [[k] + [v["frames_1_7"], v["frame_4"], v["mean"], v["pSSIM"]["frames_1_7"]] for k, v in part["runs"].items()]
        lines.append(markdown_table(["", "frames 1 & 7", "frame 4", "mean", "pSSIM frames 1 & 7"], rows, 2))
    lines += ["", "pPSNR per frame, test split:", ""]
    rows = [[k] + v["pPSNR"] for k, v in {**summary["reference"], **summary["runs"]}.items()]
    lines.append(markdown_table([""] + [str(i + 1) for i in range(7)], rows, 2))
    if summary.get("purohit"):
        lines += ["", "## Purohit (narrow), order_inv, test split", ""]
        lines.append(markdown_table(["centre", "frames 1 & 7", "frame 4", "mean"],
                                    [["ground truth (oracle)" if c == "gt" else c] + list(figures(r["pPSNR"]).values())
                                     for c, r in summary["purohit"].items()], 2))
    lines += ["", "Files: checkpoints/, *_test.json and .csv, fresh/, per_frame.png, figures/ (contact sheets and GIFs), "
              "inference/, summary.json.", ""]
    return "\n".join(lines)


def main_body(args) -> int:
    check_flags(args)
    if args.quick and args.config not in (None, "quick"):
        raise FlagError(f"--quick and --config {args.config} disagree: give one of them")
    mode = "quick" if args.quick else (args.config or "full")
    cfg = SETTINGS[mode]

    def where(given, default):
        return Path(given).resolve() if given else REPO / default

    data, fresh, out = where(args.data, cfg["data"]), where(args.fresh_data, cfg["fresh"]), where(args.out, cfg["out"])
    if len({data, fresh, out}) < 3:
        raise FlagError("--data, --fresh_data and --out must be three different folders")
    if "--center_path" in cfg["jin"] and not (REPO / CENTRE).is_file():
        raise FlagError(f"{CENTRE} is missing: it ships with the repository (weights/README.md says how it was made)")
    out.mkdir(parents=True, exist_ok=True)
    ckpts = out / "checkpoints"
    cores = os.cpu_count() or 1
    on_cpu = args.device == "cpu" or (args.device == "auto" and not _cuda_available())
    jobs = args.jobs or (min(cores, len(cfg["runs"]) + 1) if on_cpu else 1)  # + the HyperCUT chain
    threads = max(1, cores // jobs)
    common = ["--device", args.device, "--num_workers", str(args.num_workers)]
    jin_flags = [REPO / a if a == CENTRE else a for a in cfg["jin"]]
    started = time.time()
    with open(out / "demo_log.txt", "a") as log:
        # 1. the world, and a fresh test set of it (another seed: new textures)
        data_cmd = make_dataset("dataset", data, cfg["dataset"], log)
        fresh_cmd = make_dataset("fresh test set", fresh, cfg["fresh_dataset"], log)

        # 2. the oracle order (the recorded motion): the order-free runs can start at once
        run_stage("order (oracle)", "generate_order.py",
                  ["--metadata_root", data, "--save_path", data / ORDER_FILES["oracle"], "--overwrite",
                   "--device", args.device, "--oracle"], log)

        # 3. one chain trains and tests the paper's HyperCUT and ours and writes their orders, beside the
        # deblurring runs that need no HyperCUT order (on a CPU, each chain on its share of the cores)
        chains, hc_paths, hc_results = {"hypercut": []}, {}, {}
        for key, exp, flags, epochs in (("paper", "hypercut", cfg["hypercut"], cfg["hypercut_epochs"]),
                                        ("ext", "hypercut_ext", cfg["hypercut_ext"], cfg["hypercut_ext_epochs"])):
            extra = train_args(ckpts / exp, epochs)
            if extra is not None:
                chains["hypercut"].append(
                    (f"train HyperCUT ({key})", "train_hypercut.py",
                     ["--metadata_root", data, "--exp_name", exp, "--checkpoints_dir", ckpts] + flags + common + extra))
            hc_paths[key] = ckpts / exp / "models" / f"{epochs:04d}.pth"
            hc_results[key] = out / f"{exp}_test.json"
            chains["hypercut"].append(
                (f"test HyperCUT ({key})", "test_hypercut.py",
                 ["--metadata_root", data, "--pretrained_path", hc_paths[key], "--output_json", hc_results[key]]
                 + common))
            chains["hypercut"].append(
                (f"order ({key})", "generate_order.py",
                 ["--metadata_root", data, "--save_path", data / ORDER_FILES[key], "--overwrite",
                  "--device", args.device, "--pretrained_path", hc_paths[key]]))

        # 4-5. one narrow Jin per order, all from the same start; evaluated on the test split and the fresh one
        # (scored with a HyperCUT: they wait for the HyperCUT chain). Runs on a HyperCUT's order wait for it.
        models, results = {}, {}
        for name, loss_flags, order in cfg["runs"]:
            exp = f"jin_{name}"
            hc_key = "paper" if order == "paper" else "ext"  # whose hit/con and order the predictions are scored by
            hc_flag = ["--hypercut_path", hc_paths[hc_key]]
            models[name] = ckpts / exp / "models" / f"{cfg['jin_epochs']:04d}.pth"
            results[name] = (out / f"{exp}_test.json", out / "fresh" / f"{exp}_test.json")
            needs_hc = ["hypercut"] if order in ("paper", "ext") or "hypercut" in loss_flags else []
            stages = []
            extra = train_args(ckpts / exp, cfg["jin_epochs"])
            if extra is not None:
                stages.append((f"train Jin ({name})", "train_blur2vid.py",
                               ["--metadata_root", data / ORDER_FILES[order], "--exp_name", exp, "--checkpoints_dir",
                                ckpts, "--backbone", "Jin"] + loss_flags + (hc_flag if "hypercut" in loss_flags else [])
                               + jin_flags + common + extra, *needs_hc))
            test = ["--pretrained_path", models[name], "--batch_size", str(TEST_BATCH)]
            stages.append((f"test Jin ({name})", "test_blur2vid.py",
                           ["--metadata_root", data, "--output_json", results[name][0]] + test + hc_flag + common,
                           "hypercut"))
            stages.append((f"test Jin ({name}, fresh test set)", "test_blur2vid.py",
                           ["--metadata_root", fresh, "--output_json", results[name][1], "--no_lpips"] + test
                           + common))
            chains[exp] = stages
        run_chains(chains, jobs, threads, out / "logs", log)
        hc_tests = {key: read_json(path) for key, path in hc_results.items()}
        tests = {name: read_json(paths[0]) for name, paths in results.items()}
        fresh_tests = {name: read_json(paths[1]) for name, paths in results.items()}

        refs_json = out / "references.json"
        refs = read_json(refs_json) if refs_json.exists() else {}
        if refs.get("data") != [str(data), str(fresh)]:  # computed once per pair of datasets
            from utils.report import write_json
            refs = {"data": [str(data), str(fresh)], "test": references(data, args.device),
                    "fresh_test": references(fresh, args.device)}
            write_json(refs_json, refs)

        purohit = run_purohit(cfg, data, ckpts, out, common, log) if cfg["purohit"] else None

        # 6. pictures: per-frame pPSNR, contact sheets and GIFs of a few test sequences, inference on photos-to-be
        from utils.figures import per_frame_plot
        per_frame_plot({**{f"{k} (reference)": v["pPSNR"] for k, v in refs["test"].items() if k != "centre_warp"},
                        **{k: v["pPSNR"] for k, v in tests.items()}}, out / "per_frame.png",
                       title="pPSNR per frame, test split")
        contact_sheets(models, data, cfg["figures"], out / "figures", args.device)
        from datasets.metadata import load_split
        _, entries = load_split(data, "test", check=False)
        inputs = out / "inference_input"
        inputs.mkdir(exist_ok=True)
        for e in entries[:INFERENCE_IMAGES]:
            target = inputs / (e.id.replace("/", "_") + Path(e.blur_path).suffix)
            if not target.exists():
                shutil.copyfile(e.blur_path, target)
        best = "naive_hypercut_ext" if "naive_hypercut_ext" in models else next(iter(models))
        run_stage("inference", "inference.py",
                  ["--pretrained_path", models[best], "--blur_path", inputs, "--output_path", out / "inference",
                   "--device", args.device, "--gif"], log)

        minutes = (time.time() - started) / 60
        summary = {
            "minutes": round(minutes, 2),
            "reference": {k: entry(v) for k, v in refs["test"].items()},
            "runs": {k: {**entry(v), "checkpoint": shown_path(models[k]),
                         **({"follows_oracle": v["order_of_predictions"]["follows_oracle"]}
                            if v.get("order_of_predictions") else {})} for k, v in tests.items()},
            "dataset": {"command": data_cmd},
            "fresh_test": {"dataset": {"command": fresh_cmd},
                           "reference": {k: entry(v) for k, v in refs["fresh_test"].items()},
                           "runs": {k: {**entry(v), "checkpoint": shown_path(models[k])} for k, v in fresh_tests.items()}},
            "hypercut": {k: {m: v[m] for m in ("hit", "con@2", "con@3")} for k, v in hc_tests.items()},
            "orders": order_agreement(data),
            **({"purohit": {c: entry(r) for c, r in purohit.items()}} if purohit else {}),
        }
        from utils.report import write_json
        from utils.checkpoint import atomic_write_text
        write_json(out / "summary.json", summary)
        text = summary_markdown(summary, hc_tests, mode)
        atomic_write_text(out / "summary.md", text)
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} done in {time.time() - started:.0f} s\n")
    print("\n" + text)
    print(f"demo finished in {minutes:.1f} min; summary: {out / 'summary.md'} and summary.json")
    return 0


def contact_sheets(models: dict, data: Path, indices: list, folder: Path, device: str) -> None:
    """blur | frames 1-7 | ground truth, one row per network, for a few test sequences (PNG and GIF)."""
    from datasets.blur2vid import Blur2VidDataset
    from models import load_backbone
    from utils.device import resolve_device
    from utils.figures import method_figures
    dev = resolve_device(device)
    dataset = Blur2VidDataset(data, "test", augment=None)
    loaded = {name: load_backbone(path, map_location=dev) for name, path in models.items()
              if name in ("order_inv", "naive_random", "naive_oracle", "naive_hypercut", "naive_hypercut_ext")}
    method_figures(loaded, dataset, [i for i in indices if i < len(dataset)], folder, dev, scale=3.0)


def main(argv=None) -> int:
    return run_main(build_parser, main_body, argv, interrupted="interrupted; run the same command again to continue")


if __name__ == "__main__":
    sys.exit(main())

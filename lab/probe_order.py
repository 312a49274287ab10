"""Direction probe: can a deblurring network read an order from the blurry image? (lab/ordering.md)

  python -m lab.probe_order --metadata_root data/synthetic                       # stored order and the oracle
  python -m lab.probe_order --metadata_root data/synthetic --hypercut_path checkpoints/hc/models/0024.pth
  python -m lab.probe_order --metadata_root data/synthetic/metadata_hypercut.json --sources stored

For random crops of the training and held-out sequences, m is the content's translation from frame 1
to frame N (phase correlation on grey, Hann-windowed crops). Each order source gives a target t = +-m:
`stored` the frames as the metadata loads them, `oracle` flipped so that t_x >= 0, and one `hypercut`
column per --hypercut_path, flipped where that HyperCUT's h(x1, xN) < 0 on the same crop. A small CNN
regresses every target's unit vector from the blurry crop alone; the table gives the held-out fraction
of crops with pred . t > 0 after each of --steps: about 1 means the order is readable from the blur,
about 0.5 means it is not (a network trained on it sees a random order). For HyperCUT columns the
table also gives the hit on the held-out crops (h(x1, xN) h(xN, x1) < 0), how often the crops of one
sequence agree, and how well the order is a rule of the motion alone (the best agreement with
sign(m . a) over directions a: 1 for an order that only looks at the motion, like the oracle).
"""
from __future__ import annotations

import utils.threads  # noqa: F401  (first: OpenMP's wait policy, before torch loads)

import argparse
import sys
from pathlib import Path

import torch

from datasets.blur2vid import Blur2VidDataset
from datasets.metadata import dataset_inputs
from models.hypercut import load_hypercut
from utils.device import resolve_device
from lab.probe import ProbeConfig, collect_crops, crop_agreement, half_plane_fit, run_probe
from utils.outputs import check_outputs
from utils.report import markdown_table, write_json
from utils.cli import SEED, ArgumentParser, above, at_least, check_flags, run_main
from utils.errors import FlagError, UserError

SOURCES = ("stored", "oracle", "hypercut")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Direction probe: can a small CNN read an order (stored, oracle, a HyperCUT's) from the blurry "
                    "image alone? Held-out agreement after each of --steps (lab/ordering.md section 1).",
        epilog="examples:\n"
               "  python -m lab.probe_order --metadata_root data/synthetic                  # stored order and the oracle\n"
               "  python -m lab.probe_order --metadata_root data/synthetic --hypercut_path "
               "checkpoints/hc/models/0024.pth --output_json probe.json")
    p.add_argument("--metadata_root", required=True, help="dataset root holding metadata.json (or the file itself)")
    p.add_argument("--data_root", default=None,
                   help="resolve relative paths against this folder instead (default: the metadata file's folder)")
    p.add_argument("--sources", nargs="+", default=None, choices=SOURCES,
                   help="order sources to probe (default: stored oracle, plus hypercut with --hypercut_path)")
    p.add_argument("--hypercut_path", nargs="+", default=[], help="HyperCUT checkpoints, one column each")
    p.add_argument("--crop_size", type=at_least(0), default=64, help="crop side in pixels; 0: full images")
    p.add_argument("--train_crops", type=at_least(1), default=8, help="random crops per training sequence")
    p.add_argument("--test_crops", type=at_least(1), default=4, help="random crops per held-out sequence")
    p.add_argument("--min_motion", type=at_least(0, kind=float), default=1.0, help="drop crops whose measured |m| is smaller (pixels)")
    p.add_argument("--steps", type=at_least(1), nargs="+", default=[100, 200, 400], help="report after these steps")
    p.add_argument("--batch_size", type=at_least(1, 2 ** 31 - 1), default=32, help="crops per probe step")
    p.add_argument("--lr", type=above(0), default=1e-3, help="Adam learning rate of the probe")
    p.add_argument("--train_split", default="train", help="split the probe trains on")
    p.add_argument("--eval_split", default="test", help="held-out split")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the crops and the probe's weights")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--output_json", default=None, help="write every figure here (default: print only)")
    return p


def check_args(args) -> list[str]:
    """The sources to probe (--sources, or the default for the flags given); one FlagError for a bad mix."""
    check_flags(args)
    problems = []
    sources = args.sources if args.sources is not None else (
        ["stored", "oracle"] + (["hypercut"] if args.hypercut_path else []))
    if "hypercut" in sources and not args.hypercut_path:
        problems.append("--sources hypercut needs --hypercut_path")
    if args.hypercut_path and "hypercut" not in sources:
        problems.append("--hypercut_path given but 'hypercut' is not in --sources")
    if problems:
        raise FlagError("; ".join(problems))
    return sources


def source_label(path: str, paths: list) -> str:
    """'hypercut' for a single checkpoint; otherwise 'hypercut:<run name>' (or the file stem)."""
    if len(paths) == 1:
        return "hypercut"
    p = Path(path)
    name = p.parent.parent.name if p.parent.name == "models" else p.stem
    return f"hypercut:{name}"


def targets_for(crops: dict, args, hypercuts: list, device) -> tuple[list, torch.Tensor, dict]:
    """(labels, targets (K, T, 2), {label: {hit, motion_rule, motion_rule_angle, crop_agreement}} on
    these crops) for the chosen sources."""
    m = crops["m"]
    labels, targets, hits = [], [], {}
    for source in args.sources:
        if source == "stored":
            labels.append("stored")
            targets.append(m)
        elif source == "oracle":
            labels.append("oracle")
            targets.append(torch.where(m[:, :1] < 0, -m, m))
        else:
            for path, model in hypercuts:
                label = source_label(path, args.hypercut_path)
                u, ubar = hypercut_scores(model, crops["first"], crops["last"], device)
                labels.append(label)
                targets.append(torch.where((u >= 0)[:, None], m, -m))
                rule, angle = half_plane_fit(u, m)
                hits[label] = {"hit": float((u * ubar < 0).float().mean()), "motion_rule": rule,
                               "motion_rule_angle": angle, "crop_agreement": crop_agreement(u, crops["seq"])}
    return labels, torch.stack(targets, 1), hits


@torch.no_grad()
def hypercut_scores(model, first, last, device, batch_size: int = 64):
    """h(x1, xN) and h(xN, x1) per crop."""
    need = model.f_func.min_size
    if min(first.shape[-2:]) < need:
        raise FlagError(f"HyperCUT needs crops of at least {need}x{need} pixels, got {tuple(first.shape[-2:])}; "
                         "raise --crop_size")
    us = []
    for k in range(0, len(first), batch_size):
        pair = torch.stack([first[k:k + batch_size], last[k:k + batch_size]], 1).to(device)
        d = model.embed_pairs(model.to_network(pair), [(0, 1), (1, 0)])
        us.append(model.score(d).float().cpu())
    u = torch.cat(us)
    return u[:, 0], u[:, 1]


def probe(args) -> dict:
    from tqdm import tqdm
    device = resolve_device(args.device)
    cfg = ProbeConfig(crop_size=args.crop_size or None, train_crops=args.train_crops, test_crops=args.test_crops,
                      min_motion=args.min_motion, steps=tuple(args.steps), batch_size=args.batch_size,
                      lr=args.lr, seed=args.seed)
    hypercuts = [(p, load_hypercut(p, map_location=device)) for p in args.hypercut_path]
    sets = {}
    for split, count, offset in ((args.train_split, cfg.train_crops, 1), (args.eval_split, cfg.test_crops, 2)):
        dataset = Blur2VidDataset(args.metadata_root, split, data_root=args.data_root, augment=None)
        bar = lambda it, split=split: tqdm(it, desc=f"crops {split}", unit="seq", leave=False, disable=None)
        sets[split] = collect_crops(dataset, cfg, count, seed=cfg.seed * 1000 + offset, progress=bar)
        if len(sets[split]["m"]) == 0:
            raise UserError(f"no crop of the {split} split has measurable motion (|m| >= {cfg.min_motion})")
    train, test = sets[args.train_split], sets[args.eval_split]
    labels, train_t, hits_train = targets_for(train, args, hypercuts, device)
    _, test_t, hits = targets_for(test, args, hypercuts, device)
    bar = lambda total: tqdm(total=total, desc="probe", unit="step", leave=False, disable=None)
    result = run_probe(train, test, train_t, test_t, cfg, device, progress=bar)
    return {"sources": labels, **result, "hypercut_on_test_crops": hits, "hypercut_on_train_crops": hits_train,
            "num_train_crops": len(train["m"]), "num_test_crops": len(test["m"]),
            "dropped_train_crops": train["dropped"], "dropped_test_crops": test["dropped"],
            "crop_size": args.crop_size, "metadata_root": str(args.metadata_root),
            "hypercut_path": list(args.hypercut_path), "train_split": args.train_split,
            "eval_split": args.eval_split, "seed": args.seed}


def report(result: dict) -> str:
    rows = [[s] + a for s, a in zip(result["steps"], result["agreement"])]
    size = f"{result['crop_size']}x{result['crop_size']} crops" if result["crop_size"] else "full images"
    lines = [f"Direction probe on {result['metadata_root']} ({size}; {result['num_train_crops']} training / "
             f"{result['num_test_crops']} held-out crops, {result['dropped_test_crops']} held-out crops "
             "without measurable motion dropped)", "",
             "Held-out agreement (fraction with pred . t > 0; 0.5 = not readable from the blur):", "",
             markdown_table(["steps"] + result["sources"], rows)]
    if result["hypercut_on_test_crops"]:
        rows = [[k, v["hit"], v["crop_agreement"], v["motion_rule"], v["motion_rule_angle"]]
                for k, v in result["hypercut_on_test_crops"].items()]
        lines += ["", "HyperCUT on the held-out crops: hit; crop agreement (share of a sequence's crops on its "
                  "majority side); motion rule (best agreement with sign(m . a) over directions a, and a):", "",
                  markdown_table(["source", "hit", "crop agreement", "motion rule", "angle (deg)"], rows, 3)]
    return "\n".join(lines)


def main_body(args) -> None:
    args = argparse.Namespace(**{**vars(args), "sources": check_args(args)})  # the parsed flags stay as given
    inputs = dataset_inputs(args.metadata_root, data_root=args.data_root)
    for path in args.hypercut_path:
        inputs.add_checkpoint("--hypercut_path", path)
    check_outputs([("--output_json", args.output_json)], inputs)
    result = probe(args)
    if args.output_json:
        write_json(args.output_json, result)
    print(report(result))


def main(argv=None) -> int:
    return run_main(build_parser, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Figures of lab/ordering.md from finished runs: probe plot, per-frame pPSNR plot, contact sheets, GIFs.

  python -m lab.experiments.ordering_figures --out lab/figures \
      --probe results/probe_all.json \
      --result "naive (random order)=results/jin_naive.json" --result "oracle=results/jin_oracle.json" \
      --model "naive=checkpoints/jin_naive/models/0012.pth" --model "oracle=checkpoints/jin_oracle/models/0012.pth" \
      --metadata_root data/synthetic --sequences 0 5

--result LABEL=JSON (test_blur2vid.py --output_json files) gives one line of the per-frame plot;
--model LABEL=CHECKPOINT one row of each contact sheet and one column of each GIF (after the ground
truth); --probe a lab/probe_order.py --output_json file. --hypercut LABEL=CHECKPOINT (with --model): which
order each model's predictions follow on the whole test split, judged with each HyperCUT
(utils/order_eval.py: follows_oracle, follows_hypercut, pred_positive, hc_honest), printed and written
to OUT/order_of_predictions.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from utils.cli import ArgumentParser
from utils.errors import FlagError


def labelled(values: list, flag: str) -> dict:
    out = {}
    for v in values:
        label, sep, path = v.partition("=")
        if not sep or not label or not path:
            raise FlagError(f"{flag} {v!r}: expected LABEL=PATH")
        if not Path(path).exists():
            raise FlagError(f"{flag} {v!r}: {path} does not exist")
        out[label] = Path(path)
    return out


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Figures of lab/ordering.md from finished runs: probe plot, per-frame pPSNR plot, contact sheets "
                    "and GIFs, and which order each model's predictions follow.",
        epilog="example:\n"
               "  python -m lab.experiments.ordering_figures --out /tmp/figs --result \"naive=results/jin_naive.json\" "
               "\\\n      --model \"naive=checkpoints/jin_naive/models/0012.pth\" --metadata_root data/synthetic")
    p.add_argument("--out", required=True, help="folder for the figures")
    p.add_argument("--probe", default=None, help="a lab/probe_order.py --output_json file")
    p.add_argument("--result", action="append", default=[], help="LABEL=test_blur2vid JSON (per-frame plot)")
    p.add_argument("--model", action="append", default=[], help="LABEL=checkpoint (contact sheets, GIFs)")
    p.add_argument("--hypercut", action="append", default=[],
                   help="LABEL=HyperCUT checkpoint: which order each --model's predictions follow")
    p.add_argument("--metadata_root", default=None, help="dataset for the contact sheets (test split)")
    p.add_argument("--sequences", type=int, nargs="+", default=[0], help="test-split indices to show")
    p.add_argument("--title", default=None, help="title of the per-frame plot")
    p.add_argument("--scale", type=float, default=1.0, help="size of the contact sheets (1: one pixel per pixel)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results, models = labelled(args.result, "--result"), labelled(args.model, "--model")
        hypercuts = labelled(args.hypercut, "--hypercut")
        if models and not args.metadata_root:
            raise FlagError("--model needs --metadata_root")
        if hypercuts and not models:
            raise FlagError("--hypercut judges the predictions of --model LABEL=CHECKPOINT: give at least one")
        if args.probe and not Path(args.probe).exists():
            raise FlagError(f"--probe {args.probe} does not exist")
    except FlagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch
    from utils.figures import method_figures, per_frame_plot, probe_plot
    out = Path(args.out)
    if args.probe:
        r = json.loads(Path(args.probe).read_text())
        size = f"{r['crop_size']}x{r['crop_size']} crops" if r["crop_size"] else "full images"
        path = probe_plot(r["steps"], {s: [a[i] for a in r["agreement"]] for i, s in enumerate(r["sources"])},
                          out / "probe.png", title=f"direction probe, held-out {size}")
        print(f"wrote {path}")
    if results:
        series = {label: json.loads(path.read_text())["pPSNR"] for label, path in results.items()}
        print(f"wrote {per_frame_plot(series, out / 'per_frame_ppsnr.png', title=args.title)}")
    if models:
        from datasets.blur2vid import Blur2VidDataset
        from models import load_backbone
        loaded = {label: load_backbone(path, map_location=args.device) for label, path in models.items()}
        dataset = Blur2VidDataset(args.metadata_root, "test", augment=None)
        with torch.no_grad():
            for path in method_figures(loaded, dataset, args.sequences, out, torch.device(args.device),
                                       scale=args.scale):
                print(f"wrote {path}")
        if hypercuts:
            print(f"wrote {order_table(loaded, hypercuts, dataset, out, torch.device(args.device))}")
    return 0


def order_table(models: dict, hypercut_paths: dict, dataset, out: Path, device) -> Path:
    """utils.order_eval.order_figures of each model with each HyperCUT on `dataset`: printed as one table
    and written to out/order_of_predictions.json ({model: {hypercut: figures}})."""
    import torch
    from models.hypercut import load_hypercut
    from utils.evaluation import make_eval_loader
    from utils.order_eval import order_figures
    from utils.report import markdown_table, write_json
    hcs = {label: load_hypercut(path, map_location=device) for label, path in hypercut_paths.items()}
    loader = make_eval_loader(dataset, 20, 0)
    figures = {}
    with torch.no_grad():
        for label, model in models.items():
            figures[label] = order_figures(model.to(device), loader, device, hcs)
    names = ("follows_hypercut", "pred_positive", "hc_honest")
    first = next(iter(hcs))
    rows = [[label, figures[label][first]["follows_oracle"]] + [figures[label][h][n] for h in hcs for n in names]
            for label in models]
    print(markdown_table(["model", "follows_oracle"] + [f"{n} ({h})" for h in hcs for n in names], rows, 2))
    Path(out).mkdir(parents=True, exist_ok=True)
    return write_json(Path(out) / "order_of_predictions.json", {"num_sequences": len(dataset), "figures": figures})


if __name__ == "__main__":
    sys.exit(main())

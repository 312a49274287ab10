"""Figures of docs/ordering.md from finished runs: probe plot, per-frame pPSNR plot, contact sheets, GIFs.

  python experiments/ordering_figures.py --out docs/figures \
      --probe results/probe_all.json \
      --result "naive (random order)=results/jin_naive.json" --result "oracle=results/jin_oracle.json" \
      --model "naive=checkpoints/jin_naive/models/0012.pth" --model "oracle=checkpoints/jin_oracle/models/0012.pth" \
      --metadata_root data/synthetic --sequences 0 5

--result LABEL=JSON (test_blur2vid.py --output_json files) gives one line of the per-frame plot;
--model LABEL=CHECKPOINT one row of each contact sheet and one column of each GIF (after the ground
truth); --probe a probe_order.py --output_json file.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.cli import ArgumentParser  # noqa: E402  (after the path)
from utils.errors import FlagError  # noqa: E402


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


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, help="folder for the figures")
    p.add_argument("--probe", default=None, help="a probe_order.py --output_json file")
    p.add_argument("--result", action="append", default=[], help="LABEL=test_blur2vid JSON (per-frame plot)")
    p.add_argument("--model", action="append", default=[], help="LABEL=checkpoint (contact sheets, GIFs)")
    p.add_argument("--metadata_root", default=None, help="dataset for the contact sheets (test split)")
    p.add_argument("--sequences", type=int, nargs="+", default=[0], help="test-split indices to show")
    p.add_argument("--title", default=None, help="title of the per-frame plot")
    p.add_argument("--scale", type=float, default=1.0, help="size of the contact sheets (1: one pixel per pixel)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        results, models = labelled(args.result, "--result"), labelled(args.model, "--model")
        if models and not args.metadata_root:
            raise FlagError("--model needs --metadata_root")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

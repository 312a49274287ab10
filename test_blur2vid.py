"""Evaluate a deblurring backbone on a split: pPSNR, pSSIM, pLPIPS and PSNR, SSIM, LPIPS per frame.

  python test_blur2vid.py --dataset_name syn --metadata_root data/synthetic --backbone Jin      # order_inv run
  python test_blur2vid.py --dataset_name syn --metadata_root data/synthetic --backbone Jin \\
      --hypercut_path hc.pth                                   # the hypercut run, plus hit/con of its predictions
  python test_blur2vid.py --metadata_root data/reds --pretrained_path weights/jin_official/ \\
      --hypercut_path hypercut_reds.pth --output_json results/jin_reds.json --save_images results/jin_reds

--pretrained_path takes a checkpoint of train_blur2vid.py (it records the backbone and its width) or a
folder holding Jin et al.'s four official files. Without it, the latest model (or --load_epoch's) of
the run train_blur2vid.py names for the same flags, Blur2Vid_<backbone>_<loss_type>_2frames_<dataset_name>,
is evaluated (or of --exp_name); --loss_type defaults to hypercut when --hypercut_path is given and to
order_inv otherwise, which is how the reference's README pairs its commands. Full images are used,
whatever their size (the paper's protocol); --tile N (or --tile crop, the run's training crop size)
predicts each image in N x N windows instead, to see what a network trained on small crops gives on
inputs of the size it learnt on.

p-metrics do not depend on the direction of the predicted sequence: with --p_mode pair (the paper's
formula) each symmetric pair (k, 8-k) takes the better of its two assignments, with --p_mode sequence
(the reference's code) the whole sequence takes the better direction. PSNR/SSIM/LPIPS score the frames
in the predicted order. Every figure is the mean over sequences; PSNR is capped at 100 dB per frame.
LPIPS (AlexNet, v0.1) needs torchvision's alexnet-owt-7be5be79.pth, read from $TORCH_HOME/hub/checkpoints
or downloaded there when the machine is online. Without it the evaluation still finishes: one warning
line names the file, and LPIPS is reported as skipped (null in JSON); --lpips require makes that an
error, --no_lpips skips LPIPS on purpose.
With --hypercut_path, hit/con of the predicted sequences are reported too, and which order the predictions
follow (utils/order_eval.py): follows_hypercut (the predicted frames 1 and N are closer to the ground truth
in HyperCUT's canonical order than to its reverse), follows_oracle (... to the ground truth put in the
order of its own camera motion, rightwards first), pred_positive (h(p1, pN) > 0, what the hypercut loss's
R term asks for) and hc_honest (HyperCUT judges the prediction as it judges the ground truth in the same
direction). R is gamed when pred_positive is high and follows_hypercut is not.

Prints the tables; --output_json writes every figure (lists per frame and `<name>_mean`), with a CSV of
the per-frame figures beside it (same name, .csv); --save_images DIR writes each prediction as
DIR/<entry id>/frame_k.png, the id percent-escaped so that every entry has its own folder (00000/0000 ->
00000%2F0000; urllib.parse.unquote gives the id back).
"""
from __future__ import annotations

import utils.threads  # noqa: F401  (first: OpenMP's wait policy, before torch loads)

import os
import sys
from pathlib import Path

import torch

from datasets.blur2vid import Blur2VidDataset, check_image_sizes, file_check
from datasets.metadata import PARTITIONS, dataset_inputs, dataset_name
from losses import LOSSES
from models import BACKBONES, backbone_checkpoint_fields, load_backbone
from models.hypercut import hit_con, load_hypercut
from utils.cli import (ArgumentParser, add_checkpoint_args, add_data_args, add_eval_args, add_runtime_args,
                       above, check_flags, run_main)
from utils.device import resolve_device
from utils.errors import FlagError
from utils.evaluation import add_tile_arg, evaluate, make_eval_loader, predict_frames, resolve_tile, tiled
from utils.images import OutputFolders, entry_folder, save_frames
from utils.metrics.lpips import LPIPSMetric, LPIPSWeightsMissing
from utils.metrics.sequence import SequenceMetrics, min_image_size
from utils.order_eval import sequence_signs, summarise
from utils.checkpoint import atomic_write_files
from utils.outputs import check_outputs, folder_targets
from utils.report import csv_text, json_text, markdown_table
from utils.run import blur2vid_run_name, resolve_pretrained

METRICS = ("pPSNR", "pSSIM", "pLPIPS", "PSNR", "SSIM", "LPIPS")
MIDDLE_FRAME = {"predicted": "predicted", "gt": "ground truth (oracle centre)"}
ORDERING = ("hit", "hit_x2_x6", "hit_x3_x5", "con@2", "con@3")
ORDER_FIGURES = ("follows_hypercut", "follows_oracle", "pred_positive", "hc_honest")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Evaluate a deblurring backbone on a split: pPSNR, pSSIM, pLPIPS and PSNR, SSIM, LPIPS per "
                    "frame (a table, and --output_json with a CSV beside it).",
        epilog="example:\n"
               "  python test_blur2vid.py --metadata_root data/synthetic --pretrained_path "
               "checkpoints/jin_hc/models/0100.pth \\\n"
               "      --hypercut_path checkpoints/hypercut_syn/models/0024.pth --output_json results/jin_hc.json")
    add_data_args(p, limits=("test",))
    add_runtime_args(p, batch_size=1, num_workers=2)
    add_checkpoint_args(p, "a train_blur2vid.py checkpoint, or a folder with Jin's four official files")
    add_eval_args(p, PARTITIONS)
    p.add_argument("--backbone", default=None, choices=BACKBONES.names(),
                   help="expected backbone (default: the checkpoint's; Jin for a folder and for the run name)")
    p.add_argument("--loss_type", default=None, choices=LOSSES.names(),
                   help="loss of the run to evaluate (default: hypercut with --hypercut_path, else order_inv)")
    p.add_argument("--width_mult", type=above(0, 4.0), default=None,
                   help="width of an official-weights folder's model (default: 1.0); checked against a checkpoint's")
    p.add_argument("--p_mode", default="pair", choices=("pair", "sequence"),
                   help="pPSNR/pSSIM: the paper's per-pair formula or the reference's whole-sequence one")
    p.add_argument("--middle_frame", default="predicted", choices=("predicted", "gt"),
                   help="central frame: the backbone's own, or the ground truth's (the oracle protocol of the "
                        "HyperCUT paper's Purohit tables; labelled 'oracle centre' in every output)")
    p.add_argument("--lpips", default="auto", choices=("auto", "require", "off"),
                   help="auto: LPIPS when its weights can be had, else skipped with a warning; require: "
                        "missing weights are an error")
    p.add_argument("--no_lpips", action="store_true", help="skip LPIPS (same as --lpips off)")
    p.add_argument("--hypercut_path", default=None, help="a HyperCUT checkpoint: adds hit/con of the predictions")
    p.add_argument("--save_images", default=None, help="write the predicted frames under this folder")
    add_tile_arg(p)
    return p


def make_lpips(args, device):
    """(metric or None, status for the report). In auto mode missing weights give one warning line."""
    if args.no_lpips or args.lpips == "off":
        return None, "skipped (--no_lpips)"
    try:
        return LPIPSMetric(device), "alexnet v0.1"
    except LPIPSWeightsMissing as e:
        if args.lpips == "require":
            raise
        print(f"warning: LPIPS skipped: {e}", file=sys.stderr)
        return None, "skipped (AlexNet weights missing)"


def check_outputs_first(args, checkpoint, dataset, num_frames: int) -> None:
    """--output_json, the CSV beside it and every file --save_images will write, against the files this
    evaluation reads and against one another, before any work."""
    if args.output_json and Path(args.output_json).suffix.lower() == ".csv":
        raise FlagError(f"--output_json {args.output_json}: the per-frame CSV is written beside the JSON under its "
                        "name with .csv, which is this same file: give the JSON a .json name")
    inputs = dataset_inputs(args.metadata_root, data_root=args.data_root)  # every split's files
    inputs.add_checkpoint("--pretrained_path", checkpoint)
    inputs.add_checkpoint("--hypercut_path", args.hypercut_path)
    outputs = []
    if args.output_json:
        outputs += [("--output_json", args.output_json),
                    ("the CSV beside --output_json", Path(args.output_json).with_suffix(".csv"))]
    if args.save_images:
        folder = os.path.realpath(args.save_images) + os.sep
        for label, path in outputs:
            if (os.path.realpath(path) + os.sep).startswith(folder):
                raise FlagError(f"{label} {path} is --save_images {args.save_images} or inside it: give the "
                                "JSON and the image folder different places")
        names = [f"{entry_folder(e.id, i)}/frame_{k}.png" for i, e in enumerate(dataset.entries)
                 for k in range(1, num_frames + 1)]
        outputs += [("--save_images", p) for p in folder_targets(args.save_images, names)]
    check_outputs(outputs, inputs)


def run_test(args) -> dict:
    """Evaluate and return the result dict (what --output_json holds)."""
    check_flags(args)
    device = resolve_device(args.device)
    data_name = dataset_name(args.metadata_root, args.dataset_name)
    loss_type = args.loss_type or ("hypercut" if args.hypercut_path else "order_inv")
    path = str(resolve_pretrained(args, blur2vid_run_name(args.backbone or "Jin", loss_type, data_name)))
    tile = resolve_tile(args.tile, path)
    # LPIPS first: a required but missing weights file stops the run before any work is done
    lpips, lpips_status = make_lpips(args, device)
    model = load_backbone(path, map_location=device, name=args.backbone, width_mult=args.width_mult)
    if getattr(model, "training_stage", None) == 1:
        raise FlagError(f"{path} is a stage-1 checkpoint (the video autoencoder, which never saw a "
                        "blurry image): evaluate the stage-2 model trained from it")
    dataset = Blur2VidDataset(args.metadata_root, args.split, target_frames=args.target_frames,
                              data_root=args.data_root, augment=None, seed=args.seed, limit=args.test_limit,
                              check_files=file_check(args))
    if len(dataset.target_frames) != model.num_frames:
        raise FlagError(f"the model predicts {model.num_frames} frames, but the data gives "
                        f"{len(dataset.target_frames)}; pick {model.num_frames} with --target_frames")
    hypercut = load_hypercut(args.hypercut_path, map_location=device) if args.hypercut_path else None
    need = min_image_size(lpips=lpips is not None)
    if hypercut is not None:
        need["HyperCUT's f"] = hypercut.f_func.min_size
    check_image_sizes(None, None, dataset, eval_need=need)  # every image, before any work
    check_outputs_first(args, path, dataset, model.num_frames)

    folders = OutputFolders(args.save_images) if args.save_images else None
    signs: dict = {}  # utils.order_eval.sequence_signs of every batch, with the HyperCUT

    def on_batch(batch, pred):
        if hypercut is not None:
            for k, v in sequence_signs(pred, batch["frames"].to(pred.device), hypercut).items():
                signs.setdefault(k, []).append(v)
        if folders is not None:
            for entry_id, index, frames in zip(batch["id"], batch["index"].tolist(), pred):
                save_frames(frames, folders.folder(entry_folder(entry_id, index), f"entry {entry_id}"))

    metrics = SequenceMetrics(lpips=lpips, mode=args.p_mode)
    loader = make_eval_loader(dataset, args.batch_size, args.num_workers, device)
    predict = lambda net, blur, gt: predict_frames(net, blur, gt, args.middle_frame)  # noqa: E731
    scores = evaluate(model, loader, device, metrics, hypercut=hypercut, on_batch=on_batch, desc=args.split,
                      predict=tiled(predict, tile) if tile else predict, tile=tile, tileable=True)

    result = {}
    for name in METRICS:
        result[name] = metrics.per_frame(name)
        result[f"{name}_mean"] = metrics.mean(name)
    result.update(p_mode=args.p_mode, num_sequences=metrics.num_sequences, psnr_cap_db=metrics.psnr_cap_db,
                  lpips=lpips_status, tile=tile, middle_frame=MIDDLE_FRAME[args.middle_frame], split=args.split,
                  dataset_name=data_name, metadata_root=str(args.metadata_root), pretrained_path=path,
                  **backbone_checkpoint_fields(model))
    if scores is not None:
        ordering = hit_con(scores)
        result.update({k: ordering[k] for k in ORDERING}, hypercut_path=str(args.hypercut_path))
        result["order_of_predictions"] = summarise({k: torch.cat(v) for k, v in signs.items()})
    return result


def report(result: dict) -> str:
    """The markdown the script prints: p-metrics and plain metrics per frame, then hit/con."""
    t = len(result["pPSNR"])
    headers = ["metric"] + [str(k) for k in range(1, t + 1)] + ["avg"]

    def rows(names):
        return [[n] + (result[n] + [result[f"{n}_mean"]] if result[n] is not None else [None] * (t + 1))
                for n in names]

    oracle = " [oracle centre: the ground truth's central frame]" if result["middle_frame"] != "predicted" else ""
    tile = f", predicted in {result['tile']}x{result['tile']} tiles" if result.get("tile") else ""
    lines = [f"{result['backbone']['name']} ({result['pretrained_path']}) on {result['dataset_name']} "
             f"{result['split']}: {result['num_sequences']} sequences{tile}{oracle}",
             "", f"Order-agnostic (p_mode {result['p_mode']}):", "",
             markdown_table(headers, rows(METRICS[:3])),
             "", "In the predicted order:", "", markdown_table(headers, rows(METRICS[3:]))]
    if result["LPIPS"] is None:
        lines += ["", f"LPIPS {result['lpips']}."]
    if "hit" in result:
        lines += ["", f"HyperCUT ordering of the predictions ({result['hypercut_path']}):", "",
                  markdown_table(ORDERING, [[result[k] for k in ORDERING]])]
    if result.get("order_of_predictions"):
        o = result["order_of_predictions"]
        lines += ["", "Which order the predictions follow (fractions of sequences; R is gamed when pred_positive "
                      "is high and follows_hypercut is not):", "",
                  markdown_table(ORDER_FIGURES, [[o[k] for k in ORDER_FIGURES]])]
    return "\n".join(lines)


def write_results(result: dict, json_path) -> tuple[Path, Path]:
    """--output_json and the CSV beside it (one row per metric: frame_1..frame_T, mean), written as one: both
    new files, or (a full disk) both earlier ones as they were."""
    json_path = Path(json_path)
    t = len(result["pPSNR"])
    headers = ["metric"] + [f"frame_{k}" for k in range(1, t + 1)] + ["mean"]
    rows = [[n] + (result[n] + [result[f"{n}_mean"]] if result[n] is not None else [None] * (t + 1))
            for n in METRICS]
    if result["middle_frame"] != "predicted":  # the oracle label travels with the figures
        rows = [[f"{row[0]} (oracle centre)"] + row[1:] for row in rows]
    csv_path = json_path.with_suffix(".csv")
    atomic_write_files([(json_path, json_text(result).encode()), (csv_path, csv_text(headers, rows).encode())])
    return json_path, csv_path


def main_body(args) -> None:
    result = run_test(args)
    print(report(result))
    if args.output_json:
        json_path, csv_path = write_results(result, args.output_json)
        print(f"\nwrote {json_path} and {csv_path}")


def main(argv=None) -> int:
    return run_main(build_parser, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())

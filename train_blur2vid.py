"""Train a deblurring backbone (image -> 7 frames) with --loss_type naive, order_inv, hypercut (the
paper's) or pit (ours).

  python train_blur2vid.py --dataset_name syn --metadata_root data/synthetic --backbone Jin --loss_type order_inv
  python train_blur2vid.py --dataset_name syn --metadata_root data/synthetic --backbone Jin --loss_type hypercut \\
      --hypercut_path checkpoints/HyperCUT_ResnetIm2Vec_Concat_2frames_dim128_syn/models/0100.pth
  python train_blur2vid.py ... --resume                                   # continue the latest state
  torchrun --nproc_per_node 4 train_blur2vid.py ...                       # one process per device (DDP)

The run goes to checkpoints/<exp_name>/, by default the reference's name
Blur2Vid_<backbone>_<loss_type>_2frames_<dataset_name>, which test_blur2vid.py finds by itself.

Jin et al.'s four networks (middle frame, N8 pair, two N9 pairs) are trained jointly with one loss, as
HyperCUT does (Jin et al. trained them one after another).

Purohit et al. trains in two stages (models/backbones/purohit.py):
  python train_blur2vid.py --metadata_root data/synthetic --backbone Purohit --stage 1          # video autoencoder
  python train_blur2vid.py --metadata_root data/synthetic --backbone Purohit --loss_type hypercut \\
      --hypercut_path hc.pth --stage1_path checkpoints/Blur2Vid_Purohit_stage1_2frames_Synthetic/models/0100.pth
Stage 1 trains the recurrent video encoder and decoder (RVE + RVD) to rebuild the sharp sequences from
their central frame (naive loss at 4 scales + mu * flow TV). Stage 2 trains the blurred-image encoder
(BIE) through the stage-1 decoder (frozen unless --train_decoder), optionally pulled towards the RVE's
embedding (--embed_weight). The central frame the decoder warps is predicted by a centre network (Jin's
middle network), trained jointly (--center_weight) or loaded from a Jin checkpoint (--center_path,
frozen unless --train_center); --middle_frame gt uses the ground truth's instead: the oracle protocol of
the HyperCUT paper's tables. `hypercut` puts each ground-truth sequence
in the canonical order of a frozen HyperCUT and adds alpha * R, which pushes the predicted pairs to the
canonical side; with another loss, --hypercut_path only adds hit/con of the predictions at validation.

Writes <checkpoints_dir>/<exp_name>/: args.json, log.txt, tensorboard/ (every loss term, lr, val
pPSNR/pSSIM/PSNR/SSIM, hit/con, image strips), visualisations/ (blur | prediction | ground truth strips
every --display_step steps and at every validation), models/NNNN.pth (weights + backbone description,
loadable by models.load_backbone, test_blur2vid.py and inference.py) every --val_epoch epochs and at the
last epoch, and training_states/ (latest.pth every epoch, NNNN.pth at validation epochs) from which
--resume continues with the same losses as an uninterrupted run (on CPU).
"""
from __future__ import annotations

import utils.threads  # noqa: F401  (first: OpenMP's wait policy, before torch loads)

import sys
from pathlib import Path

import torch

from datasets.blur2vid import Blur2VidDataset, check_image_sizes, file_check
from datasets.metadata import dataset_inputs, dataset_name
from datasets.transforms import AugmentConfig
from losses import LOSSES, build_loss
from models import BACKBONES, backbone_checkpoint_fields, build_backbone, float_output, load_backbone
from models.hypercut import hit_con, load_hypercut
from utils.checkpoint import CheckpointError, state_dict_mismatch
from utils.cli import (ArgumentParser, above, add_data_args, add_runtime_args, add_train_args, at_least, check_flags,
                       loader_workers, run_main)
from utils.distributed import cleanup_process, setup_process
from utils.errors import FlagError
from utils.evaluation import evaluate, make_eval_loader
from utils.images import make_strip, save_png
from utils.metrics.sequence import SequenceMetrics, min_image_size
from utils.run import Run, blur2vid_run_name
from utils.training import TrainConfig, add_speed_args, denormals_flushed, fit, seed_everything


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Train a deblurring backbone (a blurry image -> 7 sharp frames) with the naive, order_inv, "
                    "hypercut or pit loss; the run goes to <checkpoints_dir>/<exp_name>/.",
        epilog="examples:\n"
               "  python train_blur2vid.py --metadata_root data/synthetic --backbone Jin --loss_type hypercut \\\n"
               "      --hypercut_path checkpoints/hypercut_syn/models/0024.pth\n"
               "  python train_blur2vid.py --metadata_root data/synthetic --backbone Purohit --stage 1    "
               "# then --stage 2 --stage1_path ...\n"
               "  torchrun --nproc_per_node 4 train_blur2vid.py --metadata_root data/reds     # one process per GPU")
    add_data_args(parser, limits=("train", "val"))
    add_runtime_args(parser, batch_size=8, num_workers="auto")
    add_train_args(parser, epochs=100, lr=5e-4, crop_size=256, val_epoch=5, display_step=500)
    add_speed_args(parser)
    g = parser.add_argument_group("deblurring")
    g.add_argument("--backbone", default="Jin", choices=BACKBONES.names(), help="deblurring network")
    g.add_argument("--width_mult", type=above(0, 4.0), default=1.0,
                   help="scale the backbone's internal widths (1.0: the official architecture)")
    g.add_argument("--loss_type", default="naive", choices=LOSSES.names(), help="training loss")
    g.add_argument("--hypercut_path", default=None,
                   help="a HyperCUT checkpoint (ours or the authors' state dict): needed by --loss_type "
                        "hypercut; with another loss, adds hit/con of the predictions at validation")
    g.add_argument("--alpha", type=at_least(0, kind=float), default=0.2, help="weight of the HyperCUT regulariser R")
    g.add_argument("--noise_targets", action="store_true",
                   help="add the augmentation's noise to the sharp targets too, as the reference does (default: "
                        "the blurry input only; copying the input is then not rewarded)")
    g.add_argument("--p_mode", default="pair", choices=("pair", "sequence"),
                   help="pPSNR/pSSIM: the paper's per-pair formula or the reference's whole-sequence one")
    g.add_argument("--center_path", default=None,
                   help="Jin, Purohit stage 2: start the middle (centre) network from this Jin or JinCenter checkpoint "
                        "(or Jin's official folder); it is then frozen unless --train_center")
    g.add_argument("--train_center", action="store_true", help="fine-tune the middle network loaded by --center_path")
    g.add_argument("--middle_frame", default="predicted", choices=("predicted", "gt"),
                   help="central frame of the backbone: its own prediction, or the ground truth's (an oracle)")
    g = parser.add_argument_group("Purohit")
    g.add_argument("--stage", type=int, default=2, choices=(1, 2),
                   help="1: the video autoencoder (RVE + RVD) on sharp sequences; 2: the blurred-image encoder")
    g.add_argument("--stage1_path", default=None, help="stage 2: the stage-1 checkpoint to start from")
    g.add_argument("--train_decoder", action="store_true", help="stage 2: fine-tune the RVD too (default: off, frozen)")
    g.add_argument("--embed_weight", type=at_least(0, kind=float), default=0.0,
                   help="stage 2: weight of the distance between the BIE's and the RVE's embeddings")
    g.add_argument("--center_weight", type=at_least(0, kind=float), default=1.0,
                   help="stage 2: weight of the Charbonnier term of a jointly trained centre network")
    g.add_argument("--center_width_mult", type=above(0, 4.0), default=None,
                   help="width of the centre network (default: --width_mult; 1.0 for Jin's official weights)")
    g.add_argument("--mu", type=at_least(0, kind=float), default=0.02,
                   help="weight of the flow regulariser (total variation)")
    return parser


PUROHIT_ONLY = ("stage1_path", "train_decoder", "embed_weight", "center_width_mult")


def check_args(args) -> None:
    check_flags(args)
    if args.loss_type == "hypercut" and not args.hypercut_path:
        raise FlagError("--loss_type hypercut needs --hypercut_path (a trained HyperCUT checkpoint)")
    if args.train_center and not args.center_path:
        raise FlagError("--train_center fine-tunes the middle network that --center_path loads: give --center_path")
    if args.backbone == "JinCenter" and (args.loss_type not in ("naive", "order_inv") or args.middle_frame == "gt"):
        raise FlagError("--backbone JinCenter trains the middle network alone on frame 4 (--target_frames 4): use "
                        "--loss_type naive and the predicted middle frame")
    if args.center_path and args.backbone not in ("Jin", "Purohit"):
        raise FlagError(f"--center_path starts the middle network of a Jin or Purohit backbone, not {args.backbone}")
    if args.backbone != "Purohit":
        given = [f"--{k}" for k in PUROHIT_ONLY if getattr(args, k) not in (None, False, 0.0)]
        if given or args.stage != 2:
            raise FlagError(f"{', '.join(given) or '--stage'}: Purohit options, but --backbone is {args.backbone}")
        return
    resuming = args.resume or args.load_epoch is not None
    if args.stage1_path and args.pretrained_path:
        raise FlagError("--stage1_path and --pretrained_path both choose the starting weights: give one (a stage-2 "
                        "run starts from --stage1_path; --pretrained_path continues from any checkpoint of this model)")
    if args.stage1_path and args.stage == 1:
        raise FlagError("--stage1_path is where a stage-2 run starts: --stage 1 trains the stage-1 model itself")
    if args.stage == 1 and args.loss_type != "naive":
        raise FlagError("--stage 1 trains an autoencoder of the stored sequences: use --loss_type naive")
    if args.stage == 2 and not (args.stage1_path or args.pretrained_path or resuming):
        raise FlagError("--stage 2 starts from a stage-1 checkpoint: pass --stage1_path (train it with --stage 1)")


def build_datasets(args, num_frames: int):
    if args.no_augment:  # crop only
        augment = AugmentConfig(crop_size=args.crop_size, affine_p=0.0, jitter_p=0.0, noise_p=0.0)
    else:
        augment = AugmentConfig(crop_size=args.crop_size, noise_targets=args.noise_targets)
    common = dict(target_frames=args.target_frames, data_root=args.data_root, seed=args.seed,
                  check_files=file_check(args))
    train_set = Blur2VidDataset(args.metadata_root, "train", augment=augment, limit=args.train_limit, **common)
    val_set = Blur2VidDataset(args.metadata_root, "val", augment=None, limit=args.val_limit, **common)
    if len(train_set.target_frames) != num_frames:
        example = "4" if num_frames == 1 else " ".join(str(k + 1) for k in range(num_frames))
        raise FlagError(f"the {args.backbone} backbone predicts {num_frames} frame{'s' if num_frames > 1 else ''}, "
                        f"but the data gives {len(train_set.target_frames)} (frames {train_set.target_frames}); pick "
                        f"{num_frames} with --target_frames (e.g. --target_frames {example})")
    return train_set, val_set


def load_frozen_hypercut(args, device, train_set, val_set):
    """The HyperCUT of --hypercut_path (None without), frozen, after checking that every image is large enough
    for it and for the val metrics (and --crop_size for the smallest training image); and the crop size the
    network really trains on, which every checkpoint records (for test_blur2vid.py --tile crop)."""
    hypercut = None
    crop_need, val_need = {}, min_image_size()
    if args.hypercut_path:
        hypercut = load_hypercut(args.hypercut_path, map_location=device).requires_grad_(False)
        val_need["HyperCUT's f"] = hypercut.f_func.min_size
        if args.loss_type == "hypercut":
            crop_need["HyperCUT's f"] = hypercut.f_func.min_size
    return hypercut, check_image_sizes(train_set, args.crop_size, val_set, crop_need=crop_need, eval_need=val_need)


def load_weights(model, path, args, flag: str) -> None:
    """Start from a backbone's weights (our checkpoint, or an official-weights folder)."""
    source = load_backbone(path, name=args.backbone, width_mult=args.width_mult)
    problem = state_dict_mismatch(model.state_dict(), source.state_dict())
    if problem:
        raise CheckpointError(f"{flag} {path} does not fit a {args.backbone} backbone of width {args.width_mult}: "
                              f"{problem}")
    if flag == "--stage1_path" and source.training_stage != 1:
        raise CheckpointError(f"--stage1_path {path} is not a stage-1 checkpoint (train one with --stage 1)")
    model.load_state_dict(source.state_dict())


def build_model(args, device):
    """The backbone with its starting weights; for Purohit, only the stage's modules are trainable."""
    kwargs = {"width_mult": args.width_mult}
    if args.backbone == "Purohit":
        kwargs["center_width_mult"] = args.center_width_mult
    model = build_backbone(args.backbone, **kwargs)
    resuming = args.resume or args.load_epoch is not None
    if args.pretrained_path and not resuming:
        load_weights(model, args.pretrained_path, args, "--pretrained_path")
    if args.backbone == "Jin" and args.center_path:
        from models.backbones.jin import load_middle_network
        if not resuming:
            load_middle_network(model.center, args.center_path, f"--width_mult {args.width_mult:g}")
        model.center.requires_grad_(args.train_center)
    if args.backbone == "Purohit":
        from models.backbones.purohit import load_center_from_jin
        if args.stage == 2 and args.stage1_path and not resuming and not args.pretrained_path:
            load_weights(model, args.stage1_path, args, "--stage1_path")
        if args.center_path and not resuming:
            load_center_from_jin(model, args.center_path)
        predicted = args.middle_frame == "predicted"
        model.set_trainable(args.stage, train_decoder=args.train_decoder,
                            train_center=predicted and (args.train_center or not args.center_path))
    return model.to(device)


def train(args) -> dict:
    """The whole run; returns {"losses": [per-step total], "terms": [per-step terms], "val": {epoch: figures}}
    of this call."""
    check_args(args)
    device, dist_info = setup_process(args.device)
    try:
        with denormals_flushed():
            return _train(args, device, dist_info)
    finally:
        cleanup_process()


def _train(args, device, dist_info) -> dict:
    seed_everything(args.seed)
    data_name = dataset_name(args.metadata_root, args.dataset_name)
    stage1 = args.backbone == "Purohit" and args.stage == 1
    model = build_model(args, device)
    train_set, val_set = build_datasets(args, model.num_frames)
    if dist_info.world_size > len(val_set):
        raise FlagError(f"the val split has {len(val_set)} sequences, fewer than the {dist_info.world_size} processes")
    hypercut, trained_crop = load_frozen_hypercut(args, device, train_set, val_set)
    multiscale = getattr(model, "num_scales", 1) > 1
    options = dict(mu=args.mu, embed_weight=args.embed_weight, center_weight=args.center_weight,
                   embed_target=model.encode_video if args.embed_weight > 0 else None) if multiscale else {}
    loss_fn = build_loss(args.loss_type, hypercut=hypercut, alpha=args.alpha, multiscale=multiscale,
                         **options).to(device)
    # after every check of the flags and the data
    exp_name = args.exp_name or blur2vid_run_name(args.backbone, "stage1" if stage1 else args.loss_type, data_name)
    config = TrainConfig.from_args(args, dataset_name=data_name, exp_name=exp_name, trained_crop=trained_crop,
                                   num_workers=loader_workers(args.num_workers))
    run = Run(config.flags, dist_info, inputs=dataset_inputs(args.metadata_root, data_root=args.data_root))
    val_loader = make_eval_loader(val_set, args.batch_size, config.num_workers, device, dist_info)
    last = {}

    def forward(net, blur, gt):
        if stage1:
            return net(None, sharp_frames=gt)
        return net(blur, gt[:, gt.shape[1] // 2] if args.middle_frame == "gt" else None)

    def step_fn(net, batch, amp):
        blur = batch["blur"].to(device, non_blocking=True)
        gt = batch["frames"].to(device, non_blocking=True)
        if args.channels_last:
            blur = blur.contiguous(memory_format=torch.channels_last)
        with amp():
            out = forward(net, blur, gt)
        last.update(blur=blur, pred=out["frames"].detach(), gt=gt)
        return loss_fn(float_output(out), gt)

    def on_display(step):
        strip = make_strip(last["blur"], last["pred"].float(), last["gt"])
        save_png(strip, run.vis_dir / f"train_step{step:07d}.png")
        run.writer.add_image("train/strip", strip, step)

    def validate_fn(net, epoch):
        """pPSNR/pSSIM/PSNR/SSIM (no LPIPS) and, with a HyperCUT, hit/con of the predictions on the val
        split, over all ranks; blur | prediction | ground truth strips go to visualisations/ and TensorBoard."""
        metrics = SequenceMetrics(lpips=None, mode=args.p_mode)
        seen = [0]

        def show(batch, pred):
            k = seen[0]
            seen[0] += 1
            wanted = k % args.img_log_freq == 0 if args.img_log_freq else k == 0
            if wanted and dist_info.is_main:
                strip = make_strip(batch["blur"], pred, batch["frames"])
                save_png(strip, run.vis_dir / (f"val_epoch{epoch:04d}.png" if k == 0 else f"val_epoch{epoch:04d}_{k:04d}.png"))
                if run.writer is not None and k == 0:
                    run.writer.add_image("val/strip", strip, epoch)

        scores = evaluate(net, val_loader, device, metrics, hypercut=hypercut, on_batch=show, desc="val",
                          dist_info=dist_info, predict=lambda n, blur, gt: forward(n, blur, gt)["frames"].float())
        figures = {name: metrics.mean(name) for name in ("pPSNR", "pSSIM", "PSNR", "SSIM")}
        if scores is not None:
            figures.update({k: v for k, v in hit_con(scores).items() if k != "num_sequences"})
        return figures

    fields = backbone_checkpoint_fields(model)
    if args.backbone == "Purohit":
        fields["stage"] = args.stage
    try:  # the run folder's lock is let go however the run ends
        return fit(config, model=model, train_set=train_set, val_set=val_set, step_fn=step_fn, validate_fn=validate_fn,
                   fields=fields, run=run, device=device, dist_info=dist_info, on_display=on_display,
                   log_model=f"backbone {fields['backbone']}, input convention {model.input_convention}, "
                             f"{sum(p.numel() for p in model.parameters()):,} parameters "
                             f"({sum(p.numel() for p in model.parameters() if p.requires_grad):,} trained); loss "
                             f"{'naive (stage 1 autoencoder)' if stage1 else args.loss_type}"
                             + (f" (alpha {args.alpha})" if args.loss_type == "hypercut" else "")
                             + (f"; HyperCUT {args.hypercut_path}" if hypercut is not None else "")
                             + (f"; stage {args.stage}" if args.backbone == "Purohit" else "")
                             + ("; central frame: ground truth (oracle)" if args.middle_frame == "gt" else ""))
    finally:
        run.close()


def main(argv=None) -> int:
    return run_main(build_parser, train, argv,
                    interrupted="interrupted; continue with --resume (from the last finished epoch)")


if __name__ == "__main__":
    sys.exit(main())

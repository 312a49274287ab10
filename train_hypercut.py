"""Train the HyperCUT ordering model on the sharp frames of a dataset.

  python train_hypercut.py --dataset_name syn --metadata_root data/synthetic
  python train_hypercut.py --dataset_name syn --metadata_root data/synthetic --resume
  torchrun --nproc_per_node 4 train_hypercut.py ...       # one process per device (DDP)

The run goes to checkpoints/<exp_name>/, by default the reference's name
HyperCUT_<f_func>_<g_func>_2frames_dim<out_dim>_<dataset_name> (the dataset name defaults to the
metadata's "name").

Each training sequence (B, 7, 3, H, W) gives the pairs P1 = (x1, x7), P2 = (x2, x6), P3 = (x3, x5) and
their reverses; the six pairs go through f in one batched call, and the loss pushes each pair and its
reverse to opposite sides of the fixed hyperplane while keeping the three nested pairs on one side.
Only the sharp frames are used. Training frames get the reference's augmentations (the same draw for every
frame of a sequence); validation uses full images without augmentation.

The model takes the reference's input convention (BGR, ImageNet mean/std), recorded in every
checkpoint, so our checkpoints and the authors' released ones are interchangeable.

Writes <checkpoints_dir>/<exp_name>/: args.json, log.txt, tensorboard/ (losses every --train_step steps,
a histogram of h(d1) every --display_step steps, val hit/con), models/NNNN.pth (loadable by
models.hypercut.load_hypercut, test_hypercut.py and generate_order.py) every --val_epoch epochs and at
the last epoch, and training_states/ (latest.pth every epoch, NNNN.pth at validation epochs) from
which --resume continues with the same losses as an uninterrupted run (on CPU).

Learning rate. The default is the reference's (Adamax 5e-4). With the released activation
(slope 1.0) f is linear up to its residual blocks, and Adamax's first steps move every weight by about
lr, so at 5e-4 (and 1e-4) the first steps rescale all scores by large factors; the loss then settles in
its saddle at zero scores (loss ln 2 = 0.693, val hit near 0), where the gradients vanish and Adamax's
memory of the early large gradients keeps the steps tiny. On small data or short runs use a lower lr;
on the embedded dataset (360 training sequences, crops of 64) 5e-5 and 2e-5 both left the saddle
within 150-350 steps in our trials, and a real slope (0.2) at 1e-4 or 3e-5 stayed in it for 400. The CPU demo (about 5 minutes on 2 cores; test split:
hit 0.99, con@2 0.94, con@3 0.93):

  python prepare_dataset.py synthetic --out data/synthetic
  python train_hypercut.py --metadata_root data/synthetic --exp_name hypercut_syn --device cpu \
      --crop_size 64 --batch_size 8 --lr 5e-5 --epochs 24 --decay_type step_12_18_22 --gamma 0.5 \
      --val_epoch 4 --num_workers 1
  python test_hypercut.py --metadata_root data/synthetic --pretrained_path checkpoints/hypercut_syn/models/0024.pth
"""
from __future__ import annotations

import utils.threads  # noqa: F401  (first: OpenMP's wait policy, before torch loads)

import sys

from datasets.blur2vid import Blur2VidDataset, check_image_sizes, file_check
from datasets.metadata import dataset_inputs, dataset_name
from datasets.transforms import AugmentConfig
from models.convention import REFERENCE_BGR_IMAGENET
from models.hypercut import (F_FUNCS, G_FUNCS, REFERENCE_SLOPE, HyperCUT, OrderingObjective, hit_con,
                             hypercut_loss, load_hypercut, sequence_pairs)
from utils.checkpoint import CheckpointError, state_dict_mismatch
from utils.cli import (ArgumentParser, Range, add_data_args, add_runtime_args, add_train_args, at_least, check_flags,
                       loader_workers, run_main)
from utils.distributed import cleanup_process, setup_process
from utils.errors import FlagError
from utils.evaluation import hypercut_scores, make_eval_loader
from utils.run import Run, hypercut_run_name
from utils.training import TrainConfig, add_speed_args, denormals_flushed, fit, seed_everything


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Train the HyperCUT ordering model (an encoder f and a fixed hyperplane) on the sharp frames of a "
                    "dataset; the run goes to <checkpoints_dir>/<exp_name>/.",
        epilog="examples:\n"
               "  python train_hypercut.py --metadata_root data/synthetic --exp_name hypercut_syn --crop_size 64 \\\n"
               "      --batch_size 8 --lr 5e-5 --epochs 24 --decay_type step_12_18_22 --gamma 0.5 --val_epoch 4\n"
               "  python train_hypercut.py --metadata_root data/synthetic --exp_name hypercut_syn --resume\n"
               "  torchrun --nproc_per_node 4 train_hypercut.py --metadata_root data/reds     # one process per GPU")
    add_data_args(parser, limits=("train", "val"))
    add_runtime_args(parser, batch_size=8, num_workers="auto")
    add_train_args(parser, epochs=100, lr=5e-4, crop_size=256, val_epoch=5, display_step=100, images=False)
    add_speed_args(parser)
    g = parser.add_argument_group("HyperCUT")
    g.add_argument("--out_dim", type=at_least(1, 1024), default=128,
                   help="embedding size D (the hyperplane has D+1 values)")
    g.add_argument("--f_func", default="ResnetIm2Vec", choices=F_FUNCS.names(), help="pair encoder f")
    g.add_argument("--g_func", default="Concat", choices=G_FUNCS.names(), help="pair joiner g")
    g.add_argument("--slope", type=Range(float), default=REFERENCE_SLOPE,
                   help="negative slope of f's LeakyReLUs; 1.0 (identity) is the released model's")
    x = parser.add_argument_group("our extensions (lab/ordering.md; off by default)")
    x.add_argument("--subcrop_size", type=at_least(1), default=None,
                   help="train on --subcrops random crops of this size taken from each training crop")
    x.add_argument("--subcrops", type=at_least(1), default=2, help="sub-crops per sequence (with --subcrop_size)")
    x.add_argument("--crop_consistency", type=at_least(0, kind=float), default=0.0,
                   help="weight of the term asking a sequence's sub-crops to land on one side (0: the paper)")
    x.add_argument("--lowpass", type=at_least(0, 64.0, kind=float), default=0.0, metavar="SIGMA",
                   help="Gaussian low-pass (sigma in pixels) of both frames before f, kept in the checkpoint and "
                        "applied wherever the model judges (0: the paper)")
    return parser


def check_args(args) -> None:
    check_flags(args)
    if args.target_frames is not None and len(args.target_frames) < 6:
        raise FlagError(f"--target_frames: HyperCUT needs at least 6 frames (three nested pairs), "
                        f"got {len(args.target_frames)}")
    if args.subcrop_size is not None and not 1 <= args.subcrop_size <= args.crop_size:
        raise FlagError(f"--subcrop_size must be in 1..--crop_size ({args.crop_size}), got {args.subcrop_size}")
    if args.crop_consistency > 0 and (args.subcrop_size is None or args.subcrops < 2):
        raise FlagError("--crop_consistency needs --subcrop_size and --subcrops >= 2")


def build_model(args) -> HyperCUT:
    # Reference convention (BGR, ImageNet statistics) so checkpoints match the released ones.
    return HyperCUT(out_dim=args.out_dim, f_func=args.f_func, g_func=args.g_func, slope=args.slope,
                    input_convention=REFERENCE_BGR_IMAGENET, lowpass=args.lowpass)


def build_datasets(args):
    if args.no_augment:  # crop only
        augment = AugmentConfig(crop_size=args.crop_size, affine_p=0.0, jitter_p=0.0, noise_p=0.0)
    else:
        augment = AugmentConfig(crop_size=args.crop_size, noise_targets=True)  # HyperCUT reads the frames
    common = dict(target_frames=args.target_frames, data_root=args.data_root, seed=args.seed,
                  check_files=file_check(args))
    train_set = Blur2VidDataset(args.metadata_root, "train", augment=augment, limit=args.train_limit, **common)
    val_set = Blur2VidDataset(args.metadata_root, "val", augment=None, limit=args.val_limit, **common)
    frames = len(train_set.target_frames)
    if frames < 6:
        raise FlagError(f"HyperCUT needs sequences of at least 6 frames (three nested pairs), but "
                        f"{args.metadata_root} gives {frames}"
                        + (" (--target_frames)" if args.target_frames is not None else " per sequence"))
    sequence_pairs(frames)
    return train_set, val_set


def load_pretrained(model: HyperCUT, path) -> None:
    """--pretrained_path: start from a HyperCUT's weights (ours or the reference's state dict)."""
    source = load_hypercut(path)
    problem = state_dict_mismatch(model.state_dict(), source.state_dict())
    if problem or source.config != model.config:
        raise CheckpointError(f"--pretrained_path {path} holds a HyperCUT with {source.config}, the flags ask for "
                              f"{model.config}" + (f": {problem}" if problem else ""))
    model.load_state_dict(source.state_dict())


def train(args) -> dict:
    """The whole run; returns {"losses": [per-step total loss], "terms": [...], "val": {epoch: figures}}."""
    check_args(args)
    device, dist_info = setup_process(args.device)
    try:
        with denormals_flushed():  # confidently ordered pairs underflow into slow CPU denormals
            return _train(args, device, dist_info)
    finally:
        cleanup_process()


def _train(args, device, dist_info) -> dict:
    seed_everything(args.seed)
    data_name = dataset_name(args.metadata_root, args.dataset_name)
    train_set, val_set = build_datasets(args)  # data and flag errors surface before the run folder exists
    model = build_model(args).to(device)
    need = {"HyperCUT's f": model.f_func.min_size}
    check_image_sizes(train_set, args.crop_size, val_set, crop_need=need, eval_need=need)
    if args.pretrained_path and not (args.resume or args.load_epoch is not None):
        load_pretrained(model, args.pretrained_path)
    exp_name = args.exp_name or hypercut_run_name(args.f_func, args.g_func, args.out_dim, data_name)
    config = TrainConfig.from_args(args, dataset_name=data_name, exp_name=exp_name,
                                   num_workers=loader_workers(args.num_workers))
    run = Run(config.flags, dist_info, inputs=dataset_inputs(args.metadata_root, data_root=args.data_root))
    val_loader = make_eval_loader(val_set, args.batch_size, config.num_workers, device, dist_info)
    last = {}

    objective = OrderingObjective(args.subcrop_size, args.subcrops, args.crop_consistency, args.seed)

    def step_fn(net, batch, amp):
        frames = batch["frames"].to(device, non_blocking=True)
        # the paper's loss on the scores (B, 6) of d1, dbar1, d2, dbar2, d3, dbar3, plus our optional crop
        # term; sub-crops are drawn from (epoch, batch indices), so a resumed run draws the same ones
        with amp():
            total, l_diff, l_same, l_crop, scores = objective(net, frames, (train_set.epoch, batch["index"].tolist()))
        last["scores"] = scores.detach()
        terms = {"total": total, "diff": l_diff, "same": l_same}
        return total, {**terms, "crop": l_crop} if args.crop_consistency else terms

    def validate_fn(net, epoch):
        """Loss and hit/consistency of the val split (full images, no augmentation), over all ranks."""
        scores = hypercut_scores(net, val_loader, device, desc="val", dist_info=dist_info)
        total, l_diff, l_same = hypercut_loss(scores.double())
        return {"loss": total.item(), "diff": l_diff.item(), "same": l_same.item(), **hit_con(scores)}

    def on_display(step):
        if run.writer is not None:
            run.writer.add_histogram("train/h_d1", last["scores"][:, 0].float().cpu(), step)

    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    try:  # the run folder's lock is let go however the run ends
        return fit(config, model=model, train_set=train_set, val_set=val_set, step_fn=step_fn, validate_fn=validate_fn,
                   fields=model.checkpoint_fields(), run=run, device=device, dist_info=dist_info, on_display=on_display,
                   log_model=f"HyperCUT {model.config}, input convention {model.input_convention}, "
                             f"{trained:,} trained parameters")
    finally:
        run.close()


def main(argv=None) -> int:
    return run_main(build_parser, train, argv,
                    interrupted="interrupted; continue with --resume (from the last finished epoch)")


if __name__ == "__main__":
    sys.exit(main())

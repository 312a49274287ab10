"""HyperCUT ordering model: g joins two frames, f embeds the pair, a fixed hyperplane scores it.

A pair of frames (x_i, x_j) of a sharp sequence maps to d = f(g(x_i, x_j)) in R^D; the hyperplane's
score h(d) should have opposite signs for a pair and its reverse, and the same sign for the nested
pairs P1 = (x1, x7), P2 = (x2, x6), P3 = (x3, x5) of one sequence. The side of P1 then names a
canonical order for every sequence; `hit_con` gives the rates at which a set's scores keep these rules
(the paper's hit and con@k).

Module and parameter names follow the authors' code, so their plain state dict
(`f_func.model.N...`, `hyperplane.hyperplane`) loads as is with strict=True.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.chunking import chunk_size, default_budget
from models.convention import REFERENCE_BGR_IMAGENET, InputConvention
from models.hypercut_ext import crop_consistency_loss, random_subcrops  # also registers our f's in F_FUNCS
from models.registries import F_FUNCS, G_FUNCS
from utils.checkpoint import CheckpointError, load_checkpoint, state_dict_mismatch
from utils.seeds import stable_seed

# The released f uses `nn.LeakyReLU(True)`, which passes True as negative_slope: slope 1.0, so the
# "activation" is the identity and f is linear up to its residual blocks' ReLUs. The authors' weights
# only reproduce with it, so it stays the default; `slope` gives a real LeakyReLU for new training.
REFERENCE_SLOPE = 1.0
HYPERPLANE_SEED = 42


@G_FUNCS.register("Concat")
class ConcatG(nn.Module):
    """g: joins frames on the channel axis, (B, 3, H, W) x k -> (B, 3k, H, W)."""

    def __init__(self, num_frames: int = 2, channels: int = 3):
        super().__init__()
        self.num_frames = num_frames
        self.out_channels = num_frames * channels

    def forward(self, *frames: torch.Tensor) -> torch.Tensor:
        if len(frames) != self.num_frames:
            raise ValueError(f"ConcatG expects {self.num_frames} frames, got {len(frames)}")
        return torch.cat(frames, dim=1)


class ResidualBlock(nn.Module):
    """x + [reflect-pad 1, conv3x3, ReLU, reflect-pad 1, conv3x3]; `conv_block` indexes match the reference."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=True), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


@F_FUNCS.register("ResnetIm2Vec")
class ResnetIm2Vec(nn.Module):
    """f: image (B, in_channels, H, W) -> vector (B, out_dim).

    model = [pad, conv7x7, act] + 5 x [stride-2 conv3x3, act] + 6 residual blocks, then a global mean.
    Indexes: stem conv at 1, down convs at 3, 5, ..., 11, residual blocks at 13..18. Five stride-2
    convs followed by reflect-padded residual blocks need H and W of at least 33.

    With slope 1.0 the activations are nn.Identity (LeakyReLU(1.0) computes the identity at a cost) and
    the stem conv and the first down conv, two linear maps in a row, run as one 9x9 stride-2 conv
    (`fuse_stem`; see _fused_stem). Activations have no parameters, so the state dict is the same.
    Large batches are split into cache-sized chunks on a CPU (models/chunking.py; `chunk_bytes`
    overrides the budget, None = automatic).
    """

    def __init__(self, in_channels: int = 6, out_dim: int = 128, base_width: int = 32,
                 slope: float = REFERENCE_SLOPE, n_down: int = 5, n_blocks: int = 6):
        super().__init__()
        self.out_dim = out_dim

        def act() -> nn.Module:
            return nn.Identity() if slope == 1.0 else nn.LeakyReLU(slope)

        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, base_width, 7, bias=True),
            act(),
        ]
        for i in range(n_down):
            c_in = base_width if i == 0 else min(base_width * 2 ** i, out_dim)
            c_out = min(base_width * 2 ** (i + 1), out_dim)
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=True), act()]
        if c_out != out_dim:
            raise ValueError(f"out_dim {out_dim} is larger than the last down conv's width {c_out}")
        layers += [ResidualBlock(out_dim) for _ in range(n_blocks)]
        self.model = nn.Sequential(*layers)
        self.min_size = 2 ** n_down + 1  # the residual blocks' reflect padding needs 2 x 2 at the end
        self.fuse_stem = slope == 1.0 and n_down >= 1
        self.chunk_bytes: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"HyperCUT's f needs images of at least {self.min_size} x {self.min_size} pixels, "
                             f"got {tuple(x.shape[-2:])}")
        n = self.chunk_size(x)
        if n >= x.shape[0]:
            return self._embed(x)
        return torch.cat([self._embed(part) for part in x.split(n)])

    def chunk_size(self, x: torch.Tensor) -> int:
        """Samples per chunk for input x (B, C, H, W): the largest activation (the stem's output, or
        the first down conv's when fused) within the cache budget."""
        channels = self.model[3].out_channels // 4 if self.fuse_stem else self.model[1].out_channels
        bytes_per_item = channels * x.shape[-2] * x.shape[-1] * x.element_size()
        budget = self.chunk_bytes if self.chunk_bytes is not None else default_budget(x.device)
        return chunk_size(x.shape[0], bytes_per_item, budget)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.fuse_stem:
            return self.model[5:](self._fused_stem(x)).mean(dim=(2, 3))
        return self.model(x).mean(dim=(2, 3))

    def _fused_stem(self, x: torch.Tensor) -> torch.Tensor:
        """model[0:5] (reflect pad 3, conv7x7, identity, conv3x3 stride 2 zero pad 1, identity) as one
        conv: 3x fewer FLOPs, and no stem activation to store or back-propagate through.

        The composed kernel K = conv3x3 * conv7x7 is 9x9, applied with stride 2 to the input reflect-
        padded by 4. That equals the two layers except where the down conv reads its zero padding
        (stem rows/columns -1, and H or W when odd): K sees a made-up stem value there, so those
        contributions are computed on one-pixel strips and subtracted. Equal to the layer-by-layer
        result up to float rounding (about 1e-6 relative).
        """
        stem, down = self.model[1], self.model[3]
        w0, b0, w1, b1 = stem.weight, stem.bias, down.weight, down.bias
        h, w = x.shape[-2:]
        xq = F.pad(x, (4, 4, 4, 4), mode="reflect")  # rows/cols -4..H+3; -3..H+2 are the stem's own pad
        kernel = F.conv_transpose2d(w1, w0)  # K[o, c] = sum_m w1[o, m] (full conv) w0[m, c]: (C1, C0, 9, 9)
        bias = b1 + w1.sum(dim=(2, 3)) @ b0
        y = F.conv2d(xq, kernel, bias, stride=2)  # (B, C1, ceil(H/2), ceil(W/2))
        # Made-up stem values on the padding ring: stem row -1 (cols -1..W) reads xq rows 0..6, etc.
        y[:, :, 0] -= F.conv2d(F.conv2d(xq[:, :, :7], w0, b0), w1[:, :, :1], stride=(1, 2))[:, :, 0]
        if h % 2:
            y[:, :, -1] -= F.conv2d(F.conv2d(xq[:, :, h + 1:], w0, b0), w1[:, :, 2:], stride=(1, 2))[:, :, 0]
        # Columns: stem rows 0..H-1 only (the corners were removed with the rows), zeros at -1 and H.
        left = F.pad(F.conv2d(xq[..., :7], w0, b0)[:, :, 1:h + 1], (0, 0, 1, 1))
        y[..., 0] -= F.conv2d(left, w1[..., :1], stride=(2, 1))[..., 0]
        if w % 2:
            right = F.pad(F.conv2d(xq[..., w + 1:], w0, b0)[:, :, 1:h + 1], (0, 0, 1, 1))
            y[..., -1] -= F.conv2d(right, w1[..., 2:], stride=(2, 1))[..., 0]
        return y


class Hyperplane(nn.Module):
    """A fixed random hyperplane w in R^(D+1), uniform in [-1, 1], never trained (but saved)."""

    def __init__(self, dim: int, seed: int = HYPERPLANE_SEED):
        super().__init__()
        self.dim = dim
        gen = torch.Generator().manual_seed(seed)  # own generator: the global RNG is left alone
        w = torch.rand(dim + 1, generator=gen) * 2 - 1
        self.hyperplane = nn.Parameter(w, requires_grad=False)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        """Scores (...,) for embeddings (..., D).

        h(d) = d . w[:D] + w[D] * sum(d), i.e. sum_i d_i (w_i + w_D): the reference adds the last
        value to every coefficient instead of using it as an offset. Kept as is so released
        checkpoints (trained against this formula) keep their meaning.
        """
        if d.shape[-1] != self.dim:
            raise ValueError(f"hyperplane expects {self.dim}-d embeddings, got shape {tuple(d.shape)}")
        # score in at least float32, also under autocast (which would otherwise run the matmul in bf16/fp16)
        with torch.autocast(device_type=d.device.type, enabled=False):
            d = d.to(torch.promote_types(d.dtype, torch.float32))
            w = self.hyperplane.to(d.dtype)
            return d @ w[:-1] + w[-1] * d.sum(dim=-1)


def sequence_pairs(num_frames: int, include_reversed: bool = True) -> list[tuple[int, int]]:
    """0-based frame pairs P1 = (1, T), P2 = (2, T-1), P3 = (3, T-2) (1-based), each followed by its
    reverse when include_reversed: order d1, dbar1, d2, dbar2, d3, dbar3."""
    if num_frames < 6:
        raise ValueError(f"HyperCUT needs sequences of at least 6 frames (three distinct pairs), got {num_frames}")
    pairs = []
    for k in range(3):
        i, j = k, num_frames - 1 - k
        pairs += [(i, j), (j, i)] if include_reversed else [(i, j)]
    return pairs


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """A normalised 1-d Gaussian of standard deviation sigma (pixels), radius ceil(3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def separable_blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) convolved with kernel along W then H, per channel; borders replicated, so a
    constant image is unchanged."""
    c, r = x.shape[1], kernel.numel() // 2
    k = kernel.to(x.dtype)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class HyperCUT(nn.Module):
    """f, g and the hyperplane; `input_convention` says what space f's input is in.

    Frames given to `pair_scores` / `forward` are RGB in [0, 1], (B, T, 3, H, W); the `*_network`
    methods take frames already converted with `input_convention.to_network`.
    """

    def __init__(self, out_dim: int = 128, f_func: str = "ResnetIm2Vec", g_func: str = "Concat",
                 slope: float = REFERENCE_SLOPE, input_convention: InputConvention = REFERENCE_BGR_IMAGENET,
                 hyperplane_seed: int = HYPERPLANE_SEED, lowpass: float = 0.0):
        super().__init__()
        if not lowpass >= 0:
            raise ValueError(f"lowpass (a Gaussian's sigma in pixels) must be >= 0, got {lowpass}")
        g_class, f_class = G_FUNCS[g_func], F_FUNCS[f_func]
        if isinstance(input_convention, Mapping):
            input_convention = InputConvention.from_dict(input_convention)
        self.g_func = g_class(num_frames=2)
        self.f_func = f_class(in_channels=self.g_func.out_channels, out_dim=out_dim, slope=slope)
        self.hyperplane = Hyperplane(out_dim, seed=hyperplane_seed)
        self.input_convention = input_convention
        self.config = {"out_dim": int(out_dim), "f_func": f_func, "g_func": g_func, "slope": float(slope)}
        # Our extension (lab/ordering.md): both frames low-passed before g and f, so that f can only use
        # what survives a motion blur. Recorded in the config only when on: the paper's model is unchanged.
        self.lowpass = float(lowpass)
        if self.lowpass > 0:
            self.config["lowpass"] = self.lowpass
            self.register_buffer("_lowpass_kernel", gaussian_kernel1d(self.lowpass), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.config["out_dim"]

    def checkpoint_fields(self) -> dict:
        """What a checkpoint needs beside the state dict to rebuild this model (see load_hypercut)."""
        return {"hypercut_config": dict(self.config), "input_convention": self.input_convention.to_dict()}

    def to_network(self, frames_rgb01: torch.Tensor) -> torch.Tensor:
        return self.input_convention.to_network(frames_rgb01, channel_dim=-3)

    def embed_pair(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """d = f(g(a, b)) for frames (B, 3, H, W) in the network's space -> (B, D)."""
        if self.lowpass > 0:
            a, b = separable_blur(a, self._lowpass_kernel), separable_blur(b, self._lowpass_kernel)
        return self.f_func(self.g_func(a, b))

    def score(self, d: torch.Tensor) -> torch.Tensor:
        """h(d): (..., D) -> (...)."""
        return self.hyperplane(d)

    def embed_pairs(self, frames: torch.Tensor, pairs) -> torch.Tensor:
        """Embeddings (B, P, D) of the 0-based frame pairs of (B, T, 3, H, W) network-space frames,
        all P pairs stacked on the batch axis and sent through f in one call."""
        if frames.dim() != 5:
            raise ValueError(f"expected frames (B, T, C, H, W), got shape {tuple(frames.shape)}")
        B = frames.shape[0]
        first = torch.tensor([i for i, _ in pairs], device=frames.device)
        second = torch.tensor([j for _, j in pairs], device=frames.device)
        a = frames.index_select(1, first).flatten(0, 1)  # (B*P, C, H, W), batch-major
        b = frames.index_select(1, second).flatten(0, 1)
        return self.embed_pair(a, b).view(B, len(pairs), -1)

    def pair_scores_network(self, frames: torch.Tensor, include_reversed: bool = True):
        """Frames (B, T, 3, H, W) in the network's space -> (embeddings (B, P, D), scores (B, P)),
        P = 6 in the order d1, dbar1, d2, dbar2, d3, dbar3, or P = 3 (d1, d2, d3) without reverses."""
        d = self.embed_pairs(frames, sequence_pairs(frames.shape[1], include_reversed))
        return d, self.score(d)

    def pair_scores(self, frames_rgb01: torch.Tensor, include_reversed: bool = True):
        """As pair_scores_network, for RGB [0, 1] frames (B, T, 3, H, W)."""
        return self.pair_scores_network(self.to_network(frames_rgb01), include_reversed)

    def forward(self, frames_rgb01: torch.Tensor, include_reversed: bool = True):
        """pair_scores; call the module itself (not a method) when it is wrapped in DDP."""
        return self.pair_scores(frames_rgb01, include_reversed)

    def extra_repr(self) -> str:
        return f"config={self.config}, input_convention={self.input_convention}"


def hypercut_loss(scores: torch.Tensor):
    """(total, l_diff, l_same) for scores (B, 6) ordered d1, dbar1, d2, dbar2, d3, dbar3.

    L_diff = mean_k softplus(h(d_k) h(dbar_k)) pushes each pair and its reverse to opposite sides;
    L_same = mean of softplus(-h(d1)h(d2)), softplus(-h(d2)h(d3)), softplus(-h(d1)h(d3)) keeps the
    nested pairs of one sequence on one side; total = 0.5 L_diff + 0.5 L_same (batch means).
    """
    if scores.dim() != 2 or scores.shape[1] != 6:
        raise ValueError(f"expected scores (B, 6), got shape {tuple(scores.shape)}")
    u, v = scores[:, 0::2], scores[:, 1::2]
    l_diff = F.softplus(u * v).mean()
    same = torch.stack([u[:, 0] * u[:, 1], u[:, 1] * u[:, 2], u[:, 0] * u[:, 2]], dim=1)
    l_same = F.softplus(-same).mean()
    return 0.5 * l_diff + 0.5 * l_same, l_diff, l_same


class OrderingObjective:
    """HyperCUT's training loss on one batch, with our optional sub-crops and crop-consistency term.

    With subcrop_size None and weight 0 this is exactly the paper's loss on the batch as given.
    __call__(model, frames, key) -> (total, l_diff, l_same, l_crop, scores); l_crop is 0 when unused;
    key (any repr-able value) seeds the sub-crops. The loss is computed in float32.
    """

    def __init__(self, subcrop_size: int | None = None, subcrops: int = 2, weight: float = 0.0, seed: int = 0):
        if weight > 0 and (subcrop_size is None or subcrops < 2):
            raise ValueError("--crop_consistency needs --subcrop_size and --subcrops >= 2")
        self.subcrop_size, self.subcrops, self.weight, self.seed = subcrop_size, subcrops, float(weight), seed

    def __call__(self, model, frames: torch.Tensor, key):
        if self.subcrop_size is None:
            _, scores = model(frames)
            total, l_diff, l_same = hypercut_loss(scores.float())
            return total, l_diff, l_same, total.new_zeros(()), scores
        b = frames.shape[0]
        crops = random_subcrops(frames, self.subcrop_size, self.subcrops, stable_seed("subcrop", self.seed, key))
        _, scores = model(crops.flatten(0, 1))  # (B*K, 6)
        scores = scores.float()
        total, l_diff, l_same = hypercut_loss(scores)
        l_crop = crop_consistency_loss(scores[:, 0].view(b, self.subcrops))
        return total + self.weight * l_crop, l_diff, l_same, l_crop, scores


def _forward_scores(scores: torch.Tensor) -> torch.Tensor:
    """u_k = h(d_k), (B, 3), from scores (B, 6) (with reverses) or (B, 3)."""
    if scores.dim() == 2 and scores.shape[1] == 6:
        return scores[:, 0::2]
    if scores.dim() == 2 and scores.shape[1] == 3:
        return scores
    raise ValueError(f"expected scores (B, 6) or (B, 3), got shape {tuple(scores.shape)}")


def order_decisions(scores: torch.Tensor) -> torch.Tensor:
    """BoolTensor (B,): True where the sequence should be reversed, i.e. u1 < 0 and the nested pairs
    agree with it (u1 u2 > 0 and u1 u3 > 0). Inconsistent sequences are kept as they are."""
    u = _forward_scores(scores)
    return (u[:, 0] < 0) & (u[:, 0] * u[:, 1] > 0) & (u[:, 0] * u[:, 2] > 0)


def ordering_stats(scores: torch.Tensor | Iterable) -> dict[str, torch.Tensor]:
    """Per-sequence BoolTensors (N,) from hyperplane scores (N, 6) ordered h(d1), h(dbar1), h(d2),
    h(dbar2), h(d3), h(dbar3): hit1..hit3 (h(d_k) * h(dbar_k) < 0), con2 (sign h(d1) =
    sign h(d2)) and con3 (all three signs equal). Like the order rule (u1 * u2 > 0), a zero score
    agrees with nothing."""
    s = torch.as_tensor(scores).detach().to("cpu", torch.float64)
    if s.dim() != 2 or s.shape[1] != 6:
        raise ValueError(f"expected hyperplane scores shaped (N, 6), got {tuple(s.shape)}")
    u1, ub1, u2, ub2, u3, ub3 = s.unbind(1)
    return {"hit1": u1 * ub1 < 0, "hit2": u2 * ub2 < 0, "hit3": u3 * ub3 < 0,
            "con2": u1 * u2 > 0, "con3": (u1 * u2 > 0) & (u1 * u3 > 0)}


def hit_con(scores: torch.Tensor | Iterable) -> dict[str, float]:
    """Hit and consistency rates (the shares of ordering_stats) under the paper's names: hit,
    hit_x2_x6, hit_x3_x5 (pairs P1..P3), con@2, con@3, plus num_sequences. With N = 0 the rates are nan."""
    stats = ordering_stats(scores)
    n = stats["hit1"].numel()

    def rate(mask: torch.Tensor) -> float:
        return mask.double().mean().item() if n else math.nan

    return {"hit": rate(stats["hit1"]), "hit_x2_x6": rate(stats["hit2"]), "hit_x3_x5": rate(stats["hit3"]),
            "con@2": rate(stats["con2"]), "con@3": rate(stats["con3"]), "num_sequences": n}


_CONFIG_KEYS = ("out_dim", "f_func", "g_func", "slope", "lowpass")


def build_hypercut(config: Mapping | None = None, input_convention=None) -> HyperCUT:
    """HyperCUT from a config {out_dim, f_func, g_func, slope} (missing keys take the defaults);
    input_convention: an InputConvention or its dict (default: the reference's BGR/ImageNet)."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(_CONFIG_KEYS) - {"input_convention"})
    if unknown:
        raise ValueError(f"unknown HyperCUT config keys {unknown}; expected {list(_CONFIG_KEYS)}")
    conv = input_convention if input_convention is not None else config.pop("input_convention", None)
    config.pop("input_convention", None)
    if conv is None:
        conv = REFERENCE_BGR_IMAGENET
    return HyperCUT(**config, input_convention=conv)


def _is_hypercut_key(k: str) -> bool:
    return k.startswith(("f_func.", "g_func.", "hyperplane."))


def _strip_module_prefix(state: Mapping) -> dict:
    # Checkpoints saved from DataParallel/DDP wrappers carry "module." on every key.
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _shorten(keys, n: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_hypercut(path_or_state, map_location="cpu") -> HyperCUT:
    """Load a HyperCUT (in eval mode) from a file or an already loaded dict.

    Accepts our checkpoints ({"model": state_dict, "hypercut_config": {out_dim, f_func, g_func,
    slope}, "input_convention": InputConvention.to_dict(), ...}) and the authors' plain state dicts
    (keys f_func.* and hyperplane.*; BGR/ImageNet input, slope 1.0, out_dim from the hyperplane).
    Anything else raises CheckpointError naming the source and the problem.
    """
    if isinstance(path_or_state, (str, Path)):
        source = str(path_or_state)
        ckpt = load_checkpoint(path_or_state, map_location=map_location)
    else:
        source, ckpt = "<in-memory checkpoint>", path_or_state

    def fail(problem: str):
        raise CheckpointError(f"{source}: {problem}")

    if not isinstance(ckpt, Mapping):
        fail(f"expected a dict (a HyperCUT checkpoint or state dict), found {type(ckpt).__name__}")
    if "state_dict_G" in ckpt:
        fail("this is a Jin et al. network checkpoint (state_dict_G), not a HyperCUT model")

    if "model" in ckpt and isinstance(ckpt["model"], Mapping):  # our format
        state = _strip_module_prefix(ckpt["model"])
        config = ckpt.get("hypercut_config")
        if config is None:  # older files: take what we can from args/config
            extra = ckpt.get("config") or ckpt.get("args") or {}
            config = {k: extra[k] for k in _CONFIG_KEYS if isinstance(extra, Mapping) and k in extra}
        conv = ckpt.get("input_convention")
        if conv is None:
            fail("checkpoint has no input_convention; cannot tell what images the model expects")
        try:
            conv = InputConvention.from_dict(conv) if not isinstance(conv, InputConvention) else conv
        except (KeyError, TypeError, ValueError) as e:
            fail(f"bad input_convention {conv!r}: {e}")
    else:  # the reference's plain state dict
        state = _strip_module_prefix(ckpt)
        if not state or not all(isinstance(k, str) and _is_hypercut_key(k) for k in state):
            other = [k for k in state if not (isinstance(k, str) and _is_hypercut_key(k))]
            fail("not a HyperCUT checkpoint: expected our format (a 'model' entry) or the reference's "
                 f"state dict (keys f_func.*, hyperplane.*); found keys {_shorten(map(str, other))}")
        config, conv = {}, REFERENCE_BGR_IMAGENET

    w = state.get("hyperplane.hyperplane")
    if not torch.is_tensor(w) or w.dim() != 1:
        fail("missing the hyperplane (hyperplane.hyperplane): not a HyperCUT model")
    config = {k: config[k] for k in _CONFIG_KEYS if k in config}
    inferred = w.numel() - 1
    if "out_dim" in config and int(config["out_dim"]) != inferred:
        fail(f"out_dim mismatch: the config says {config['out_dim']} but the hyperplane has "
             f"{w.numel()} values (out_dim {inferred})")
    config["out_dim"] = inferred
    try:
        model = build_hypercut(config, input_convention=conv)
    except ValueError as e:
        fail(f"cannot build the model: {e}")
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        fail(f"does not match a HyperCUT model with config {model.config}: {problem}")
    model.load_state_dict(state)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()

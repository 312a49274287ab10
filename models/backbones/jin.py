"""Jin et al. (CVPR 2018, "Learning to Extract a Video Sequence from a Single Motion-Blurred Image").

Four networks, each predicting frames from the blurry image B and earlier estimates:

    x4 = Middle(B)
    x3 = N8a(B, x4, x4) + x4        x5 = N8b(B, x3, x4) + x4       (two separate N8)
    x2 = N9 (B, x4, x3) + x3        x6 = N9 (B, x4, x5) + x5       (one shared N9)
    x1 = N9'(B, x3, x2) + x2        x7 = N9'(B, x5, x6) + x6       (another shared N9)

Module names follow Jin's official code, so their released files (center_v3.pth, F35_N8.pth,
F26_N9_from_F35_N8.pth, F17_N9_from_F26_N9_from_F35_N8.pth) load with strict key matching.
Images are RGB in [0, 1], no normalisation (RGB_UNIT).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.chunking import chunk_size, default_budget
from models.convention import RGB_UNIT
from models.registries import BACKBONES
from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

# The trunks work at 1/4 (middle) and 1/5 (inner networks) resolution.
SIZE_MULTIPLE = 20


def _norm(channels: int) -> nn.InstanceNorm2d:
    # Per-image statistics in train and eval alike: the official networks keep no running stats.
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


def _conv(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False)


def _norm_relu_pair(x: torch.Tensor, norm_a: nn.InstanceNorm2d, norm_b: nn.InstanceNorm2d):
    """(relu(norm_a(x)), relu(norm_b(x))): the two branches of a block normalise the same input.

    Without autograd the statistics of x are computed once (_shared_norm_relu). Under autograd the two
    fused InstanceNorm kernels are faster than the shared form's backward (measured on CPU: a training
    step of a 144-channel block 7% slower, of a 64-channel block 30% slower with shared statistics;
    inference 3-11% faster), so with gradients enabled each branch keeps its own norm.
    """
    if torch.is_grad_enabled():
        return [F.relu(norm_a(x)), F.relu(norm_b(x))]
    return _shared_norm_relu(x, norm_a, norm_b)


def _shared_norm_relu(x: torch.Tensor, norm_a: nn.InstanceNorm2d, norm_b: nn.InstanceNorm2d):
    """_norm_relu_pair with the per-(image, channel) mean and variance of x computed once. Each output
    is x * scale + shift with scale = w / sqrt(var + eps) and shift = b - mean * scale, the form torch's
    own CPU kernel uses for normalisation with given statistics. Differentiable."""
    stats_x = x if x.dtype in (torch.float32, torch.float64) else x.float()  # e.g. bf16 under autocast
    var, mean = torch.var_mean(stats_x, dim=(2, 3), keepdim=True, correction=0)
    rstd = torch.rsqrt(var + norm_a.eps)
    out = []
    for norm in (norm_a, norm_b):
        scale = norm.weight.view(1, -1, 1, 1) * rstd
        shift = norm.bias.view(1, -1, 1, 1) - mean * scale
        out.append(torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype)).relu_())
    return out


def _dilated(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a 3x3 convolution with zero padding equal to its dilation. When the dilation is at least
    the image's height and width (small training crops: an 8x8 trunk meets dilation 8), every off-centre tap
    reads the padding, so the convolution is a 1x1 one with the centre tap: the same output and gradients
    (the off-centre taps' gradients are zero either way), about 5x less work for that layer on a CPU."""
    d = conv.dilation[0]
    if d > 1 and conv.kernel_size == (3, 3) and d >= x.shape[-1] and d >= x.shape[-2]:
        return F.conv2d(x, conv.weight[:, :, 1:2, 1:2])
    return conv(x)


class ResBlock(nn.Module):
    """x + [norm, ReLU, conv1x1](x) + [norm, ReLU, conv3x3, norm, ReLU, conv3x3](x), pre-activation."""

    def __init__(self, channels: int, dilation: tuple[int, int] = (1, 1)):
        super().__init__()
        self.norm1 = _norm(channels)
        self.conv1 = _conv(channels, channels, 1)
        self.norm2 = _norm(channels)
        self.conv2 = _conv(channels, channels, 3, dilation[0])
        self.norm4 = _norm(channels)
        self.conv4 = _conv(channels, channels, 3, dilation[1])

    def forward(self, x):
        a, b = _norm_relu_pair(x, self.norm1, self.norm2)
        y = _dilated(self.conv4, self.norm4(_dilated(self.conv2, b)).relu_())
        # in place on a conv output: its backward needs the conv's input and weight, not the output
        return y.add_(self.conv1(a)).add_(x)


class FusionBlock(nn.Module):
    """[norm, ReLU, conv1x1](x) + [norm, ReLU, conv3x3](x); no identity, so it may change width."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = _conv(cin, cout, 1)
        self.norm2 = _norm(cin)
        self.conv2 = _conv(cin, cout, 3)

    def forward(self, x):
        a, b = _norm_relu_pair(x, self.norm1, self.norm2)
        return self.conv2(b).add_(self.conv1(a))


def _stage(channels: int, dilations) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(channels, d) for d in dilations])


def scaled_width(base: int, width_mult: float) -> int:
    """A layer's channels at --width_mult: the official count scaled and rounded, at least 1."""
    return max(1, round(base * width_mult))


def _to_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, H, W) -> (B*C, factor**2, H/factor, W/factor): each colour on its own, space-to-depth."""
    b, c, h, w = x.shape
    return F.pixel_unshuffle(x.reshape(b * c, 1, h, w), factor)


def _to_space(x: torch.Tensor, factor: int, colours: int) -> torch.Tensor:
    """Inverse of _to_depth: (B*C, factor**2, h, w) -> (B, C, h*factor, w*factor)."""
    y = F.pixel_shuffle(x, factor)
    return y.reshape(-1, colours, y.shape[-2], y.shape[-1])


def _in_chunks(trunk, inputs: tuple, width: int, budget: int | None) -> torch.Tensor:
    """trunk(*inputs) over the batch axis in chunks whose width-channel activations fit the budget
    (default: the CPU cache share of models/chunking.py). The trunks see each colour of each image
    alone, so chunks of colours give the same result as the whole batch."""
    x = inputs[0]
    if budget is None:
        budget = default_budget(x.device)
    n = chunk_size(x.shape[0], width * x.shape[-2] * x.shape[-1] * x.element_size(), budget)
    if n >= x.shape[0]:
        return trunk(*inputs)
    return torch.cat([trunk(*parts) for parts in zip(*(t.split(n) for t in inputs))])


class MiddleNetwork(nn.Module):
    """Frame 4 from the blur (official file center_v3.pth). 4,972,032 parameters at width 1."""

    factor = 4

    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        depth, c, tail = self.factor ** 2, scaled_width(144, width_mult), scaled_width(64, width_mult)
        self.conv1_B = _conv(depth, c, 5)
        self.LocalGrad1 = _stage(c, [(1, 1)] * 3)
        self.LocalGrad2 = _stage(c, [(1, 2), (2, 4), (4, 8)])
        self.LocalGrad3 = _stage(c, [(8, 4), (4, 2), (2, 1)])
        self.LocalGrad4 = _stage(c, [(1, 1)] * 3)
        self.fuse1, self.fuse2, self.fuse3, self.fuse4 = (nn.Sequential(FusionBlock(c, depth)) for _ in range(4))
        # Full-resolution tail: the only place where colours mix.
        self.conv2 = _conv(3, tail, 3)
        self.GlobalGrad = nn.Sequential(ResBlock(tail))
        self.norm3 = _norm(tail)
        self.conv3 = _conv(tail, 3, 3)
        self.chunk_bytes: int | None = None  # trunk chunk budget; None = automatic (models/chunking.py)

    def forward(self, blur):
        b = _to_depth(blur, self.factor)
        y = _in_chunks(self._trunk, (b,), self.conv1_B.out_channels, self.chunk_bytes)
        y = self.GlobalGrad(self.conv2(_to_space(y, self.factor, blur.shape[1])))
        return self.conv3(F.relu(self.norm3(y))) + blur

    def _trunk(self, b):
        """Low-resolution part, one colour per batch item: (N, 16, h, w) -> (N, 16, h, w)."""
        f1 = self.LocalGrad1(self.conv1_B(b))
        f2 = self.LocalGrad2(f1)
        f3 = self.LocalGrad3(f2)
        f4 = self.LocalGrad4(f3)
        return b + self.fuse1(f1) + self.fuse2(f2) + self.fuse3(f3) + self.fuse4(f4)


class InnerNetwork(nn.Module):
    """A frame from the blur and two references S1, S2 (N8: 4 plain blocks per plain stage, N9: 2).

    Returns a residual: the caller adds the reference frame (see JinBackbone.forward).
    """

    factor = 5

    def __init__(self, plain_blocks: int, width_mult: float = 1.0):
        super().__init__()
        depth = self.factor ** 2
        cb, cs, tail = scaled_width(64, width_mult), scaled_width(32, width_mult), scaled_width(32, width_mult)
        c = cb + 2 * cs
        self.conv1_B = _conv(depth, cb, 5)
        self.conv1_S1 = _conv(depth, cs, 5)
        self.conv1_S2 = _conv(depth, cs, 5)
        self.LocalGrad1 = _stage(c, [(1, 1)] * plain_blocks)
        self.LocalGrad2 = _stage(c, [(1, 2), (4, 8), (8, 4), (2, 1)])
        self.LocalGrad3 = _stage(c, [(1, 1)] * plain_blocks)
        self.fuse1, self.fuse2, self.fuse3 = (nn.Sequential(FusionBlock(c, depth)) for _ in range(3))
        self.conv2 = _conv(3, tail, 3)
        self.GlobalGrad = nn.Sequential(FusionBlock(tail, tail))
        self.norm3 = _norm(tail)
        self.conv3 = _conv(tail, 3, 3)
        self.chunk_bytes: int | None = None  # trunk chunk budget; None = automatic (models/chunking.py)

    def forward(self, blur, s1, s2):
        depth = tuple(_to_depth(t, self.factor) for t in (blur, s1, s2))
        width = self.conv1_B.out_channels + 2 * self.conv1_S1.out_channels
        y = _in_chunks(self._trunk, depth, width, self.chunk_bytes)
        y = self.GlobalGrad(self.conv2(_to_space(y, self.factor, blur.shape[1])))
        return self.conv3(F.relu(self.norm3(y)))

    def _trunk(self, b, r1, r2):
        """Low-resolution part, one colour per batch item: 3 x (N, 25, h, w) -> (N, 25, h, w)."""
        f = torch.cat([self.conv1_B(b), self.conv1_S1(r1), self.conv1_S2(r2)], dim=1)
        f1 = self.LocalGrad1(f)
        f2 = self.LocalGrad2(f1)
        f3 = self.LocalGrad3(f2)
        return r2 + self.fuse1(f1) + self.fuse2(f2) + self.fuse3(f3)


def start_as_reference(net: nn.Module) -> None:
    """Zero the last convolution of a network whose output is added to a reference frame, so that a new
    network starts by returning the reference (x3 = x4, x2 = x3, ...) instead of the reference plus the
    noise of a random residual. Only the initialisation changes, not the architecture; measured on the
    dead-leaves world (narrow Jin, 40x40 crops, the true middle frame given, 400 steps): frames 1 and 7
    1.2 dB above the blur, against 1.1 dB below it with the default initialisation."""
    nn.init.zeros_(net.conv3.weight)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad bottom and right up to a multiple (nothing when already one)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    while ph or pw:
        # reflect padding must be smaller than the side it reflects; repeat for tiny images
        sh, sw = min(ph, x.shape[-2] - 1), min(pw, x.shape[-1] - 1)
        if (ph and sh <= 0) or (pw and sw <= 0):  # a 1-pixel side has nothing to reflect
            return F.pad(x, (0, pw, 0, ph), mode="replicate")
        x = F.pad(x, (0, sw, 0, sh), mode="reflect")
        ph, pw = ph - sh, pw - sw
    return x


@BACKBONES.register("JinCenter", config_keys=("width_mult",))
class JinCenterBackbone(nn.Module):
    """Jin's middle network alone, as a backbone: blur (B, 3, H, W) -> frame 4, {"frames": (B, 1, 3, H, W),
    "center": (B, 3, H, W)}. Trained with --target_frames 4, it needs no order (the middle frame is the
    same in both directions); its weights start the middle network of a Jin backbone (--center_path)."""

    input_convention = RGB_UNIT
    num_frames = 1

    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.width_mult = float(width_mult)
        self.center = MiddleNetwork(width_mult)

    def forward(self, blur: torch.Tensor, center: torch.Tensor | None = None) -> dict:
        if blur.dim() != 4 or blur.shape[1] != 3:
            raise ValueError(f"JinCenterBackbone expects (B, 3, H, W) images, got shape {tuple(blur.shape)}")
        if center is not None:
            raise ValueError("JinCenterBackbone predicts the middle frame itself: --middle_frame gt does not apply")
        h, w = blur.shape[-2:]
        b = pad_to_multiple(self.input_convention.to_network(blur, channel_dim=1), SIZE_MULTIPLE)
        x4 = self.input_convention.from_network(self.center(b)[..., :h, :w], channel_dim=1)
        return {"frames": x4[:, None], "center": x4}


# Official file layout: (name, file name, {our prefix: prefix inside that file}).
OFFICIAL_FILES = (
    ("center", "center_v3.pth", {"center.": ""}),
    ("f35", "F35_N8.pth", {"frame3.": "generateFrame3.", "frame5.": "generateFrame5."}),
    ("f26", "F26_N9_from_F35_N8.pth", {"frame26.": "generateFrame2_6."}),
    ("f17", "F17_N9_from_F26_N9_from_F35_N8.pth", {"frame17.": "generateFrame1_7."}),
)
# Buffers that old PyTorch versions stored for InstanceNorm; the networks never use them.
_STRAY_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _unwrap(obj, where: str) -> dict:
    """An official file's content -> its state dict, without stray running-stat buffers."""
    if isinstance(obj, dict) and "state_dict_G" in obj:
        obj = obj["state_dict_G"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{where}: expected {{'state_dict_G': state_dict}} or a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return {k: v for k, v in obj.items() if k.rsplit(".", 1)[-1] not in _STRAY_BUFFERS}


def load_official_jin(folder_or_dicts, width_mult: float = 1.0) -> JinBackbone:
    """A JinBackbone from Jin's four official files (a folder holding them) or a dict
    {"center", "f35", "f26", "f17"} of their state dicts."""
    model = JinBackbone(width_mult)
    if isinstance(folder_or_dicts, dict):
        model.load_official_state_dicts(folder_or_dicts)
        return model
    folder = Path(folder_or_dicts)
    if not folder.is_dir():
        raise CheckpointError(f"Jin official weights: folder not found: {folder}")
    dicts, sources = {}, {}
    for name, filename, _ in OFFICIAL_FILES:
        path = folder / filename
        if not path.is_file():
            raise CheckpointError(f"Jin official weights: {filename} ({name}) is missing from {folder}")
        dicts[name], sources[name] = load_checkpoint(path), str(path)
    model.load_official_state_dicts(dicts, sources)
    return model


@BACKBONES.register("Jin", config_keys=("width_mult",), load_official=load_official_jin)
class JinBackbone(nn.Module):
    """Blur (B, 3, H, W) RGB in [0, 1], any size -> frames 1..7 (B, 7, 3, H, W) RGB.

    width_mult scales the internal widths (144, 64, 128, 32 channels) for small runs; 1.0 is the
    official architecture, which the official files need. 18,213,376 parameters at 1.0.
    """

    input_convention = RGB_UNIT
    num_frames = 7

    def __init__(self, width_mult: float = 1.0, reference_start: bool = True):
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.width_mult = float(width_mult)
        self.center = MiddleNetwork(width_mult)
        self.frame3 = InnerNetwork(4, width_mult)  # N8a
        self.frame5 = InnerNetwork(4, width_mult)  # N8b
        self.frame26 = InnerNetwork(2, width_mult)  # N9, shared by frames 2 and 6
        self.frame17 = InnerNetwork(2, width_mult)  # N9', shared by frames 1 and 7
        if reference_start:  # the initialisation only (see start_as_reference); not a checkpoint setting
            for net in (self.frame3, self.frame5, self.frame26, self.frame17):
                start_as_reference(net)

    def forward(self, blur: torch.Tensor, center: torch.Tensor | None = None) -> dict:
        """The backbone contract (models/__init__.py): {"frames": (B, 7, 3, H, W), "center": frame 4}.
        center: a central frame (B, 3, H, W) to use instead of the middle network's (an oracle centre)."""
        if blur.dim() != 4 or blur.shape[1] != 3:
            raise ValueError(f"JinBackbone expects (B, 3, H, W) images, got shape {tuple(blur.shape)}")
        if center is not None and center.shape != blur.shape:
            raise ValueError(f"center {tuple(center.shape)} and blur {tuple(blur.shape)} differ in shape")
        h, w = blur.shape[-2:]
        b = pad_to_multiple(self.input_convention.to_network(blur, channel_dim=1), SIZE_MULTIPLE)
        if center is None:
            x4 = self.center(b)
        else:
            x4 = pad_to_multiple(self.input_convention.to_network(center, channel_dim=1), SIZE_MULTIPLE)
        x3 = self.frame3(b, x4, x4) + x4
        x5 = self.frame5(b, x3, x4) + x4
        # N9 and N9' serve both halves of the sequence: one call each on the two halves stacked along the
        # batch (every image is computed on its own, so the frames are the same as with two calls; a
        # narrow-Jin training step on CPU is 6% faster)
        n = b.shape[0]
        b2, x35 = torch.cat([b, b]), torch.cat([x3, x5])
        x26 = self.frame26(b2, torch.cat([x4, x4]), x35) + x35
        x17 = self.frame17(b2, x35, x26) + x26
        (x2, x6), (x1, x7) = x26.split(n), x17.split(n)
        frames = self.input_convention.from_network(torch.stack([x1, x2, x3, x4, x5, x6, x7], dim=1)[..., :h, :w],
                                                    channel_dim=2)
        return {"frames": frames, "center": frames[:, 3]}

    # --- official files ---------------------------------------------------------------------
    def official_state_dicts(self) -> dict:
        """{"center", "f35", "f26", "f17"}: state dicts with the official key names."""
        ours = self.state_dict()
        out = {}
        for name, _, prefixes in OFFICIAL_FILES:
            out[name] = {official + k[len(mine):]: v for mine, official in prefixes.items()
                         for k, v in ours.items() if k.startswith(mine)}
        return out

    def load_official_state_dicts(self, dicts: dict, sources: dict | None = None) -> None:
        """Load the four official state dicts (strict keys; stray running-stat buffers ignored).

        sources names each dict in error messages (e.g. its file path)."""
        expected = self.official_state_dicts()
        mapped = {}
        for name, filename, prefixes in OFFICIAL_FILES:
            where = (sources or {}).get(name, f"{filename} ({name!r})")
            if name not in dicts:
                raise CheckpointError(f"Jin official weights: no {name!r} state dict ({filename})")
            sd = _unwrap(dicts[name], where)
            want = expected[name]
            missing = [k for k in want if k not in sd]
            unexpected = [k for k in sd if k not in want]
            if missing or unexpected:
                parts = []
                if missing:
                    parts.append(f"missing {len(missing)} keys, e.g. {', '.join(missing[:3])}")
                if unexpected:
                    parts.append(f"unexpected {len(unexpected)} keys, e.g. {', '.join(unexpected[:3])}")
                raise CheckpointError(f"{where}: not the official Jin {filename} layout: {'; '.join(parts)}")
            for k, v in sd.items():
                if tuple(v.shape) != tuple(want[k].shape):
                    raise CheckpointError(
                        f"{where}: {k} has shape {tuple(v.shape)}, this model expects {tuple(want[k].shape)} "
                        f"(a checkpoint of another width? this model has width_mult={self.width_mult:g})")
            for mine, official in prefixes.items():
                mapped.update({mine + k[len(official):]: v for k, v in sd.items() if k.startswith(official)})
        self.load_state_dict(mapped, strict=True)


def save_official_jin(model: JinBackbone, folder) -> list[Path]:
    """Write the model as Jin's four official files ({"state_dict_G": state_dict} each)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, sd in model.official_state_dicts().items():
        filename = next(f for n, f, _ in OFFICIAL_FILES if n == name)
        save_checkpoint({"state_dict_G": {k: v.detach().cpu() for k, v in sd.items()}}, folder / filename)
        paths.append(folder / filename)
    return paths


# --- the middle network from a checkpoint -------------------------------------------------------
def middle_network_state(source) -> dict:
    """The middle network's weights (MiddleNetwork keys) from: a Jin or JinCenter backbone's state dict
    ("center.*" keys, "module." prefixes allowed), a checkpoint of this project holding one ({"model":
    ...}), Jin's official center_v3.pth content ({"state_dict_G": ...}), or a path to any of these files
    (a folder: its center_v3.pth)."""
    where = str(source) if isinstance(source, (str, Path)) else "Jin state dict"
    if isinstance(source, (str, Path)):
        path = Path(source)
        source = load_checkpoint(path / "center_v3.pth" if path.is_dir() else path)
    if not isinstance(source, dict):
        raise CheckpointError(f"{where}: expected a state dict, found {type(source).__name__}")
    if "state_dict_G" in source:  # an official file: the middle network's keys are bare
        return _unwrap(dict(source), where)
    state = source.get("model", source)
    name = source["backbone"].get("name") if isinstance(source.get("backbone"), dict) else None
    if name not in (None, "Jin", "JinCenter"):
        raise CheckpointError(f"{where}: holds a {name} backbone, not Jin or JinCenter")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    center = {k[len("center."):]: v for k, v in state.items() if k.startswith("center.")}
    if not center:
        raise CheckpointError(f"{where}: no 'center.*' weights (not a Jin backbone's state dict)")
    return center


def load_middle_network(net: MiddleNetwork, source, width_note: str = "") -> None:
    """Load a middle network's weights from `source` (see middle_network_state); one CheckpointError line
    when they do not fit (width_note names the width the caller asked for)."""
    state = middle_network_state(source)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"not a Jin middle network: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"Jin middle network {k} has shape {tuple(v.shape)}, this middle network "
                                  f"expects {tuple(own[k].shape)}" + (f" ({width_note})" if width_note else ""))
    net.load_state_dict(state, strict=True)

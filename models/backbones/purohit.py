"""Purohit et al. (CVPR 2019, "Bringing Alive Blurred Moments"): a video from one blurry image by
warping a central frame with recurrently predicted optical flow.

    stage 1 (autoencode):  sharp frames --RVE--> embedding --RVD(centre)--> 7 frames at 4 scales
    stage 2 (forward):     blur + centre --BIE--> embedding --RVD(centre)--> 7 frames at 4 scales

The embedding (128 channels at 1/8 resolution) is the initial hidden state of the decoder's
ConvLSTM (its cell state starts at zero). At every time step the RVD encodes the previous step's
full-resolution flow (zero at the first step), advances the ConvLSTM, predicts flow coarse to fine
and warps the central frame, downscaled per scale, by each flow.

Decisions (the reference has no RVE and no stage-1 code, and its defects, such as a flow feedback that is
always zero, are not copied):
- Time steps: the RVD runs 7 steps, step t producing frame t+1, the centre frame 4 included (step
  3 warps the centre by its own predicted flow, ideally zero). One step per frame keeps the
  recurrence on the uniform time line it models, and it is what the reference and the published
  figures imply: Purohit's frame-4 pPSNR with the ground-truth centre is 31.5 dB, not infinite.
- The previous flow really is fed back (the reference always feeds zero); `feed_back_flow=False`
  restores the reference's behaviour, for ablations. The feedback is not detached (full BPTT).
- RVE: per frame, the BIE's conv stack on the sharp frame alone (3 channels), then ConvLSTM(128,
  128, 3x3) over the 7 frames from a zero state; its last hidden state is the embedding.
- The coarser flow that a finer scale reads is upsampled and multiplied by 2, so that each scale's
  flow is in that scale's pixels (the reference upsamples without rescaling).
- Warping samples the frame at x + flow (bilinear, align_corners=True so that zero flow is exactly
  the identity); the mask marks pixels whose sample point lies inside the frame's area (up to half
  a pixel beyond the outer pixel centres, where the edge pixel is read), and the output is zero
  elsewhere. The reference masks everything beyond the outer centres (see backward_warp).
- Sizes: any H, W. Inputs are reflect-padded (bottom, right) to a multiple of 8; scale s of the
  output is cropped to ceil(H / 2^s) x ceil(W / 2^s). The centre is downscaled by 2x2 means
  (`pyramid`, the same function the losses use for the ground truth) before padding each scale,
  so every scale's source agrees with its target.
- The central frame comes from the centre network (Jin's middle network, `center_width_mult`)
  unless one is given to forward(): the ground-truth centre is the oracle of the HyperCUT tables.

Parameter counts at width_mult 1.0 (center_width_mult 1.0): BIE 1,648,704; RVE 2,824,064 (conv
encoder 1,643,904 + ConvLSTM 1,180,160); RVD 1,946,804 (flow encoder 488,976, ConvLSTM 1,180,160,
flow decoder 277,668); centre network 4,972,032 (Jin's middle network); total 11,391,604.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbones.jin import MiddleNetwork, load_middle_network, pad_to_multiple, scaled_width
from models.convention import RGB_UNIT
from models.registries import BACKBONES

NUM_SCALES = 4
SIZE_MULTIPLE = 2 ** (NUM_SCALES - 1)  # three stride-2 levels
LRELU_SLOPE = 0.1
# The BIE's seven 5x5 convolutions (channels, stride) as ported by the reference; the RVE reuses them.
IMAGE_ENCODER_LAYERS = ((64, 1), (64, 1), (64, 2), (128, 1), (128, 1), (128, 2), (128, 2))
FLOW_CHANNELS = (16, 32, 64, 128)  # flow encoder, finest to coarsest (the reference misread 64 as 164)
EMBEDDING_CHANNELS = 128


def area_downscale(x: torch.Tensor) -> torch.Tensor:
    """Halve the last two dimensions by 2x2 means: (..., H, W) -> (..., ceil(H/2), ceil(W/2)); a
    last odd row or column is averaged over the pixels it has (avg_pool2d with ceil_mode, no padding)."""
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    y = F.avg_pool2d(x.reshape(-1, 1, h, w), 2, ceil_mode=True)
    return y.reshape(*lead, *y.shape[-2:])


def pyramid(x: torch.Tensor, levels: int = NUM_SCALES) -> list[torch.Tensor]:
    """[x, x halved, x halved twice, ...]: `levels` tensors, finest to coarsest (area_downscale)."""
    out = [x]
    for _ in range(levels - 1):
        out.append(area_downscale(out[-1]))
    return out


def backward_warp(image: torch.Tensor, flow: torch.Tensor):
    """Sample image (B, C, H, W) at x + flow(x), flow (B, 2, H, W) in pixels (u right, v down).

    Returns (warped * mask, mask): mask (B, 1, H, W) is 1 where the sample point lies inside the
    image's area, [-0.5, W - 0.5] x [-0.5, H - 0.5] in pixel centres, and 0 elsewhere, where the
    output is 0. A point within half a pixel outside the outer centres reads the edge pixel.
    A constant flow (3, 0) shows the content 3 pixels to the left, and the last 3 columns are masked.
    """
    _, _, h, w = image.shape
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w) + flow[:, 0]
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1) + flow[:, 1]
    # The reference keeps only points between the outer pixel centres, so at the first steps every
    # border pixel whose small random flow points outwards is zeroed and gets no gradient (half the
    # pixels of a 4 x 4 coarsest scale); the pixel area is the frame's true extent.
    mask = ((xs >= -0.5) & (xs <= w - 0.5) & (ys >= -0.5) & (ys <= h - 0.5)).unsqueeze(1).to(image.dtype)
    # align_corners=True puts -1 and +1 on the centres of the first and last pixels, so pixel
    # coordinates map linearly and zero flow is the identity.
    grid = torch.stack([xs * (2 / max(w - 1, 1)) - 1, ys * (2 / max(h - 1, 1)) - 1], dim=-1)
    warped = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border",
                           align_corners=True)
    return warped * mask, mask


def _pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the last two dimensions (bottom, right) to a multiple; any leading shape."""
    lead = x.shape[:-3]
    y = pad_to_multiple(x.reshape(-1, *x.shape[-3:]), multiple)
    return y.reshape(*lead, *y.shape[-3:])


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM: one convolution over [input, h] gives the input, forget, output gates and
    the candidate; c' = f*c + i*g, h' = o*tanh(c')."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(in_channels + hidden_channels, 4 * hidden_channels, kernel_size,
                               padding=kernel_size // 2)

    def forward(self, x, state):
        h, c = state
        i, f, o, g = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class ResBlock(nn.Module):
    """lrelu(x + conv3x3(lrelu(conv3x3(x)))), convolutions without bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv2(F.leaky_relu(self.conv1(x), LRELU_SLOPE))
        return F.leaky_relu(x + y, LRELU_SLOPE)


def image_encoder(in_channels: int, width_mult: float) -> nn.Sequential:
    """Seven conv5x5 + LeakyReLU(0.1): 64, 64, 64/2, 128, 128, 128/2, 128/2 -> 1/8 resolution."""
    layers, cin = [], in_channels
    for channels, stride in IMAGE_ENCODER_LAYERS:
        cout = scaled_width(channels, width_mult)
        layers += [nn.Conv2d(cin, cout, 5, stride=stride, padding=2), nn.LeakyReLU(LRELU_SLOPE)]
        cin = cout
    return nn.Sequential(*layers)


class BlurredImageEncoder(nn.Module):
    """BIE: blur and central frame (6 channels) -> embedding (B, 128, H/8, W/8)."""

    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        self.encoder = image_encoder(6, width_mult)

    def forward(self, blur, center):
        return self.encoder(torch.cat([blur, center], dim=1))


class RecurrentVideoEncoder(nn.Module):
    """RVE: sharp frames (B, T, 3, H, W) -> embedding (B, 128, H/8, W/8), the ConvLSTM's last hidden
    state after reading the frames' features in order from a zero state."""

    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        self.encoder = image_encoder(3, width_mult)
        channels = scaled_width(EMBEDDING_CHANNELS, width_mult)
        self.lstm = ConvLSTMCell(channels, channels)

    def forward(self, frames):
        b, t = frames.shape[:2]
        features = self.encoder(frames.flatten(0, 1))
        features = features.view(b, t, *features.shape[1:])
        h = torch.zeros_like(features[:, 0])
        state = (h, torch.zeros_like(h))
        for i in range(t):
            state = self.lstm(features[:, i], state)
        return state[0]


class FlowEncoder(nn.Module):
    """Previous flow (B, 2, H, W) -> features at 4 scales, finest to coarsest: conv3x3 (stride 1,
    then 2) followed by a residual block, at 16, 32, 64, 128 channels."""

    def __init__(self, channels):
        super().__init__()
        cins = (2,) + tuple(channels[:-1])
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, 3, stride=1 if s == 0 else 2, padding=1), ResBlock(cout))
            for s, (cin, cout) in enumerate(zip(cins, channels)))

    def forward(self, flow):
        features = []
        for level in self.levels:
            flow = level(flow)
            features.append(flow)
        return features


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class FlowDecoder(nn.Module):
    """Flows coarse to fine. The coarsest from [encoder feature, ConvLSTM output]; each finer scale
    from [encoder feature, ConvLSTM output brought up to it (bilinear x2 + conv5x5 + LeakyReLU per
    step), coarser flow upsampled x2 and doubled]. Returns the flows finest to coarsest."""

    def __init__(self, channels, hidden_channels: int):
        super().__init__()
        n = len(channels)
        ups, heads = [], []
        for s in range(n - 1):  # scale s reads the ConvLSTM output at channels[s]
            cin = hidden_channels if s == n - 2 else channels[s + 1]
            ups.append(nn.Conv2d(cin, channels[s], 5, padding=2))
            heads.append(nn.Conv2d(2 * channels[s] + 2, 2, 3, padding=1))
        heads.append(nn.Conv2d(channels[-1] + hidden_channels, 2, 3, padding=1))
        self.ups, self.heads = nn.ModuleList(ups), nn.ModuleList(heads)

    def forward(self, hidden, features):
        n = len(features)
        flow = self.heads[n - 1](torch.cat([features[n - 1], hidden], dim=1))
        flows = [flow]
        for s in range(n - 2, -1, -1):
            hidden = F.leaky_relu(self.ups[s](_upsample(hidden)), LRELU_SLOPE)
            coarse = 2 * _upsample(flow)
            flow = self.heads[s](torch.cat([features[s], hidden, coarse], dim=1))
            flows.append(flow)
        return flows[::-1]


class RecurrentVideoDecoder(nn.Module):
    """RVD: embedding + central frame pyramid -> T frames by warping, at every scale."""

    def __init__(self, width_mult: float = 1.0, feed_back_flow: bool = True):
        super().__init__()
        channels = tuple(scaled_width(c, width_mult) for c in FLOW_CHANNELS)
        hidden = scaled_width(EMBEDDING_CHANNELS, width_mult)
        self.feed_back_flow = bool(feed_back_flow)
        self.flow_encoder = FlowEncoder(channels)
        self.lstm = ConvLSTMCell(channels[-1], hidden)
        self.flow_decoder = FlowDecoder(channels, hidden)

    def forward(self, embedding, center_pyramid, num_frames: int):
        """embedding (B, C, H/8, W/8) = initial hidden state; center_pyramid: the central frame at
        each scale, finest to coarsest, (B, 3, H/2^s, W/2^s) with H, W multiples of 8.

        Returns (frames, flows, masks): per scale, finest first, (B, T, 3|2|1, H/2^s, W/2^s).
        """
        b, _, h, w = center_pyramid[0].shape
        prev_flow = center_pyramid[0].new_zeros(b, 2, h, w)
        state = (embedding, torch.zeros_like(embedding))
        frames, flows, masks = ([[] for _ in center_pyramid] for _ in range(3))
        for _ in range(num_frames):
            features = self.flow_encoder(prev_flow)
            state = self.lstm(features[-1], state)
            step_flows = self.flow_decoder(state[0], features)
            for s, (center, flow) in enumerate(zip(center_pyramid, step_flows)):
                warped, mask = backward_warp(center, flow)
                frames[s].append(warped)
                flows[s].append(flow)
                masks[s].append(mask)
            if self.feed_back_flow:
                prev_flow = step_flows[0]
        stack = lambda lists: [torch.stack(x, dim=1) for x in lists]  # noqa: E731
        return stack(frames), stack(flows), stack(masks)


@BACKBONES.register("Purohit", config_keys=("width_mult", "center_width_mult", "feed_back_flow"))
class PurohitBackbone(nn.Module):
    """Blur (B, 3, H, W) RGB in [0, 1], any size -> 7 frames by warping a central frame.

    forward(blur, center=None) -> dict:
        "frames"      (B, 7, 3, H, W), RGB, = scales[0]
        "scales"      4 tensors, finest to coarsest, (B, 7, 3, ceil(H/2^s), ceil(W/2^s))
        "flows"       per scale (B, 7, 2, h_s, w_s): step t's flow in that scale's pixels, all 7 steps
        "masks"       per scale (B, 7, 1, h_s, w_s): 1 where the warp sampled inside the frame
        "center"      (B, 3, H, W): the central frame that was warped
        "center_pred" the same tensor, present only when it came from the centre network
        "embedding"   (B, C, ceil(H/8), ceil(W/8)): the BIE's (RVE's in autoencode) embedding
    center=None: the centre network predicts the central frame; a tensor: it is used as is (the
    ground-truth centre: the oracle protocol, to be labelled so in reports).
    autoencode(frames) (stage 1) returns the same dict, from the RVE's embedding and frames[:, 3].

    width_mult scales every channel count (1.0 = the paper's); center_width_mult the centre
    network's (default width_mult; 1.0 to load Jin's official center_v3.pth).
    """

    input_convention = RGB_UNIT
    num_frames = 7
    num_scales = NUM_SCALES

    def __init__(self, width_mult: float = 1.0, center_width_mult: float | None = None,
                 feed_back_flow: bool = True):
        super().__init__()
        if center_width_mult is None:
            center_width_mult = width_mult
        if not width_mult > 0 or not center_width_mult > 0:
            raise ValueError(f"widths must be positive, got {width_mult} and {center_width_mult}")
        self.width_mult = float(width_mult)
        self.center_width_mult = float(center_width_mult)
        self.feed_back_flow = bool(feed_back_flow)
        self.bie = BlurredImageEncoder(width_mult)
        self.rve = RecurrentVideoEncoder(width_mult)
        self.rvd = RecurrentVideoDecoder(width_mult, feed_back_flow)
        self.center_net = MiddleNetwork(center_width_mult)

    # --- the pieces -------------------------------------------------------------------------
    def predict_center(self, blur: torch.Tensor) -> torch.Tensor:
        """The centre network's central frame (B, 3, H, W), RGB [0, 1], from the blur."""
        _check_image(blur, "blur")
        h, w = blur.shape[-2:]
        x = self.input_convention.to_network(blur, channel_dim=1)
        y = self.center_net(_pad(x, SIZE_MULTIPLE))[..., :h, :w]
        return self.input_convention.from_network(y, channel_dim=1)

    def encode_blur(self, blur: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """BIE embedding (B, C, ceil(H/8), ceil(W/8)) of a blur and its central frame, RGB [0, 1]."""
        conv = self.input_convention
        return self.bie(_pad(conv.to_network(blur, 1), SIZE_MULTIPLE), _pad(conv.to_network(center, 1), SIZE_MULTIPLE))

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """RVE embedding (B, C, ceil(H/8), ceil(W/8)) of sharp frames (B, T, 3, H, W), RGB [0, 1]."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"expected sharp frames (B, T, 3, H, W), got shape {tuple(frames.shape)}")
        return self.rve(_pad(self.input_convention.to_network(frames, channel_dim=2), SIZE_MULTIPLE))

    def decode(self, embedding: torch.Tensor, center: torch.Tensor) -> dict:
        """RVD: the output dict (without "center_pred") from an embedding and a central frame."""
        h, w = center.shape[-2:]
        conv = self.input_convention
        # Downscale first, then pad each scale: scale s then matches pyramid(ground truth)[s] where
        # they overlap, and the padded sizes are exact halves of each other.
        sources = [_pad(c, SIZE_MULTIPLE >> s) for s, c in enumerate(pyramid(conv.to_network(center, 1)))]
        frames, flows, masks = self.rvd(embedding, sources, self.num_frames)
        sizes = [(-(-h // 2 ** s), -(-w // 2 ** s)) for s in range(self.num_scales)]
        crop = lambda xs: [x[..., :sh, :sw] for x, (sh, sw) in zip(xs, sizes)]  # noqa: E731
        scales = [conv.from_network(x, channel_dim=2) for x in crop(frames)]
        return {"frames": scales[0], "scales": scales, "flows": crop(flows), "masks": crop(masks),
                "center": center, "embedding": embedding}

    # --- the two stages ---------------------------------------------------------------------
    def forward(self, blur: torch.Tensor | None, center: torch.Tensor | None = None, *,
                sharp_frames: torch.Tensor | None = None) -> dict:
        """Stage 2 (and inference): see the class docstring. With sharp_frames (and blur None) it
        runs autoencode(sharp_frames) instead, so that wrappers that only hook forward (DDP) can
        train stage 1."""
        if sharp_frames is not None:
            if blur is not None or center is not None:
                raise ValueError("pass either blur (and center) or sharp_frames, not both")
            return self.autoencode(sharp_frames)
        _check_image(blur, "blur")
        predicted = center is None
        if predicted:
            center = self.predict_center(blur)
        else:
            _check_image(center, "center")
            if center.shape != blur.shape:
                raise ValueError(f"center {tuple(center.shape)} and blur {tuple(blur.shape)} differ in shape")
        out = self.decode(self.encode_blur(blur, center), center)
        if predicted:
            out["center_pred"] = center
        return out

    def autoencode(self, frames: torch.Tensor) -> dict:
        """Stage 1: RVE embedding of the sharp frames (B, 7, 3, H, W), decoded from their centre."""
        if frames.dim() != 5 or frames.shape[1] != self.num_frames:
            raise ValueError(f"expected {self.num_frames} sharp frames (B, {self.num_frames}, 3, H, W), "
                             f"got shape {tuple(frames.shape)}")
        return self.decode(self.encode_video(frames), frames[:, self.num_frames // 2])

    # --- what each stage trains ---------------------------------------------------------------
    def stage_modules(self, stage: int, *, train_decoder: bool = False, train_center: bool = True) -> dict:
        """{name: module} trained in a stage. Stage 1: RVE and RVD. Stage 2: BIE, plus the centre
        network (train_center, for a predicted centre trained jointly) and the RVD (train_decoder;
        by default it stays as stage 1 left it)."""
        if stage == 1:
            return {"rve": self.rve, "rvd": self.rvd}
        if stage == 2:
            names = ["bie"] + (["center_net"] if train_center else []) + (["rvd"] if train_decoder else [])
            return {n: getattr(self, n) for n in names}
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")

    def set_trainable(self, stage: int, **kwargs) -> list[nn.Parameter]:
        """requires_grad on exactly the stage's modules (stage_modules), off elsewhere; returns their
        parameters, for the optimizer."""
        self.requires_grad_(False)
        params = []
        for module in self.stage_modules(stage, **kwargs).values():
            module.requires_grad_(True)
            params += list(module.parameters())
        return params


def _check_image(x, name: str) -> None:
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"PurohitBackbone expects {name} of shape (B, 3, H, W), got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")


# --- the centre network from a Jin checkpoint -------------------------------------------------
def load_center_from_jin(model: PurohitBackbone, source) -> None:
    """Load the centre network from a Jin checkpoint (models.backbones.jin.middle_network_state); widths
    must agree (model.center_width_mult)."""
    load_middle_network(model.center_net, source, f"center_width_mult={model.center_width_mult:g}")

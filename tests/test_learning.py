"""The backbones learn: each overfits a handful of tiny dead-leaves sequences far above the blur.

A network stuck at returning its input (the blurry image as every frame) gains exactly 0 dB here; the
thresholds below ask for several dB on the centre frame and, with the oracle order (every sequence
moving rightwards), on the outer frames 1 and 7, whose direction only that order makes learnable.
"""
import pytest
import torch

from datasets.synthetic import SyntheticConfig, render_sequence
from losses import build_loss
from models.backbones.jin import JinBackbone, JinCenterBackbone
from models.backbones.purohit import PurohitBackbone
from utils.metrics.image import psnr

SIZE = 32
SEQUENCES = 4


def tiny_sequences(n: int = SEQUENCES, seed: int = 0):
    """(blur (n, 3, H, W), frames (n, 7, 3, H, W)) of dead-leaves textures under pure translation,
    each sequence in the oracle order (reversed where the camera moved leftwards)."""
    cfg = SyntheticConfig(size=SIZE, scene="deadleaves", motion="translation", shift=(6.0, 10.0), seed=seed)
    blurs, frames = [], []
    for i in range(n):
        out = render_sequence(None, cfg, torch.Generator().manual_seed(1000 * seed + i))
        sharp = out["sharp"].flip(0) if out["motion"][0] < 0 else out["sharp"]
        blurs.append(out["blur"])
        frames.append(sharp)
    return torch.stack(blurs), torch.stack(frames)


def gains_over_blur(pred: torch.Tensor, blur: torch.Tensor, frames: torch.Tensor) -> dict:
    """dB over the blur (the blurry image as every frame) on frame 4 and on frames 1 and 7 (their mean),
    both in the given order."""
    def db(x, k):
        return psnr(x.clamp(0, 1), frames[:, k]).mean().item()

    gains = {"frame_4": db(pred[:, 3], 3) - db(blur, 3)}
    if pred.shape[1] == 7:
        gains["frames_1_7"] = (db(pred[:, 0], 0) + db(pred[:, 6], 6) - db(blur, 0) - db(blur, 6)) / 2
    return gains


def overfit(model: torch.nn.Module, blur, frames, steps: int, lr: float = 3e-3, multiscale: bool = False):
    """Full-batch Adam on the naive loss of the project; returns the predictions after training."""
    torch.manual_seed(0)
    loss_fn = build_loss("naive", multiscale=multiscale)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    targets = frames if model.num_frames == 7 else frames[:, 3:4]
    model.train()
    for _ in range(steps):
        loss, _ = loss_fn(model(blur), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(blur)["frames"]
    return pred if pred.shape[1] == 7 else torch.cat([pred] * 7, 1)  # a centre network: frame 4 only


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    return tiny_sequences()


def test_the_criterion_rejects_a_network_that_returns_its_input(data):
    blur, frames = data
    copies = blur[:, None].expand(-1, 7, -1, -1, -1)
    assert gains_over_blur(copies, blur, frames) == {"frame_4": 0.0, "frames_1_7": 0.0}
    # and the task is not trivial: the blur is far from the outer frames on these sequences
    assert psnr(blur, frames[:, 0]).mean() < 22


def test_jin_centre_network_learns_frame_4(data):
    blur, frames = data
    torch.manual_seed(0)
    gains = gains_over_blur(overfit(JinCenterBackbone(width_mult=0.25), blur, frames, steps=150), blur, frames)
    assert gains["frame_4"] > 3.0, gains


def test_jin_learns_the_outer_frames_with_the_oracle_order(data):
    blur, frames = data
    torch.manual_seed(0)
    gains = gains_over_blur(overfit(JinBackbone(width_mult=0.25), blur, frames, steps=200), blur, frames)
    # measured 6.4 dB; the middle network learns slowly inside the chain (the loss averages 7 frames: it
    # gets a seventh of the gradient), which is why Jin et al. trained it first, alone (the test above)
    assert gains["frames_1_7"] > 3.0, gains
    assert gains["frame_4"] > -0.5, gains


def test_purohit_learns_every_frame_with_the_oracle_order(data):
    blur, frames = data
    torch.manual_seed(0)
    model = PurohitBackbone(width_mult=0.25)
    # lr 1e-3: at 3e-3 the outer frames may lock below the blur or not, depending on float rounding alone
    # (the same function computed two exact ways: +1.6 dB one way, -2.2 dB the other, on one machine)
    gains = gains_over_blur(overfit(model, blur, frames, steps=200, lr=1e-3, multiscale=True), blur, frames)
    assert gains["frame_4"] > 5.0, gains  # measured 11.5 dB
    assert gains["frames_1_7"] > 1.0, gains  # measured 1.9 dB: the warps of the centre are learned more slowly

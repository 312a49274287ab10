"""Purohit backbone: warping, flow feedback, sizes, the centre, both stages, its losses."""
import math

import pytest
import torch

from losses.multiscale import PurohitLoss, flow_tv, multiscale_flow_tv
from losses.naive import naive_loss
from models.backbones.jin import JinBackbone
from models.backbones.jin import middle_network_state as jin_center_state
from models.backbones.purohit import (PurohitBackbone, area_downscale, backward_warp,
                                      load_center_from_jin, pyramid)
from models.hypercut import HyperCUT
from utils.checkpoint import CheckpointError

W = 0.125  # width for the small models of these tests


def tiny(**kwargs):
    torch.manual_seed(0)
    return PurohitBackbone(width_mult=W, **kwargs).eval()


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def moving_sequence(b=2, n=7, size=16, seed=0):
    """A smooth random texture moving one pixel right per frame: (blur, frames (b, n, 3, size, size))."""
    g = torch.Generator().manual_seed(seed)
    texture = torch.nn.functional.interpolate(torch.rand(b, 3, 6, 6 + n // 2, generator=g),
                                              size=(size, size + n), mode="bilinear", align_corners=False)
    frames = torch.stack([texture[..., n - 1 - t: n - 1 - t + size] for t in range(n)], dim=1)
    return frames.mean(1), frames


# --- warping and downscaling ------------------------------------------------------------------
def test_zero_flow_is_the_identity():
    img = torch.rand(2, 3, 9, 11)
    warped, mask = backward_warp(img, torch.zeros(2, 2, 9, 11))
    torch.testing.assert_close(warped, img, atol=1e-5, rtol=0)
    assert mask.shape == (2, 1, 9, 11) and bool((mask == 1).all())


def test_constant_flow_moves_the_pattern_by_exactly_three_pixels():
    img = torch.rand(1, 3, 8, 12)
    flow = torch.zeros(1, 2, 8, 12)
    flow[:, 0] = 3.0
    warped, mask = backward_warp(img, flow)
    torch.testing.assert_close(warped[..., :9], img[..., 3:], atol=1e-5, rtol=0)
    assert bool((warped[..., 9:] == 0).all())
    assert bool((mask[..., :9] == 1).all()) and bool((mask[..., 9:] == 0).all())
    # vertically, the other way: v = -2 reads two rows up; the first two rows have nothing to read
    flow = torch.zeros(1, 2, 8, 12)
    flow[:, 1] = -2.0
    warped, mask = backward_warp(img, flow)
    torch.testing.assert_close(warped[..., 2:, :], img[..., :6, :], atol=1e-5, rtol=0)
    assert mask[0, 0, :, 0].tolist() == [0, 0] + [1] * 6


def test_fractional_flow_is_bilinear_and_the_frame_ends_half_a_pixel_out():
    img = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 3, 5).contiguous()
    flow = torch.zeros(1, 2, 3, 5)
    flow[:, 0] = 0.5
    warped, mask = backward_warp(img, flow)
    # the last pixel samples x = 4.5, the frame's right edge: it reads the edge pixel
    torch.testing.assert_close(warped[0, 0, 1], torch.tensor([0.5, 1.5, 2.5, 3.5, 4.0]), atol=1e-5, rtol=0)
    assert bool((mask == 1).all())
    flow[:, 0] = -0.75
    warped, mask = backward_warp(img, flow)
    torch.testing.assert_close(warped[0, 0, 1], torch.tensor([0.0, 0.25, 1.25, 2.25, 3.25]), atol=1e-5, rtol=0)
    assert mask[0, 0, 1].tolist() == [0, 1, 1, 1, 1]


def test_area_downscale_averages_the_pixels_a_window_covers():
    x = torch.arange(15.0).view(1, 1, 3, 5)
    y = area_downscale(x)
    expected = torch.tensor([[(0 + 1 + 5 + 6) / 4, (2 + 3 + 7 + 8) / 4, (4 + 9) / 2],
                             [(10 + 11) / 2, (12 + 13) / 2, 14.0]])
    torch.testing.assert_close(y[0, 0], expected)
    shapes = [tuple(t.shape) for t in pyramid(torch.rand(2, 7, 3, 37, 53))]
    assert shapes == [(2, 7, 3, 37, 53), (2, 7, 3, 19, 27), (2, 7, 3, 10, 14), (2, 7, 3, 5, 7)]


# --- the recurrent decoder ----------------------------------------------------------------------
def _record_decoder(model, perturb_step=None):
    """Hooks: record what the flow encoder reads at each step, and optionally add 0.5 to the finest
    flow the flow decoder returns at one step. Returns (encoder inputs, handles)."""
    inputs, calls = [], [0]

    def read(_module, args):
        inputs.append(args[0].clone())

    def perturb(_module, _args, flows):
        step = calls[0]
        calls[0] += 1
        if step == perturb_step:
            return [flows[0] + 0.5] + list(flows[1:])
        return flows

    return inputs, [model.rvd.flow_encoder.register_forward_pre_hook(read),
                    model.rvd.flow_decoder.register_forward_hook(perturb)]


def test_previous_flow_is_fed_back():
    model = tiny()
    blur, frames = moving_sequence(b=1)
    center = frames[:, 3]
    inputs, handles = _record_decoder(model)
    with torch.no_grad():
        out = model(blur, center)
    for h in handles:
        h.remove()
    assert len(inputs) == 7
    assert bool((inputs[0] == 0).all())  # the first step reads zero flow
    for t in range(1, 7):  # every later step reads the previous step's full-resolution flow
        torch.testing.assert_close(inputs[t], out["flows"][0][:, t - 1])


@pytest.mark.parametrize("feed_back", [True, False])
def test_changing_one_steps_flow_changes_the_next_step_only_with_feedback(feed_back):
    model = tiny(feed_back_flow=feed_back)
    blur, frames = moving_sequence(b=1)
    with torch.no_grad():
        plain = model(blur, frames[:, 3])
        _, handles = _record_decoder(model, perturb_step=2)
        perturbed = model(blur, frames[:, 3])
    for h in handles:
        h.remove()
    torch.testing.assert_close(perturbed["frames"][:, :2], plain["frames"][:, :2])
    assert (perturbed["frames"][:, 2] - plain["frames"][:, 2]).abs().max() > 1e-3
    step3_change = (perturbed["flows"][1][:, 3] - plain["flows"][1][:, 3]).abs().max().item()
    if feed_back:
        assert step3_change > 1e-6
    else:
        assert step3_change == 0.0


# --- sizes, the centre, the two stages ------------------------------------------------------------
def test_four_scales_of_the_right_shapes_for_odd_sizes():
    model = tiny()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 37, 53))
    sizes = [(37, 53), (19, 27), (10, 14), (5, 7)]
    assert out["frames"] is out["scales"][0]
    assert [tuple(x.shape) for x in out["scales"]] == [(2, 7, 3) + s for s in sizes]
    assert [tuple(x.shape) for x in out["flows"]] == [(2, 7, 2) + s for s in sizes]
    assert [tuple(x.shape) for x in out["masks"]] == [(2, 7, 1) + s for s in sizes]
    assert tuple(out["center"].shape) == (2, 3, 37, 53)
    assert tuple(out["embedding"].shape) == (2, round(128 * W), 5, 7)


def test_odd_sizes_are_reflect_padded_and_cropped_back():
    model = tiny()
    blur, center = torch.rand(1, 3, 37, 53), torch.rand(1, 3, 37, 53)
    pad = lambda x: torch.nn.functional.pad(x, (0, 3, 0, 3), mode="reflect")  # noqa: E731  (40 x 56)
    with torch.no_grad():
        out = model(blur, center)
        padded = model(pad(blur), pad(center))
    torch.testing.assert_close(out["frames"], padded["frames"][..., :37, :53])
    torch.testing.assert_close(out["flows"][2], padded["flows"][2][..., :10, :14])


def _zero_flows(model):
    return model.rvd.flow_decoder.register_forward_hook(lambda _m, _a, flows: [torch.zeros_like(f) for f in flows])


def test_given_center_is_what_gets_warped():
    model = tiny()
    blur, center = torch.rand(2, 3, 21, 30), torch.rand(2, 3, 21, 30)
    handle = _zero_flows(model)
    with torch.no_grad():
        out = model(blur, center)
    handle.remove()
    assert out["center"] is center and "center_pred" not in out
    for frames, source in zip(out["scales"], pyramid(center)):
        torch.testing.assert_close(frames, source.unsqueeze(1).expand_as(frames), atol=1e-5, rtol=0)


def test_predicted_center_differs_from_a_given_one():
    model = tiny()
    blur, center = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        predicted = model(blur)
        oracle = model(blur, center)
        expected = model.predict_center(blur)
    torch.testing.assert_close(predicted["center"], expected)
    assert predicted["center_pred"] is predicted["center"]
    assert (predicted["frames"] - oracle["frames"]).abs().max() > 1e-3


def test_autoencode():
    model = tiny()
    _, frames = moving_sequence(b=2, size=20)
    with torch.no_grad():
        out = model.autoencode(frames)
        same = model(None, sharp_frames=frames)
        bie = model.encode_blur(frames.mean(1), frames[:, 3])
    assert tuple(out["frames"].shape) == (2, 7, 3, 20, 20)
    assert [tuple(x.shape[-2:]) for x in out["scales"]] == [(20, 20), (10, 10), (5, 5), (3, 3)]
    assert out["embedding"].shape == bie.shape == (2, round(128 * W), 3, 3)
    assert torch.equal(out["center"], frames[:, 3])
    torch.testing.assert_close(same["frames"], out["frames"])
    with pytest.raises(ValueError, match="7 sharp frames"):
        model.autoencode(frames[:, :6])
    with pytest.raises(ValueError, match="either blur"):
        model(frames.mean(1), sharp_frames=frames)


def test_input_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"blur of shape \(B, 3, H, W\)"):
        model(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="differ in shape"):
        model(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 24))


def test_stage_parameters():
    model = tiny()
    stage1 = model.set_trainable(1)
    assert {id(p) for p in stage1} == {id(p) for p in [*model.rve.parameters(), *model.rvd.parameters()]}
    assert not any(p.requires_grad for p in [*model.bie.parameters(), *model.center_net.parameters()])
    stage2 = model.set_trainable(2)
    assert {id(p) for p in stage2} == {id(p) for p in [*model.bie.parameters(), *model.center_net.parameters()]}
    assert not any(p.requires_grad for p in [*model.rve.parameters(), *model.rvd.parameters()])
    assert set(model.stage_modules(2, train_decoder=True, train_center=False)) == {"bie", "rvd"}
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        model.stage_modules(3)


def test_parameter_counts_at_width_one():
    model = PurohitBackbone()
    conv = lambda cin, cout, k, bias=True: cin * cout * k * k + (cout if bias else 0)  # noqa: E731
    lstm = lambda cin, hidden: conv(cin + hidden, 4 * hidden, 3)  # noqa: E731
    image_encoder = lambda cin: (conv(cin, 64, 5) + 2 * conv(64, 64, 5) + conv(64, 128, 5)  # noqa: E731
                                 + 3 * conv(128, 128, 5))
    flow_encoder = sum(conv(cin, c, 3) + 2 * conv(c, c, 3, bias=False)
                       for cin, c in [(2, 16), (16, 32), (32, 64), (64, 128)])
    flow_decoder = (conv(256, 2, 3) + sum(conv(2 * c + 2, 2, 3) for c in (16, 32, 64))
                    + conv(128, 64, 5) + conv(64, 32, 5) + conv(32, 16, 5))
    assert n_params(model.bie) == image_encoder(6) == 1_648_704
    assert n_params(model.rve) == image_encoder(3) + lstm(128, 128) == 2_824_064
    assert n_params(model.rvd) == flow_encoder + lstm(128, 128) + flow_decoder == 1_946_804
    assert n_params(model.center_net) == 4_972_032  # Jin's released middle network (center_v3.pth)
    assert n_params(model) == 11_391_604


# --- the centre network from Jin -------------------------------------------------------------------
def test_center_network_from_a_jin_state_dict():
    torch.manual_seed(1)
    jin = JinBackbone(W).eval()
    model = tiny()
    blur = torch.rand(1, 3, 16, 24)  # a multiple of 8 and 4: no padding either way
    with torch.no_grad():
        assert (model.predict_center(blur) - jin.center(blur)).abs().max() > 1e-3
        load_center_from_jin(model, {"module." + k: v for k, v in jin.state_dict().items()})
        torch.testing.assert_close(model.predict_center(blur), jin.center(blur))
    official = {"state_dict_G": jin.official_state_dicts()["center"]}
    assert jin_center_state(official).keys() == model.center_net.state_dict().keys()
    assert jin_center_state({"model": jin.state_dict(), "backbone": {"name": "Jin"}}).keys() == \
        model.center_net.state_dict().keys()
    with pytest.raises(CheckpointError, match="center_width_mult=0.25"):
        load_center_from_jin(PurohitBackbone(W, center_width_mult=0.25), jin.state_dict())
    with pytest.raises(CheckpointError, match="no 'center"):
        jin_center_state({"bie.encoder.0.weight": torch.zeros(1)})


# --- losses ---------------------------------------------------------------------------------------
def _output(gt, offsets=(0.0, 0.0, 0.0, 0.0), flow_value=0.0):
    """A hand-made backbone output: each scale is the halved ground truth plus a constant offset."""
    scales = [y + d for y, d in zip(pyramid(gt), offsets)]
    flows = [torch.full(s.shape[:2] + (2,) + s.shape[-2:], flow_value) for s in scales]
    return {"frames": scales[0], "scales": scales, "flows": flows, "embedding": torch.zeros(gt.shape[0], 4, 2, 2)}


def test_losses_at_a_perfect_prediction_with_constant_flows():
    gt = torch.rand(2, 7, 3, 12, 10)
    out = _output(gt, flow_value=1.5)
    floor = math.sqrt(1e-6)  # Charbonnier of a zero error
    total, terms = PurohitLoss("naive")(out, gt)
    assert total.item() == pytest.approx(floor, rel=1e-5)
    assert terms["tv"].item() == 0.0 and terms["photo"].item() == pytest.approx(floor, rel=1e-5)
    total, terms = PurohitLoss("order_inv")(out, gt)
    assert total.item() == pytest.approx(floor / 7, rel=1e-4)  # only the middle frame's Charbonnier share


def test_photometric_term_averages_the_four_scales():
    gt = torch.rand(1, 7, 3, 16, 16)
    offsets = (0.1, 0.2, 0.3, 0.4)
    _, terms = PurohitLoss("naive", mu=0.0)(_output(gt, offsets), gt)
    expected = sum(math.sqrt(d * d + 1e-6) for d in offsets) / 4
    assert terms["photo"].item() == pytest.approx(expected, rel=1e-5)


def test_flow_term_is_the_total_variation():
    # one flow component of 2 x 3 pixels: horizontal steps 1, 2, 0, 0 and vertical steps 2, 1, 1
    f = torch.zeros(1, 1, 2, 2, 3)
    f[0, 0, 0] = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]])
    by_hand = (1 + 2 + 0 + 0) / 8 + (2 + 1 + 1 + 0 + 0 + 0) / 6  # component 1 is all zero: half the means
    assert flow_tv(f).item() == pytest.approx(by_hand, rel=1e-6)
    flows = [f * k for k in (1, 2, 3, 4)]
    assert multiscale_flow_tv(flows).item() == pytest.approx(by_hand * 2.5, rel=1e-6)
    gt = torch.rand(1, 7, 3, 8, 8)
    out = _output(gt)
    out["flows"] = [torch.zeros_like(x) for x in out["flows"]]
    out["flows"][0][0, 0, 0, 0, :3] = torch.tensor([0.0, 1.0, 3.0])  # one row of one flow component at 8 x 8
    h = (1 + 2 + 3) / (7 * 2 * 8 * 7)  # |1-0| + |3-1| + |0-3| among the horizontal differences
    v = (1 + 3) / (7 * 2 * 7 * 8)  # rows 0 -> 1 change by 1 and 3 at two pixels
    total, terms = PurohitLoss("naive", mu=0.02)(out, gt)
    assert terms["tv"].item() == pytest.approx((h + v) / 4, rel=1e-5)
    assert total.item() == pytest.approx(terms["photo"].item() + 0.02 * (h + v) / 4, rel=1e-5)


def test_hypercut_variant_regularises_the_finest_scale_only():
    torch.manual_seed(0)
    hypercut = HyperCUT(out_dim=16, slope=0.2).eval()
    gt = torch.rand(2, 7, 3, 40, 40)
    out = _output(gt, offsets=(0.05, 0.0, 0.0, 0.0))
    loss = PurohitLoss("hypercut", hypercut=hypercut, alpha=0.2, mu=0.0)
    total, terms = loss(out, gt)
    canonical, flipped = loss.frames_loss.canonicalize(gt)
    assert terms["flipped"].item() == int(flipped.sum())
    assert terms["reg"].item() == pytest.approx(loss.frames_loss.regularizer(out["frames"]).item(), rel=1e-6)
    photo = sum(naive_loss(p, y) for p, y in zip(out["scales"], pyramid(canonical))) / 4
    assert terms["photo"].item() == pytest.approx(photo.item(), rel=1e-6)
    assert total.item() == pytest.approx(photo.item() + 0.2 * terms["reg"].item(), rel=1e-5)
    out["scales"] = [out["scales"][0]] + [s + 0.3 for s in out["scales"][1:]]
    _, changed = loss(out, gt)
    assert changed["reg"].item() == terms["reg"].item() and changed["photo"] > terms["photo"]
    with pytest.raises(ValueError, match="hypercut_path"):
        PurohitLoss("hypercut")


def test_embedding_and_center_terms():
    gt = torch.rand(2, 7, 3, 8, 8)
    out = _output(gt)
    target = torch.full((2, 4, 2, 2), 0.5)
    reverse = torch.full((2, 4, 2, 2), 0.1)
    encode = lambda frames: target if torch.equal(frames, gt) else reverse  # noqa: E731
    out["embedding"] = torch.zeros(2, 4, 2, 2)
    _, l2 = PurohitLoss("naive", embed_weight=1.0, embed_target=encode)(out, gt)
    _, l1 = PurohitLoss("naive", embed_weight=1.0, embed_target=encode, embed_distance="l1")(out, gt)
    _, inv = PurohitLoss("order_inv", embed_weight=1.0, embed_target=encode)(out, gt)
    assert l2["embed"].item() == pytest.approx(0.25) and l1["embed"].item() == pytest.approx(0.5)
    assert inv["embed"].item() == pytest.approx(0.01)  # the reversed order is nearer
    assert "center" not in l2
    out["center_pred"] = gt[:, 3] + 0.2
    total, terms = PurohitLoss("naive", center_weight=0.5)(out, gt)
    assert terms["center"].item() == pytest.approx(math.sqrt(0.04 + 1e-6), rel=1e-5)
    assert total.item() == pytest.approx(terms["photo"].item() + 0.5 * terms["center"].item(), rel=1e-5)
    with pytest.raises(ValueError, match="embed_target"):
        PurohitLoss("naive", embed_weight=1.0)


# --- a few training steps ---------------------------------------------------------------------------
def _train(model, params, loss_of, steps=12):
    """Adam on one batch: (loss before, loss after `steps` steps)."""
    opt = torch.optim.Adam(params, lr=3e-3)
    model.train()
    before = None
    for _ in range(steps):
        loss = loss_of()
        before = loss.item() if before is None else before
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return before, loss_of().item()


def test_stage1_training_lowers_the_loss():
    model = tiny()
    _, frames = moving_sequence(b=1)
    params = model.set_trainable(1)
    frozen = {k: v.clone() for k, v in model.bie.state_dict().items()}
    loss = PurohitLoss("naive")
    before, after = _train(model, params, lambda: loss(model.autoencode(frames), frames)[0])
    assert after < 0.95 * before
    assert all(torch.equal(v, model.bie.state_dict()[k]) for k, v in frozen.items())


def test_stage2_training_lowers_the_loss():
    model = tiny()
    blur, frames = moving_sequence(b=1)
    params = model.set_trainable(2)
    frozen = {k: v.clone() for k, v in model.rvd.state_dict().items()}
    loss = PurohitLoss("naive", embed_weight=1.0, embed_target=model.encode_video)
    terms = []

    def loss_of():
        total, t = loss(model(blur), frames)
        terms.append(t)
        return total

    before, after = _train(model, params, loss_of)
    assert after < 0.95 * before
    assert terms[-1]["center"] < terms[0]["center"] and terms[-1]["embed"] < terms[0]["embed"]
    assert all(torch.equal(v, model.rvd.state_dict()[k]) for k, v in frozen.items())

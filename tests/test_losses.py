"""Deblurring losses: naive, order-invariant, and the HyperCUT loss."""
import math

import pytest
import torch
import torch.nn.functional as F

from losses import (HyperCUTLoss, NaiveLoss, OrderInvLoss, PurohitLoss, build_frames_loss, build_loss, charbonnier,
                    naive_loss, order_inv_loss)
from models.hypercut import HyperCUT


def sp(x):
    return math.log1p(math.exp(x))


def test_charbonnier_and_naive_by_hand():
    p = torch.tensor([0.0, 1.0, 0.5, 0.2]).view(1, 2, 1, 1, 2)
    y = torch.tensor([0.0, 0.0, 0.5, 0.6]).view(1, 2, 1, 1, 2)
    c = lambda e: math.sqrt(e * e + 1e-6)  # noqa: E731
    frame1 = (c(0.0) + c(1.0)) / 2
    frame2 = (c(0.0) + c(0.4)) / 2
    assert charbonnier(p, y).item() == pytest.approx((frame1 + frame2) / 2, rel=1e-6)
    assert naive_loss(p, y).item() == pytest.approx((frame1 + frame2) / 2, rel=1e-6)
    total, terms = NaiveLoss()(p, y)
    assert terms["total"].item() == pytest.approx(total.item())


def test_order_inv_by_hand():
    # B = 1, N = 3 frames of one pixel: pair (0, 2) and the middle frame 1
    p = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1, 1)
    y = torch.tensor([0.7, 0.4, 0.1]).view(1, 3, 1, 1, 1)
    pair = ((0.2 + 0.9) - (0.7 + 0.1)) ** 2 / 3 + (abs(0.2 - 0.9) - abs(0.7 - 0.1)) ** 2 / 3
    middle = math.sqrt(0.1 ** 2 + 1e-6) / 3
    assert order_inv_loss(p, y).item() == pytest.approx(pair + middle, rel=1e-5)
    total, terms = OrderInvLoss()(p, y)
    assert terms["pairs"].item() == pytest.approx(pair, rel=1e-5)
    assert terms["middle"].item() == pytest.approx(middle, rel=1e-5)
    # one frame: order_inv is the naive loss
    assert order_inv_loss(p[:, 1:2], y[:, 1:2]).item() == pytest.approx(naive_loss(p[:, 1:2], y[:, 1:2]).item())


@pytest.mark.parametrize("n", [6, 7])
def test_order_inv_ignores_order_naive_does_not(n):
    g = torch.Generator().manual_seed(0)
    pred, gt = torch.rand(2, n, 3, 8, 8, generator=g), torch.rand(2, n, 3, 8, 8, generator=g)
    assert order_inv_loss(pred.flip(1), gt).item() == pytest.approx(order_inv_loss(pred, gt).item(), rel=1e-5)
    assert order_inv_loss(gt.flip(1), gt).item() == pytest.approx(order_inv_loss(gt, gt).item(), abs=1e-6)
    assert abs(naive_loss(pred.flip(1), gt).item() - naive_loss(pred, gt).item()) > 1e-3


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        naive_loss(torch.rand(1, 7, 3, 4, 4), torch.rand(1, 6, 3, 4, 4))
    with pytest.raises(ValueError, match="same shape"):
        order_inv_loss(torch.rand(7, 3, 4, 4), torch.rand(7, 3, 4, 4))


@pytest.fixture(scope="module")
def signed_setup():
    """A small HyperCUT whose hyperplane is fitted so that one sequence's pairs score exactly +1 and
    their reverses -1: the sequence is canonical, its reverse is not."""
    torch.manual_seed(0)
    model = HyperCUT(out_dim=32, slope=0.2).eval()
    seq = torch.rand(1, 7, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb, _ = model.pair_scores(seq)  # (1, 6, 32): d1, dbar1, d2, dbar2, d3, dbar3
        phi = torch.cat([emb[0], emb[0].sum(1, keepdim=True)], dim=1).double()  # h(d) = phi(d) . w
        target = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
        w = torch.linalg.pinv(phi) @ target
        model.hyperplane.hyperplane.copy_(w.float())
        _, scores = model.pair_scores(seq)
    torch.testing.assert_close(scores[0], target.float(), atol=1e-3, rtol=0)
    return model, seq


def test_hypercut_loss_flips_exactly_the_negative_gts(signed_setup):
    model, seq = signed_setup
    gt = torch.cat([seq, seq.flip(1), seq], dim=0)
    with torch.no_grad():
        _, scores = model.pair_scores(gt)
    loss = HyperCUTLoss(model, alpha=0.2)
    canonical, flipped = loss.canonicalize(gt)
    assert flipped.tolist() == (scores[:, 0] < 0).tolist() == [False, True, False]
    for b in range(3):
        torch.testing.assert_close(canonical[b], seq[0], rtol=0, atol=0)

    pred = torch.rand_like(gt)
    total, terms = loss(pred, gt)
    assert terms["flipped"].item() == 1
    assert terms["base"].item() == pytest.approx(naive_loss(pred, canonical).item(), rel=1e-6)
    with torch.no_grad():
        _, pred_scores = model.pair_scores(pred, include_reversed=False)
    reg = F.softplus(-pred_scores).sum(1).mean()
    assert terms["reg"].item() == pytest.approx(reg.item(), rel=1e-5)
    assert total.item() == pytest.approx(terms["base"].item() + 0.2 * reg.item(), rel=1e-5)


def test_hypercut_regularizer_prefers_the_positive_side(signed_setup):
    model, seq = signed_setup
    loss = HyperCUTLoss(model)
    with torch.no_grad():
        r_canonical = loss.regularizer(seq).item()
        r_reverse = loss.regularizer(seq.flip(1)).item()
    assert r_canonical == pytest.approx(3 * sp(-1.0), rel=1e-3)
    assert r_reverse == pytest.approx(3 * sp(1.0), rel=1e-3)
    # a few gradient steps on R alone move the reversed prediction towards the positive side
    pred = seq.flip(1).clone().requires_grad_(True)
    opt = torch.optim.SGD([pred], lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        loss.regularizer(pred).backward()
        opt.step()
    with torch.no_grad():
        assert loss.regularizer(pred).item() < r_reverse - 1e-3


def test_hypercut_loss_gradients_reach_predictions_only(signed_setup):
    model, seq = signed_setup
    loss = build_frames_loss("hypercut", hypercut=model, alpha=0.2)
    loss.train()
    assert not model.training and not loss.hypercut.training
    assert all(not p.requires_grad for p in model.parameters())
    pred = seq.flip(1).clone().requires_grad_(True)
    total, _ = loss(pred, seq)
    total.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    # the regulariser alone also sends gradient to the prediction
    pred.grad = None
    loss.regularizer(pred).backward()
    assert pred.grad.abs().sum() > 0


def test_build_loss():
    assert isinstance(build_frames_loss("naive"), NaiveLoss)
    assert isinstance(build_frames_loss("order_inv"), OrderInvLoss)
    with pytest.raises(ValueError, match="unknown loss type 'l2'"):
        build_frames_loss("l2")
    with pytest.raises(ValueError, match="hypercut_path"):
        build_frames_loss("hypercut")
    # on a backbone's output dict: the frames are scored; multi-scale backbones get PurohitLoss
    gt = torch.rand(2, 7, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = {"frames": gt.flip(1), "center": gt[:, 3]}
    total, terms = build_loss("naive")(out, gt)
    assert total.item() == pytest.approx(naive_loss(gt.flip(1), gt).item())
    total, _ = build_loss("order_inv")(out, gt)
    assert total.item() == pytest.approx(order_inv_loss(gt.flip(1), gt).item())
    assert isinstance(build_loss("naive", multiscale=True, mu=0.02), PurohitLoss)
    with pytest.raises(ValueError, match="multi-scale"):
        build_loss("naive", mu=0.02)

"""utils.metrics: PSNR/SSIM against scikit-image, LPIPS code paths (never the network), p-metrics, the accumulator."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import utils.metrics.image as image_metrics
import utils.metrics.lpips as lpips_metrics
from utils.metrics.image import psnr, ssim
from utils.metrics.lpips import (ALEXNET_WEIGHTS_FILE, ALEXNET_WEIGHTS_URL, LPIPSMetric, LPIPSWeightsError,
                                 LPIPSWeightsMissing, alexnet_weights_path)
from utils.metrics.sequence import PSNR_CAP_DB, SequenceMetrics, frame_scores, p_metric, p_scores


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the network (e.g. a weights download) fails the test at once."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """scikit-image's SSIM as the reference calls it: HWC float arrays on the 0..255 scale."""
    a = a.clamp(0, 1).permute(1, 2, 0).double().numpy() * 255
    b = b.clamp(0, 1).permute(1, 2, 0).double().numpy() * 255
    return structural_similarity(a, b, data_range=255, channel_axis=-1, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False)


def _assert_ssim_matches(pred: torch.Tensor, target: torch.Tensor) -> float:
    ours = ssim(pred, target)
    assert ours.shape == pred.shape[:-3]
    flat_p, flat_t = pred.reshape(-1, *pred.shape[-3:]), target.reshape(-1, *pred.shape[-3:])
    ref = torch.tensor([_skimage_ssim(p, t) for p, t in zip(flat_p, flat_t)], dtype=torch.float64)
    dev = (ours.reshape(-1).double() - ref).abs().max().item()
    assert dev < 1e-4, f"SSIM deviates from scikit-image by {dev}"
    return dev


# ---------------------------------------------------------------------------------------------- SSIM

@pytest.mark.parametrize("hw", [(11, 11), (13, 17), (17, 13), (32, 48), (45, 29)])
def test_ssim_matches_skimage_random(hw):
    g = _gen(hw[0] * 100 + hw[1])
    a = torch.rand(3, 3, *hw, generator=g)
    b = (a + 0.15 * torch.randn(3, 3, *hw, generator=g)).clamp(0, 1)
    b[2] = torch.rand(3, *hw, generator=g)  # unrelated images: SSIM near 0
    _assert_ssim_matches(b, a)


def _structured(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    gradient = torch.stack([xx, yy, (xx + yy) / 2])
    checker = ((torch.arange(h)[:, None] // 3 + torch.arange(w)[None] // 3) % 2).float().expand(3, h, w)
    stripes = (0.5 + 0.5 * torch.sin(xx * 40)).expand(3, h, w)
    return torch.stack([gradient, checker, stripes, torch.full((3, h, w), 0.3)])


def test_ssim_matches_skimage_structured():
    a = _structured(37, 51)
    b = torch.stack([a[0].flip(-1), a[1].roll(1, -1), a[2] * 0.8 + 0.1, torch.full_like(a[3], 0.7)])
    _assert_ssim_matches(b, a)
    _assert_ssim_matches(a, a.clone())  # identical -> 1, constants included


def test_ssim_matches_skimage_photo():
    from skimage import data

    img = torch.from_numpy(data.astronaut()[100:196:2, 150:262:2].copy()).permute(2, 0, 1).float() / 255
    g = _gen(1)
    noisy = (img + 0.05 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(img[None], 3, 1, 1, count_include_pad=False)[0]
    dark = img * 0.6
    _assert_ssim_matches(torch.stack([noisy, blurred, dark]), img.expand(3, -1, -1, -1))


def test_ssim_batched_shapes_grayscale_and_clamping():
    g = _gen(2)
    a = torch.rand(2, 4, 3, 19, 23, generator=g)
    b = a + 0.2 * torch.randn(a.shape, generator=g)  # leaves [0, 1]: metrics clamp first
    out = ssim(b, a)
    assert out.shape == (2, 4) and out.dtype == torch.float32
    assert torch.allclose(out.reshape(-1), ssim(b.reshape(8, 3, 19, 23), a.reshape(8, 3, 19, 23)))
    _assert_ssim_matches(b, a)
    _assert_ssim_matches(b[:, :, :1], a[:, :, :1])  # one channel
    assert ssim(a.double(), b.double()).dtype == torch.float64


def test_ssim_rejects_images_smaller_than_window():
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.rand(1, 3, 10, 30), torch.rand(1, 3, 10, 30))
    with pytest.raises(ValueError, match="shape"):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))


# ---------------------------------------------------------------------------------------------- PSNR

@pytest.mark.parametrize("k", [1, 2, 5, 17])
def test_psnr_constant_offset_closed_form(k):
    x = 0.1 + 0.7 * torch.rand(2, 7, 3, 8, 9, generator=_gen(k))  # offsets never reach the clamp
    out = psnr(x + k / 255, x)
    assert out.shape == (2, 7)
    assert torch.allclose(out.double(), torch.full((2, 7), 20 * math.log10(255 / k), dtype=torch.float64), atol=1e-4)


def test_psnr_matches_skimage_and_handles_identical_images():
    g = _gen(3)
    a, b = torch.rand(4, 3, 16, 20, generator=g), torch.rand(4, 3, 16, 20, generator=g)
    ours = psnr(a, b)
    for i in range(4):
        ref = peak_signal_noise_ratio(b[i].double().numpy() * 255, a[i].double().numpy() * 255, data_range=255)
        assert abs(ours[i].item() - ref) < 1e-4
    assert torch.isinf(psnr(a, a)).all()
    assert (psnr(a, a, cap_db=PSNR_CAP_DB) == PSNR_CAP_DB).all()
    assert psnr(a, b, cap_db=PSNR_CAP_DB).equal(ours)


# ---------------------------------------------------------------------------------------------- p-metrics

def _sequences(b=2, t=7, h=16, w=16, noise=0.05, seed=4):
    g = _gen(seed)
    gt = torch.rand(b, t, 3, h, w, generator=g)
    pred = (gt + noise * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    return pred, gt


@pytest.mark.parametrize("mode", ["pair", "sequence"])
@pytest.mark.parametrize("metric,higher", [(psnr, True), (ssim, True)])
def test_reversed_prediction_scores_like_forward(mode, metric, higher):
    pred, gt = _sequences()
    forward = p_scores(metric, pred, gt, higher, mode)
    backward = p_scores(metric, pred.flip(1), gt, higher, mode)
    assert forward.shape == (2, 7)
    assert torch.equal(forward, backward)


def test_half_wrong_prediction_recovered_by_pair_mode_only():
    pred, gt = _sequences(t=7)
    half = pred.clone()
    half[:, [1, 5]] = pred[:, [5, 1]]  # P1 in order, P2 and P3 swapped
    half[:, [2, 4]] = pred[:, [4, 2]]
    for metric in (psnr, ssim):
        right = p_scores(metric, pred, gt, True, "pair")
        assert torch.allclose(p_scores(metric, half, gt, True, "pair"), right)
        seq = p_scores(metric, half, gt, True, "sequence")
        assert (seq.mean(1) < p_scores(metric, pred, gt, True, "sequence").mean(1) - 1e-3).all()


def test_p_metric_by_hand():
    fwd = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0]])
    rev = torch.tensor([[56.0, 1.0, 30.0, 1.0, 0.0]])
    # pairs (1,5): fwd 30 vs rev 28; (2,4): fwd 30 vs rev 1; middle kept
    assert p_metric(fwd, rev, True, "pair").tolist() == [[30.0, 30.0, 30.0, 30.0, 30.0]]
    assert p_metric(fwd, rev, False, "pair").tolist() == [[28.0, 1.0, 30.0, 1.0, 28.0]]
    assert p_metric(fwd, rev, True, "sequence").equal(fwd)  # mean 30 vs 17.6
    assert p_metric(fwd, rev, False, "sequence").equal(rev)
    even_f, even_r = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[9.0, 0.0, 0.0, 1.0]])
    assert p_metric(even_f, even_r, True, "pair").tolist() == [[5.0, 2.5, 2.5, 5.0]]
    with pytest.raises(ValueError):
        p_metric(fwd, rev, True, "both")


def test_frame_scores_reversed_definition():
    pred, gt = _sequences(b=1, t=3)
    fwd, rev = frame_scores(psnr, pred, gt)
    assert torch.equal(rev[0, 0], psnr(pred[0, 2], gt[0, 0]))
    assert torch.equal(fwd[0, 1], rev[0, 1])


# ---------------------------------------------------------------------------------------------- accumulator

def test_sequence_metrics_accumulates_and_caps():
    pred, gt = _sequences(b=3, t=5, h=12, w=14)
    pred[0, 0] = gt[0, 0]  # one perfect frame: capped, not inf
    acc = SequenceMetrics(lpips=None, mode="pair")
    acc.update(pred[:2], gt[:2])
    batch = acc.update(pred[2:], gt[2:])
    assert batch["PSNR"].shape == (1, 5)
    assert acc.num_sequences == 3 and acc.num_frames == 5
    plain = psnr(pred, gt, cap_db=PSNR_CAP_DB).double()
    assert plain[0, 0] == PSNR_CAP_DB
    assert np.allclose(acc.per_frame("PSNR"), plain.mean(0).tolist())
    assert math.isclose(acc.mean("PSNR"), plain.mean().item(), rel_tol=1e-12)
    assert np.allclose(acc.per_frame("pSSIM"), p_scores(ssim, pred, gt, True, "pair").double().mean(0).tolist())
    s = acc.summary()
    assert s["pLPIPS"] is None and s["LPIPS"] is None and s["num_sequences"] == 3
    assert len(s["pPSNR"]["per_frame"]) == 5 and all(math.isfinite(v) for v in s["pPSNR"]["per_frame"])
    table = acc.to_markdown()
    assert table.count("\n") == 7 and "skipped" in table
    with pytest.raises(ValueError, match="frames"):
        acc.update(pred[:, :3], gt[:, :3])


# ---------------------------------------------------------------------------------------------- LPIPS

@pytest.fixture(scope="module")
def random_lpips(tmp_path_factory):
    """LPIPSMetric over a seeded random AlexNet trunk in torchvision's layout, given as its weights file: runs
    the code path without the real file. Its numbers are not LPIPS."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        features = torchvision.models.alexnet(weights=None).features.state_dict()
    path = tmp_path_factory.mktemp("alexnet") / ALEXNET_WEIGHTS_FILE
    torch.save({"features." + k: v for k, v in features.items()}, path)
    return LPIPSMetric("cpu", weights_path=path)


def test_lpips_random_backbone_code_path(random_lpips):
    g = _gen(5)
    a = torch.rand(2, 3, 3, 32, 48, generator=g)
    b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    same = random_lpips(a, a.clone())
    assert same.shape == (2, 3) and torch.allclose(same, torch.zeros(2, 3), atol=1e-6)
    diff = random_lpips(a, b)
    assert diff.shape == (2, 3) and (diff > 0).all()
    assert torch.allclose(diff.reshape(-1), random_lpips(a.reshape(6, 3, 32, 48), b.reshape(6, 3, 32, 48)), atol=1e-6)

    acc = SequenceMetrics(lpips=random_lpips, mode="sequence")
    acc.update(b, a)
    s = acc.summary()
    assert s["LPIPS"]["mean"] > 0 and s["pLPIPS"]["mean"] <= s["LPIPS"]["mean"] + 1e-9


def test_lpips_missing_weights_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case someone called torch.hub.set_dir
    assert alexnet_weights_path() == tmp_path / "hub" / "checkpoints" / ALEXNET_WEIGHTS_FILE
    with pytest.raises(LPIPSWeightsMissing) as err:
        LPIPSMetric("cpu")
    msg = str(err.value)
    assert ALEXNET_WEIGHTS_FILE in msg and str(tmp_path) in msg and "--no_lpips" in msg
    assert "\n" not in msg


def test_lpips_loads_trunk_from_torch_cache(monkeypatch, tmp_path, random_lpips):
    # A stand-in for torchvision's file: same keys and shapes (features only), known values.
    state = {"features." + k.split(".", 1)[1]: torch.full_like(v, 0.01) + 0.001 * i
             for i, (k, v) in enumerate(random_lpips.model.net.state_dict().items())}
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    path = alexnet_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    rng = torch.random.get_rng_state()
    metric = LPIPSMetric("cpu")
    assert torch.equal(rng, torch.random.get_rng_state())  # building it leaves the caller's RNG alone
    assert torch.equal(metric.model.net.slice1.get_submodule("0").weight, state["features.0.weight"])
    assert torch.equal(metric.model.net.slice5.get_submodule("10").bias, state["features.10.bias"])

    # missing from the cache: downloaded there, as torchvision does (here by a stand-in download)
    path.unlink()
    calls = []

    def fake_download(url, target):
        calls.append((url, target))
        torch.save(state, target)

    monkeypatch.setattr(lpips_metrics, "_download", fake_download)
    metric = LPIPSMetric("cpu")
    assert calls == [(ALEXNET_WEIGHTS_URL, path)] and path.is_file()
    assert torch.equal(metric.model.net.slice5.get_submodule("10").bias, state["features.10.bias"])

    del state["features.8.weight"]
    torch.save(state, path)
    with pytest.raises(LPIPSWeightsError, match="not torchvision's AlexNet"):
        LPIPSMetric("cpu")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(LPIPSWeightsError, match="cannot read"):
        LPIPSMetric("cpu")


# ---------------------------------------------------------------------------------------------- ranks, devices

def test_all_reduce_with_a_rank_that_saw_nothing():
    """Two gloo processes: rank 1 has no sequence, yet both end with the figures of rank 0's two."""
    worker = Path(__file__).with_name("_dist_metrics_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker)], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = sorted((json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")),
                  key=lambda r: r["rank"])
    assert [r["rank"] for r in rows] == [0, 1]

    sys.path.insert(0, str(worker.parent))
    from _dist_metrics_worker import sequences
    single = SequenceMetrics(lpips=None, mode="pair")
    single.update(*sequences())
    for r in rows:
        assert r["n"] == 2
        assert np.allclose(r["pPSNR"], single.per_frame("pPSNR"), rtol=1e-12)
        assert np.allclose(r["SSIM"], single.per_frame("SSIM"), rtol=1e-12)


@pytest.mark.parametrize("hw", [(11, 11), (12, 150), (67, 130)])
def test_ssim_device_path_matches_skimage(monkeypatch, hw):
    """The banded-matmul filtering used off the CPU (CUDA, MPS), run here on the CPU."""
    monkeypatch.setattr(image_metrics, "_SCIPY_ON_CPU", False)
    monkeypatch.setattr(image_metrics, "_FILTER_BLOCK", 16)  # several blocks and a ragged last one
    g = _gen(7)
    a = torch.rand(2, 3, *hw, generator=g)
    b = (a + 0.3 * torch.rand(2, 3, *hw, generator=g)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(2):
        ref = structural_similarity((a[i] * 255).double().permute(1, 2, 0).numpy(),
                                    (b[i] * 255).double().permute(1, 2, 0).numpy(), data_range=255,
                                    channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert abs(ours[i].item() - ref) < 1e-6

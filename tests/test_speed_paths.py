"""The speed paths compute the same functions: HyperCUT's fused stem and chunks, Jin's shared block
statistics and per-colour chunks, SSIM's float32 path (outputs and gradients against the plain code)."""
import math

import pytest
import torch
import torch.nn.functional as F

import utils.metrics.image as image_metrics
from models.backbones.jin import FusionBlock, JinBackbone, ResBlock, _shared_norm_relu
from models.chunking import chunk_size, default_budget, set_chunk_bytes
from models.hypercut import HyperCUT, hypercut_loss


def rel_err(a, b):
    """Largest difference relative to the largest value of b; the plain difference where b is all zeros (a
    gradient that is exactly zero, e.g. behind a zero-initialised layer)."""
    diff, scale = (a - b).abs().max(), b.abs().max()
    return (diff / scale).item() if scale > 0 else diff.item()


def grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------- HyperCUT

def _hypercut_run(model, frames):
    model.zero_grad(set_to_none=True)
    emb, scores = model(frames)
    hypercut_loss(scores)[0].backward()
    return emb.detach(), scores.detach(), grads(model)


def rounding_tol(dtype, n: int, factor: float = 4.0) -> float:
    """The relative error two summation orders of n terms may show in `dtype`: factor x eps x sqrt(n) (the
    typical growth of rounding error over a reduction), derived from the dtype and the reduction size rather
    than tuned to one install's kernels."""
    return factor * torch.finfo(dtype).eps * math.sqrt(n)


# float64 shows the paths compute the same function; float32 shows rounding stays at its own level. The largest
# reduction is the stem's weight and bias gradient, a sum over every position of every pair (B x 6 x H x W). Some
# gradients also cancel (a bias gradient summing terms of both signs), so relative to their own size even the
# plain layers' float32 result is off by more than that: a fast path may be off by 4x the larger of the two
# (the plain path's own error is measured against float64).
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("hw", [(40, 48), (33, 35), (37, 41)])  # even, odd in both axes, odd rows
def test_fused_stem_and_chunks_match_plain_layers(hw, dtype):
    torch.manual_seed(0)
    model = HyperCUT().to(dtype)
    assert isinstance(model.f_func.model[2], torch.nn.Identity) and model.f_func.fuse_stem
    frames = torch.rand(3, 7, 3, *hw, dtype=dtype)
    fast = _hypercut_run(model, frames)
    set_chunk_bytes(model, 1)  # one pair per chunk
    chunked = _hypercut_run(model, frames)
    model.f_func.fuse_stem = False
    set_chunk_bytes(model, 1 << 40)  # one batch of 18 pairs through the layers one by one
    plain = _hypercut_run(model, frames)
    exact = _hypercut_run(model.double(), frames.double()) if dtype != torch.float64 else plain
    tol = rounding_tol(dtype, frames.shape[0] * 6 * hw[0] * hw[1])
    for got in (fast, chunked):
        assert rel_err(got[0], plain[0]) < tol and rel_err(got[1], plain[1]) < tol
        assert plain[2].keys() == got[2].keys() and len(plain[2]) == 36  # every conv weight and bias
        for k in plain[2]:
            own = rel_err(plain[2][k].double(), exact[2][k].double())  # the plain path's rounding error
            assert rel_err(got[2][k].double(), exact[2][k].double()) < max(tol, 4 * own), k


def test_fused_and_chunked_model_reproduces_reference(hypercut_reference):
    fixture = hypercut_reference
    model = HyperCUT()
    model.load_state_dict(fixture["state_dict"], strict=True)
    set_chunk_bytes(model, 1)
    with torch.no_grad():
        emb, scores = model.eval().pair_scores_network(fixture["sharp_frames"])
    assert rel_err(emb, fixture["embeddings"]) < 1e-4
    assert rel_err(scores, fixture["projections"]) < 1e-4


def test_real_slope_keeps_leaky_relu_unfused():
    model = HyperCUT(slope=0.2)
    assert not model.f_func.fuse_stem
    assert all(isinstance(model.f_func.model[i], torch.nn.LeakyReLU) for i in (2, 4, 6, 8, 10, 12))
    assert set(model.state_dict()) == set(HyperCUT().state_dict())


def test_chunk_size_rules():
    mib = 1 << 20
    assert chunk_size(48, mib, 12 * mib) == 12
    assert chunk_size(48, 100 * mib, 12 * mib) == 1  # never below one item
    assert chunk_size(5, mib, 12 * mib) == 5
    assert chunk_size(48, mib, None) == 48
    assert default_budget(torch.device("cuda")) is None
    assert default_budget(torch.device("cpu")) > 0


# ------------------------------------------------------------------------------------------------ Jin

def _random_affines(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".norm" in f".{name}" or name.startswith("norm"):
                p.copy_((torch.randn(p.shape, generator=g) * 0.5 + (1.0 if name.endswith("weight") else 0.0)))


def _plain_block(block, x):
    """The blocks as written in Jin's official code: each norm on its own."""
    a = block.conv1(F.relu(block.norm1(x)))
    b = block.conv2(F.relu(block.norm2(x)))
    if isinstance(block, FusionBlock):
        return a + b
    return x + a + block.conv4(F.relu(block.norm4(b)))


@pytest.mark.parametrize("make", [lambda: ResBlock(12, (2, 1)), lambda: FusionBlock(12, 5)])
def test_block_statistics_once_equal_two_norms(make):
    """Inference runs the blocks with shared statistics; they equal the official two-norm blocks."""
    torch.manual_seed(0)
    block = make()
    _random_affines(block)
    x = torch.randn(2, 12, 9, 11) * 3 + 2
    tol = rounding_tol(x.dtype, 9 * 11 + 9 * 12)  # a norm over H x W, then a 3x3 conv over 12 channels
    with torch.no_grad():
        assert rel_err(block(x), _plain_block(block, x)) < tol
    with torch.enable_grad():  # training keeps InstanceNorm2d per branch: the same function
        assert rel_err(block(x).detach(), _plain_block(block, x).detach()) < tol


@pytest.mark.parametrize("hw", [(8, 8), (5, 8), (9, 9)])
def test_dilation_past_the_image_is_a_centre_tap_convolution(hw):
    """A dilation at least the image's size (8x8 trunks of 40x40 crops) runs as a 1x1 convolution: the same
    outputs and gradients as the padded 3x3 convolution. 9x9 keeps the full convolution (one tap row valid)."""
    torch.manual_seed(0)
    block = ResBlock(6, (8, 2)).double()
    _random_affines(block)
    x = (torch.randn(3, 6, *hw, dtype=torch.float64) * 2 + 1).requires_grad_()
    w = torch.randn(3, 6, *hw, dtype=torch.float64)

    def grads(fn):
        block.zero_grad(set_to_none=True)
        x.grad = None
        out = fn(block, x)
        (out * w).sum().backward()
        return out.detach(), x.grad.clone(), {k: p.grad.clone() for k, p in block.named_parameters()}

    out, gx, gp = grads(lambda b, t: b(t))
    ref, rx, rp = grads(_plain_block)
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12) and torch.allclose(gx, rx, rtol=1e-12, atol=1e-12)
    for k in rp:
        assert torch.allclose(gp[k], rp[k], rtol=1e-12, atol=1e-12), k
    # the off-centre taps of the dilation-8 convolution get no gradient: they only ever read the padding
    off_centre = gp["conv2.weight"].clone()
    off_centre[:, :, 1, 1] = 0
    assert bool((off_centre == 0).all()) == (max(hw) <= 8)


def test_shared_statistics_outputs_and_gradients():
    norm_a, norm_b = torch.nn.InstanceNorm2d(4, affine=True), torch.nn.InstanceNorm2d(4, affine=True)
    norms = torch.nn.ModuleDict({"norma": norm_a, "normb": norm_b})
    _random_affines(norms)
    x = (torch.randn(3, 4, 6, 7) * 5 + 10).requires_grad_()  # a large mean: the cancellation case
    weights = torch.randn(2, 3, 4, 6, 7)

    def loss(a, b):
        return (a * weights[0]).sum() + (b * weights[1]).sum()

    a, b = _shared_norm_relu(x, norm_a, norm_b)
    loss(a, b).backward()
    got = {"x": x.grad.clone(), **{k: p.grad.clone() for k, p in norms.named_parameters()}}
    x.grad = None
    norms.zero_grad(set_to_none=True)
    ref_a, ref_b = F.relu(norm_a(x)), F.relu(norm_b(x))
    loss(ref_a, ref_b).backward()
    ref = {"x": x.grad, **{k: p.grad for k, p in norms.named_parameters()}}
    tol = rounding_tol(x.dtype, 3 * 6 * 7)  # the affine gradients sum over batch x H x W
    assert rel_err(a.detach(), ref_a.detach()) < tol and rel_err(b.detach(), ref_b.detach()) < tol
    for k in ref:
        assert rel_err(got[k], ref[k]) < tol, k


def test_per_colour_chunks_equal_whole_batch():
    # float64: through 60 normalised layers with random affines, float32 rounding alone moves some
    # gradients by 1e-4 relative between any two summation orders; float64 shows the paths are equal
    torch.manual_seed(0)
    model = JinBackbone(width_mult=0.25).double()
    _random_affines(model)
    blur = torch.rand(2, 3, 40, 60, dtype=torch.float64)
    set_chunk_bytes(model, 1 << 40)
    whole = model(blur)["frames"]
    whole.square().mean().backward()
    g_whole = grads(model)
    model.zero_grad(set_to_none=True)
    set_chunk_bytes(model, 1)  # one colour of one image per trunk call
    chunked = model(blur)["frames"]
    chunked.square().mean().backward()
    assert rel_err(chunked.detach(), whole.detach()) < 1e-10
    g_chunked = grads(model)
    for k in g_whole:
        assert rel_err(g_chunked[k], g_whole[k]) < 1e-10, k
    with torch.inference_mode():
        assert (model.eval()(blur)["frames"] - whole).abs().max().item() < 1e-10


# ----------------------------------------------------------------------------------------------- SSIM

def _skimage(a, b):
    from skimage.metrics import structural_similarity
    return structural_similarity((a.double() * 255).permute(1, 2, 0).numpy(), (b.double() * 255).permute(1, 2, 0).numpy(),
                                 data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)


def test_float32_ssim_on_near_flat_saturated_images():
    """Small variances on a large mean: where E[x^2] - E[x]^2 would lose float32 precision."""
    g = torch.Generator().manual_seed(0)
    pairs = []
    for level, noise in ((1.0, 0.001), (0.0, 0.001), (0.999, 0.001), (0.98, 0.02)):
        base = torch.full((3, 13, 15), level)
        pairs.append(((base + noise * torch.randn(base.shape, generator=g)).clamp(0, 1),
                      (base + noise * torch.randn(base.shape, generator=g)).clamp(0, 1)))
    a, b = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    ours = image_metrics.ssim(a, b)
    assert ours.dtype == torch.float32
    for i in range(len(pairs)):
        assert abs(ours[i].item() - _skimage(a[i], b[i])) < 1e-4


def test_float64_paths_agree(monkeypatch):
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 3, 67, 130, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.rand(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    scipy_path = image_metrics.ssim(a, b)
    monkeypatch.setattr(image_metrics, "_SCIPY_ON_CPU", False)
    matmul_path = image_metrics.ssim(a, b)
    assert scipy_path.dtype == matmul_path.dtype == torch.float64
    assert (scipy_path - matmul_path).abs().max().item() < 1e-10
    assert abs(scipy_path[0].item() - _skimage(a[0], b[0])) < 1e-10


def test_ssim_chunks_do_not_change_values(monkeypatch):
    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(2, 3, 3, 20, 24, generator=g), torch.rand(2, 3, 3, 20, 24, generator=g)
    whole = image_metrics.ssim(a, b)
    monkeypatch.setattr(image_metrics, "_SSIM_CHUNK_PIXELS", 1)  # one plane per chunk
    torch.testing.assert_close(image_metrics.ssim(a, b), whole, rtol=0, atol=1e-6)

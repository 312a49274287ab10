"""HyperCUT ordering model: conformance with the reference fixture, the loss, the order rule, hit/con, loading."""
import math

import pytest
import torch

from models.convention import REFERENCE_BGR_IMAGENET, RGB_UNIT
from models.hypercut import (HyperCUT, Hyperplane, ResnetIm2Vec, build_hypercut, hit_con, hypercut_loss,
                             load_hypercut, order_decisions, ordering_stats, sequence_pairs)
from utils.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def reference_model(hypercut_reference):
    model = HyperCUT()
    model.load_state_dict(hypercut_reference["state_dict"], strict=True)
    return model.eval()


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_state_dict_keys_match_the_reference(hypercut_reference):
    assert set(HyperCUT().state_dict()) == set(hypercut_reference["state_dict"])


def test_reproduces_reference_embeddings_and_scores(hypercut_reference, reference_model):
    with torch.no_grad():
        emb, scores = reference_model.pair_scores_network(hypercut_reference["sharp_frames"])
    assert emb.shape == (2, 6, 128) and scores.shape == (2, 6)
    assert rel_err(emb, hypercut_reference["embeddings"]) < 1e-4
    assert rel_err(scores, hypercut_reference["projections"]) < 1e-4
    # the scores are the hyperplane applied to the embeddings, pair by pair
    torch.testing.assert_close(reference_model.score(emb), scores)


def test_rgb_api_matches_network_space(hypercut_reference, reference_model):
    assert reference_model.input_convention == REFERENCE_BGR_IMAGENET
    rgb = REFERENCE_BGR_IMAGENET.from_network(hypercut_reference["sharp_frames"])
    with torch.no_grad():
        emb, scores = reference_model.pair_scores(rgb)
        emb_fwd, _ = reference_model(rgb)
    assert rel_err(emb, hypercut_reference["embeddings"]) < 1e-4
    assert rel_err(scores, hypercut_reference["projections"]) < 1e-4
    torch.testing.assert_close(emb_fwd, emb)


def test_single_pair_and_forward_only_pairs(hypercut_reference, reference_model):
    x = hypercut_reference["sharp_frames"]
    with torch.no_grad():
        d = reference_model.embed_pair(x[:, 6], x[:, 0])  # dbar1 = f(g(x7, x1))
        _, fwd = reference_model.pair_scores_network(x, include_reversed=False)
    assert rel_err(d, hypercut_reference["embeddings"][:, 1]) < 1e-4
    assert rel_err(fwd, hypercut_reference["projections"][:, 0::2]) < 1e-4


def test_sequence_pairs_for_other_lengths():
    assert sequence_pairs(7) == [(0, 6), (6, 0), (1, 5), (5, 1), (2, 4), (4, 2)]
    assert sequence_pairs(9, include_reversed=False) == [(0, 8), (1, 7), (2, 6)]
    assert sequence_pairs(6, include_reversed=False) == [(0, 5), (1, 4), (2, 3)]
    with pytest.raises(ValueError, match="at least 6 frames"):
        sequence_pairs(5)


def test_hyperplane_seeded_and_never_trained():
    expected = torch.rand(129, generator=torch.Generator().manual_seed(42)) * 2 - 1
    state = torch.get_rng_state()
    plane = Hyperplane(128)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    torch.testing.assert_close(plane.hyperplane.data, expected, rtol=0, atol=0)
    assert plane.hyperplane.min() >= -1 and plane.hyperplane.max() <= 1

    torch.manual_seed(0)
    model = HyperCUT(out_dim=32, slope=0.2)
    assert "hyperplane.hyperplane" in model.state_dict()
    assert not model.hyperplane.hyperplane.requires_grad
    before = model.hyperplane.hyperplane.detach().clone()
    conv_before = model.f_func.model[1].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _, scores = model(torch.rand(2, 7, 3, 40, 40))
    hypercut_loss(scores)[0].backward()
    opt.step()
    assert torch.equal(model.hyperplane.hyperplane, before)
    assert not torch.equal(model.f_func.model[1].weight, conv_before)


def test_hyperplane_formula():
    plane = Hyperplane(3)
    plane.hyperplane.data = torch.tensor([1.0, -2.0, 0.5, 0.25])
    d = torch.tensor([[1.0, 2.0, 4.0], [0.0, 1.0, 0.0]])
    # h(d) = d . w[:3] + w[3] * sum(d)
    expected = torch.tensor([1 - 4 + 2 + 0.25 * 7, -2 + 0.25])
    torch.testing.assert_close(plane(d), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scores_are_float32_under_autocast(dtype):
    """Under autocast the score d . w is still computed in float32 (autocast would run the matmul in
    bf16/fp16: a score error of about 0.1 on scores of about 20)."""
    plane = Hyperplane(128)
    d = torch.randn(64, 128, generator=torch.Generator().manual_seed(0)) * 3
    exact = plane(d.double())
    with torch.autocast("cpu", dtype=dtype):
        inside = plane(d)
    assert inside.dtype == torch.float32
    err = (inside.double() - exact).abs().max().item()
    assert err < 1e-4 * exact.abs().max().item(), err
    # bf16/fp16 embeddings are scored in float32 too: the same as scoring their float32 values
    with torch.autocast("cpu", dtype=dtype):
        low = plane(d.to(dtype))
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, plane(d.to(dtype).float()))


def test_model_scores_under_autocast_are_float32():
    """A whole HyperCUT under CPU bf16 autocast: scores float32 and equal to scoring its own embeddings."""
    torch.manual_seed(0)
    model = build_hypercut({"out_dim": 16}).eval()
    frames = torch.rand(2, 7, 3, 40, 40)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        d, scores = model.pair_scores(frames)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, model.score(d.float()), rtol=0, atol=1e-5)


def test_hypercut_loss_by_hand():
    scores = torch.tensor([[1.0, -2.0, 0.5, 0.5, -1.0, 3.0],
                           [0.0, 1.0, 2.0, -1.0, 1.5, -0.5]])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    diff, same = [], []
    for u1, v1, u2, v2, u3, v3 in scores.tolist():
        diff += [sp(u1 * v1), sp(u2 * v2), sp(u3 * v3)]
        same += [sp(-u1 * u2), sp(-u2 * u3), sp(-u1 * u3)]
    l_diff, l_same = sum(diff) / 6, sum(same) / 6
    total, got_diff, got_same = hypercut_loss(scores)
    assert got_diff.item() == pytest.approx(l_diff, rel=1e-6)
    assert got_same.item() == pytest.approx(l_same, rel=1e-6)
    assert total.item() == pytest.approx(0.5 * l_diff + 0.5 * l_same, rel=1e-6)
    with pytest.raises(ValueError):
        hypercut_loss(scores[:, :3])


def test_order_decisions():
    scores = torch.tensor([
        [1.0, -1.0, 2.0, -2.0, 3.0, -3.0],   # all positive: keep
        [-1.0, 1.0, -2.0, 2.0, -0.5, 1.0],   # u1 < 0, consistent: reverse
        [-1.0, 1.0, 2.0, -2.0, -0.5, 1.0],   # u1 < 0, u2 disagrees: keep
        [-1.0, 1.0, -2.0, 2.0, 0.5, 1.0],    # u1 < 0, u3 disagrees: keep
        [1.0, -1.0, -2.0, 2.0, -3.0, 3.0],   # u1 > 0: keep whatever the rest say
    ])
    assert order_decisions(scores).tolist() == [False, True, False, False, False]
    assert order_decisions(scores[:, 0::2]).tolist() == [False, True, False, False, False]
    stats = ordering_stats(scores)  # the masks behind hit/con: one definition for scripts and metrics
    assert stats["hit1"].tolist() == [True] * 5
    assert stats["hit3"].tolist() == [True, True, True, False, True]
    assert stats["con2"].tolist() == [True, True, False, True, False]
    assert stats["con3"].tolist() == [True, True, False, False, False]


def test_hit_con_by_hand():
    scores = torch.tensor([
        # d1,  db1,  d2,  db2,  d3,  db3
        [1.0, -1.0, 2.0, -2.0, 3.0, -3.0],   # all hits, consistent
        [-1.0, 1.0, -2.0, 2.0, 3.0, 1.0],    # P3 miss; con@2 yes, con@3 no
        [1.0, 1.0, -2.0, 2.0, -3.0, 3.0],    # P1 miss; inconsistent
        [-1.0, 2.0, -2.0, -1.0, -3.0, 3.0],  # P2 miss; con@2 and con@3
    ])
    out = hit_con(scores)
    assert out == {"hit": 0.75, "hit_x2_x6": 0.75, "hit_x3_x5": 0.75, "con@2": 0.75, "con@3": 0.5,
                   "num_sequences": 4}
    assert hit_con([[0.0, 1.0, 0.0, 1.0, 0.0, 1.0]])["con@2"] == 0.0  # zero agrees with nothing
    assert math.isnan(hit_con(torch.zeros(0, 6))["hit"])
    with pytest.raises(ValueError):
        hit_con(torch.zeros(3, 5))


def test_slope_option_changes_output(hypercut_compact):
    x = hypercut_compact["sharp_frames"][:1]
    leaky = HyperCUT(slope=0.2)
    leaky.load_state_dict(hypercut_compact["state_dict"], strict=True)
    assert leaky.config["slope"] == 0.2
    assert isinstance(leaky.f_func.model[2], torch.nn.LeakyReLU) and leaky.f_func.model[2].negative_slope == 0.2
    with torch.no_grad():
        emb, _ = leaky.pair_scores_network(x)
    assert rel_err(emb, hypercut_compact["embeddings"][:1]) > 1e-3


def test_resnet_im2vec_layout():
    f = ResnetIm2Vec(out_dim=128)
    convs = [m for m in f.model if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (6, 32), (32, 64), (64, 128), (128, 128), (128, 128), (128, 128)]
    assert f(torch.rand(3, 6, 64, 64)).shape == (3, 128)


def test_load_reference_state_dict_file(tmp_path, hypercut_reference):
    path = tmp_path / "hypercut_released.pth"
    torch.save(hypercut_reference["state_dict"], path)
    model = load_hypercut(path)
    assert model.input_convention == REFERENCE_BGR_IMAGENET
    assert model.config == {"out_dim": 128, "f_func": "ResnetIm2Vec", "g_func": "Concat", "slope": 1.0}
    assert not model.training
    with torch.no_grad():
        _, scores = model.pair_scores_network(hypercut_reference["sharp_frames"])
    assert rel_err(scores, hypercut_reference["projections"]) < 1e-4


def test_our_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(1)
    model = build_hypercut({"out_dim": 64, "slope": 0.2}, input_convention=RGB_UNIT)
    path = tmp_path / "0005.pth"
    torch.save({"model": model.state_dict(), "epoch": 5, **model.checkpoint_fields()}, path)
    loaded = load_hypercut(str(path))
    assert loaded.config == model.config and loaded.input_convention == RGB_UNIT
    x = torch.rand(1, 7, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[1], model.eval()(x)[1])


def test_bad_checkpoints(tmp_path, hypercut_compact):
    jin = tmp_path / "center_v3.pth"
    torch.save({"state_dict_G": {"conv1.weight": torch.zeros(1)}}, jin)
    with pytest.raises(CheckpointError, match=r"center_v3\.pth.*Jin"):
        load_hypercut(jin)

    missing = dict(hypercut_compact["state_dict"])
    del missing["f_func.model.13.conv_block.4.bias"]
    path = tmp_path / "missing.pth"
    torch.save(missing, path)
    with pytest.raises(CheckpointError, match=r"missing\.pth.*1 missing key \(f_func\.model\.13\.conv_block\.4\.bias\)"):
        load_hypercut(path)

    path = tmp_path / "mismatch.pth"
    torch.save({"model": hypercut_compact["state_dict"], "hypercut_config": {"out_dim": 64},
                "input_convention": REFERENCE_BGR_IMAGENET.to_dict()}, path)
    with pytest.raises(CheckpointError, match=r"mismatch\.pth.*out_dim mismatch.*64.*129"):
        load_hypercut(path)

    path = tmp_path / "shape.pth"
    bad = dict(hypercut_compact["state_dict"])
    bad["f_func.model.1.weight"] = torch.zeros(32, 3, 7, 7)
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match=r"shape\.pth.*f_func\.model\.1\.weight"):
        load_hypercut(path)

    path = tmp_path / "blur2vid.pth"
    torch.save({"model": {"net.conv.weight": torch.zeros(1)}, "input_convention": RGB_UNIT.to_dict()}, path)
    with pytest.raises(CheckpointError, match=r"blur2vid\.pth.*hyperplane"):
        load_hypercut(path)

    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"other\.pth.*not a HyperCUT checkpoint"):
        load_hypercut(path)

    with pytest.raises(CheckpointError, match="not found"):
        load_hypercut(tmp_path / "nope.pth")
    (tmp_path / "cut.pth").write_bytes(jin.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=r"cut\.pth"):
        load_hypercut(tmp_path / "cut.pth")


def test_build_hypercut_rejects_unknown_names():
    with pytest.raises(ValueError, match="f_func"):
        build_hypercut({"f_func": "Nope"})
    with pytest.raises(ValueError, match="unknown HyperCUT config keys"):
        build_hypercut({"outdim": 128})


def test_too_small_images_and_short_sequences_are_clear_errors():
    model = HyperCUT(out_dim=32)
    with pytest.raises(ValueError, match="at least 33 x 33"):
        model(torch.rand(1, 7, 3, 32, 64))
    with pytest.raises(ValueError, match="at least 6 frames"):
        model(torch.rand(1, 5, 3, 40, 40))


def test_lowpass_filter_values():
    from models.hypercut import gaussian_kernel1d, separable_blur
    k = gaussian_kernel1d(2.0)
    assert k.numel() == 13 and abs(k.sum().item() - 1) < 1e-6 and k.argmax().item() == 6
    assert abs(k[6].item() / k[8].item() - math.exp(0.5)) < 1e-5  # exp(-x^2 / 2 sigma^2) at x = 0 and 2
    const = torch.full((2, 3, 20, 24), 0.7)
    torch.testing.assert_close(separable_blur(const, k), const)
    # a checkerboard (the finest detail) is all but erased; a one-pixel impulse becomes the 2-d kernel
    checker = ((torch.arange(20).view(-1, 1) + torch.arange(24).view(1, -1)) % 2).float().expand(1, 3, 20, 24)
    assert separable_blur(checker, k)[..., 6:-6, 6:-6].std() < 1e-3
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[..., 10, 10] = 1
    torch.testing.assert_close(separable_blur(impulse, k)[0, 0, 4:17, 4:17], torch.outer(k, k))


def test_lowpass_model_judges_blurred_frames_and_round_trips(tmp_path):
    from models.hypercut import gaussian_kernel1d, separable_blur
    torch.manual_seed(3)
    plain = build_hypercut({"out_dim": 32}, input_convention=RGB_UNIT).eval()
    low = build_hypercut({"out_dim": 32, "lowpass": 1.5}, input_convention=RGB_UNIT).eval()
    low.load_state_dict(plain.state_dict())  # the filter adds no weights: the same state dict loads
    assert plain.config == {"out_dim": 32, "f_func": "ResnetIm2Vec", "g_func": "Concat", "slope": 1.0}
    assert low.config["lowpass"] == 1.5
    x = torch.rand(2, 7, 3, 40, 40)
    blurred = separable_blur(x.flatten(0, 1), gaussian_kernel1d(1.5)).view_as(x)
    with torch.no_grad():
        torch.testing.assert_close(low(x)[1], plain(blurred)[1], rtol=1e-4, atol=1e-5)
        assert (low(x)[1] - plain(x)[1]).abs().max() > 1e-3  # the filter does change the scores
    path = tmp_path / "0001.pth"
    torch.save({"model": low.state_dict(), **low.checkpoint_fields()}, path)
    loaded = load_hypercut(path)
    assert loaded.config == low.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[1], low(x)[1])
    with pytest.raises(ValueError, match="lowpass"):
        build_hypercut({"lowpass": -1.0})

"""Jin et al. backbone: official layout, reference outputs, any-size input, loading errors."""
import pytest
import torch
import torch.nn.functional as F

from models.backbones.jin import (OFFICIAL_FILES, InnerNetwork, JinBackbone, MiddleNetwork, load_official_jin,
                                  save_official_jin)
from models.convention import RGB_UNIT
from utils.checkpoint import CheckpointError

NAMES = ("center", "f35", "f26", "f17")
FILENAMES = {name: filename for name, filename, _ in OFFICIAL_FILES}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def official(jin_reference):
    """Per fixture source: for the tests that compare with the official frames."""
    return load_official_jin(jin_reference[0]).eval()


@pytest.fixture(scope="module")
def compact_official(jin_compact):
    """The compact fixture's weights only: for the tests that need the real layout, not the frames."""
    return load_official_jin(jin_compact[0]).eval()


def run(model, x):
    with torch.no_grad():
        return model(x)["frames"]


def test_reproduces_reference_frames(official, jin_reference):
    _, blur, frames = jin_reference
    out = run(official, blur)
    assert out.shape == frames.shape == (2, 7, 3, 40, 60)
    assert (out - frames).abs().max().item() < 1e-4
    assert official.input_convention == RGB_UNIT


def test_official_files_round_trip(official, jin_reference, tmp_path):
    dicts, blur, frames = jin_reference
    paths = save_official_jin(official, tmp_path)
    assert sorted(p.name for p in paths) == sorted(FILENAMES.values())
    for name in NAMES:
        saved = torch.load(tmp_path / FILENAMES[name], weights_only=True, map_location="cpu")
        assert set(saved) == {"state_dict_G"}
        assert set(saved["state_dict_G"]) == set(dicts[name])  # the official key names, exactly
    assert any(k.startswith("generateFrame3.") for k in dicts["f35"])
    assert any(k.startswith("generateFrame5.") for k in dicts["f35"])
    reloaded = load_official_jin(tmp_path)
    out = run(reloaded, blur)
    assert (out - frames).abs().max().item() < 1e-4
    assert torch.equal(out, run(official, blur))


def test_joint_state_dict_round_trip(compact_official, jin_compact):
    model = JinBackbone()
    model.load_state_dict(compact_official.state_dict(), strict=True)
    blur = jin_compact[1]
    assert torch.equal(run(model, blur), run(compact_official, blur))


def test_parameter_counts():
    model = JinBackbone()
    assert n_params(model.center) == 4_972_032
    assert n_params(model.frame3) == n_params(model.frame5) == 3_934_464
    assert n_params(model.frame26) == n_params(model.frame17) == 2_686_208
    assert n_params(model) == 18_213_376
    assert n_params(MiddleNetwork()) == 4_972_032
    assert n_params(InnerNetwork(4)) == 3_934_464 and n_params(InnerNetwork(2)) == 2_686_208
    assert not any(b.numel() for b in model.buffers())  # no running stats


def test_any_size_pads_reflect_and_crops(compact_official, jin_compact):
    blur = jin_compact[1][:, :, :37, :53]
    out = run(compact_official, blur)
    assert out.shape == (2, 7, 3, 37, 53)
    padded = F.pad(blur, (0, 60 - 53, 0, 40 - 37), mode="reflect")
    expected = run(compact_official, padded)[..., :37, :53]
    assert torch.allclose(out, expected, atol=1e-6)
    # not a multiple of 20 in one axis only; and an image smaller than the padding it needs
    assert run(compact_official, jin_compact[1][:, :, :, :41]).shape == (2, 7, 3, 40, 41)
    tiny = run(compact_official, jin_compact[1][:1, :, :7, :9])
    assert tiny.shape == (1, 7, 3, 7, 9) and torch.isfinite(tiny).all()


def test_multiple_of_20_is_not_padded(official, jin_reference):
    _, blur, frames = jin_reference
    # frames were made by the official code, which never pads: any padding would change them
    with torch.no_grad():
        x4 = official.center(blur)  # the middle network alone: frame 4
    assert (x4 - frames[:, 3]).abs().max().item() < 1e-4
    assert (run(official, blur) - frames).abs().max().item() < 1e-4


def test_narrow_width_runs():
    torch.manual_seed(0)
    model = JinBackbone(width_mult=0.25).eval()
    assert n_params(model) < n_params(JinBackbone()) / 10
    assert model.center.conv1_B.weight.shape == (36, 16, 5, 5)  # 144 scaled; 16 = 4x4 is fixed
    assert model.frame3.conv1_B.weight.shape == (16, 25, 5, 5)  # 64 scaled; 25 = 5x5 is fixed
    out = run(model, torch.rand(1, 3, 23, 31))
    assert out.shape == (1, 7, 3, 23, 31) and torch.isfinite(out).all()


def test_other_width_gives_clear_error(tmp_path):
    narrow = JinBackbone(width_mult=0.25)
    with pytest.raises(CheckpointError, match=r"center_v3\.pth.*shape.*width"):
        load_official_jin(narrow.official_state_dicts())
    save_official_jin(narrow, tmp_path)
    with pytest.raises(CheckpointError, match=r"center_v3\.pth.*width_mult=1") as info:
        load_official_jin(tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    assert n_params(load_official_jin(tmp_path, width_mult=0.25)) == n_params(narrow)


def test_missing_file_is_named(compact_official, tmp_path):
    save_official_jin(compact_official, tmp_path)
    (tmp_path / "F26_N9_from_F35_N8.pth").unlink()
    with pytest.raises(CheckpointError, match=r"F26_N9_from_F35_N8\.pth.*missing") as info:
        load_official_jin(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(CheckpointError, match="folder not found"):
        load_official_jin(tmp_path / "nowhere")


def test_wrong_keys_are_named(jin_compact):
    dicts = dict(jin_compact[0])
    f17 = dict(dicts["f17"])
    f17["generateFrame1_7.extra.weight"] = f17.pop("generateFrame1_7.conv3.weight")
    dicts["f17"] = f17
    with pytest.raises(CheckpointError, match=r"F17_N9_from_F26_N9_from_F35_N8\.pth.*"
                                              r"missing 1 keys.*generateFrame1_7\.conv3\.weight.*"
                                              r"unexpected 1 keys.*generateFrame1_7\.extra\.weight"):
        load_official_jin(dicts)
    with pytest.raises(CheckpointError, match="'f26'"):
        load_official_jin({k: v for k, v in jin_compact[0].items() if k != "f26"})


def test_stray_running_stats_are_ignored(jin_compact, tmp_path):
    dicts, blur, frames = jin_compact
    with_stats = {}
    for name, sd in dicts.items():
        sd = dict(sd)
        for k in [k for k in sd if ".norm" in k and k.endswith(".weight")]:
            stem = k[: -len("weight")]
            sd[stem + "running_mean"] = torch.full_like(sd[k], 5.0)
            sd[stem + "running_var"] = torch.full_like(sd[k], 9.0)
            sd[stem + "num_batches_tracked"] = torch.tensor(3)
        with_stats[name] = {"state_dict_G": sd}
    out = run(load_official_jin(with_stats), blur)
    assert (out - frames).abs().max().item() < 1e-4
    for name in NAMES:
        torch.save(with_stats[name], tmp_path / FILENAMES[name])
    assert torch.equal(run(load_official_jin(tmp_path), blur), out)


def test_rejects_wrong_input_shape(compact_official):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        compact_official(torch.rand(1, 1, 40, 60))


def test_given_center_replaces_the_middle_network(compact_official, jin_compact):
    """The backbone contract's oracle centre: frame 4 is the given frame, and the other frames are
    refined from it (they change with it)."""
    _, blur, frames = jin_compact
    with torch.no_grad():
        own = compact_official(blur)
        given = compact_official(blur, frames[:, 3])
    assert torch.equal(own["center"], own["frames"][:, 3])
    assert torch.allclose(given["frames"][:, 3], frames[:, 3], atol=1e-6)
    assert (given["frames"][:, 0] - own["frames"][:, 0]).abs().max() > 0

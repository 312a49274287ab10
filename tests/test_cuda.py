"""The CUDA path: run only where a GPU is present (CI has none; a lent GPU machine runs this file).

Mixed precision (bf16 and fp16 with its GradScaler) and channels_last through both train scripts,
Purohit stage 1, evaluation on the GPU equal to the CPU's, SSIM's GPU path against scikit-image."""
import json

import numpy as np
import pytest
import torch

import test_blur2vid
import train_blur2vid
import train_hypercut
from _tiny import synthetic_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("cuda") / "data", 64, {"train": 8, "val": 2, "test": 2}, seed=4)


def finite(history) -> bool:
    return len(history["losses"]) > 0 and bool(np.isfinite(history["losses"]).all())


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_hypercut_training_on_cuda(data, tmp_path, amp):
    args = train_hypercut.build_parser().parse_args(
        ["--metadata_root", str(data), "--checkpoints_dir", str(tmp_path), "--exp_name", amp, "--device", "cuda",
         "--num_workers", "2", "--crop_size", "48", "--batch_size", "4", "--epochs", "2", "--lr", "5e-5",
         "--amp", amp, "--channels_last"])
    history = train_hypercut.train(args)
    assert finite(history) and 0.0 <= history["val"][2]["hit"] <= 1.0
    state = torch.load(tmp_path / amp / "training_states" / "latest.pth", weights_only=True, map_location="cpu")
    assert ("grad_scaler" in state) == (amp == "fp16")


@pytest.mark.parametrize("backbone,extra", [("Jin", []), ("Purohit", ["--stage", "1"])])
def test_blur2vid_training_on_cuda(data, tmp_path, backbone, extra):
    args = train_blur2vid.build_parser().parse_args(
        ["--metadata_root", str(data), "--checkpoints_dir", str(tmp_path), "--exp_name", backbone, "--device", "cuda",
         "--num_workers", "2", "--crop_size", "48", "--batch_size", "4", "--epochs", "2", "--width_mult", "0.25",
         "--backbone", backbone, "--amp", "bf16", "--channels_last", "--display_step", "1", *extra])
    history = train_blur2vid.train(args)
    assert finite(history) and history["val"][2]["pPSNR"] > 5


def test_evaluation_on_cuda_equals_cpu(data, tmp_path, capsys):
    args = train_blur2vid.build_parser().parse_args(
        ["--metadata_root", str(data), "--checkpoints_dir", str(tmp_path), "--exp_name", "jin", "--device", "cpu",
         "--num_workers", "0", "--crop_size", "40", "--batch_size", "4", "--epochs", "1", "--width_mult", "0.25"])
    train_blur2vid.train(args)
    model = tmp_path / "jin" / "models" / "0001.pth"
    results = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        assert test_blur2vid.main(["--metadata_root", str(data), "--pretrained_path", str(model), "--device", device,
                                   "--no_lpips", "--output_json", str(out)]) == 0
        results[device] = json.loads(out.read_text())
    for name in ("pPSNR", "pSSIM", "PSNR", "SSIM"):
        assert results["cuda"][name] == pytest.approx(results["cpu"][name], rel=1e-4, abs=1e-4), name


def test_ssim_gpu_path_matches_scikit_image():
    from skimage.metrics import structural_similarity
    from utils.metrics.image import ssim
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 64, 80, generator=g)
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    got = ssim(a.cuda(), b.cuda()).cpu()
    for i in range(3):
        ref = structural_similarity(a[i].permute(1, 2, 0).numpy() * 255, b[i].permute(1, 2, 0).numpy() * 255,
                                    data_range=255, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert abs(float(got[i]) - ref) < 1e-4

"""LPIPS per image (the `lpips` package, AlexNet, version 0.1) and torchvision's AlexNet weights it needs.

The linear layers ship with the `lpips` package. The AlexNet trunk is torchvision's
alexnet-owt-7be5be79.pth: an LPIPSMetric reads it from its weights_path (default: torchvision's cache,
torch.hub.get_dir()/checkpoints, which TORCH_HOME moves) and, where the file is missing, downloads it
there when the machine is online (fetch_alexnet_weights); offline and without the file,
`LPIPSWeightsMissing`. Of the scripts only test_blur2vid.py builds one, unless LPIPS is switched off
(--no_lpips, --lpips off); nothing else in the project downloads.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from utils.errors import UserError
from utils.metrics.image import check_pair

ALEXNET_WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_WEIGHTS_URL = "https://download.pytorch.org/models/" + ALEXNET_WEIGHTS_FILE
# The smallest image side LPIPS works on: AlexNet's 11x11 stride-4 convolution and two 3x3 stride-2
# poolings.
LPIPS_MIN_SIZE = 31
class LPIPSWeightsError(UserError):
    """LPIPS cannot run with real weights; the message (one line) names the file and the fix."""


class LPIPSWeightsMissing(LPIPSWeightsError):
    """torchvision's AlexNet weights are neither where LPIPS looks for them nor downloadable."""


def alexnet_weights_path() -> Path:
    """Where torchvision caches the AlexNet weights: torch.hub.get_dir()/checkpoints (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS_FILE


def _download(url: str, path: Path, timeout_s: float = 20.0) -> None:
    """torchvision's own download (to a temporary name, then renamed), with a socket timeout so an offline
    machine answers at once instead of hanging."""
    import socket
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=False)
    finally:
        socket.setdefaulttimeout(old)


def fetch_alexnet_weights(path: Path | None = None) -> Path:
    """The AlexNet weights file at `path` (default: torchvision's cache): as it is, or downloaded there when
    missing and the machine is online. LPIPSWeightsMissing (one line naming the file and where to put it)
    otherwise."""
    path = Path(path) if path is not None else alexnet_weights_path()
    if path.is_file():
        return path
    try:
        _download(ALEXNET_WEIGHTS_URL, path)
    except Exception as e:  # noqa: BLE001 - offline, proxy, disk: every failure means the same to the user
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise LPIPSWeightsMissing(
            f"LPIPS needs torchvision's AlexNet weights {ALEXNET_WEIGHTS_FILE}, which are not at {path} and "
            f"could not be downloaded ({reason}): copy the file there (from {ALEXNET_WEIGHTS_URL}; TORCH_HOME "
            "moves the cache), or pass --no_lpips to skip LPIPS") from None
    return path




class LPIPSMetric:
    """LPIPS (AlexNet, v0.1) per image: `metric(pred, target)` with (..., 3, H, W) in [0, 1] -> (...).

    The AlexNet trunk is read from `weights_path` (default: torchvision's cache) by fetch_alexnet_weights,
    which downloads it there when missing and the machine is online. The lpips model is built with a
    random trunk (pnet_rand=True, so lpips itself fetches nothing) and the file is loaded over it; a file
    that is not torchvision's AlexNet raises LPIPSWeightsError, so random weights are never used.
    """

    def __init__(self, device: str | torch.device = "cpu", weights_path: str | Path | None = None, *,
                 chunk_size: int = 16):
        self.device = torch.device(device)
        self.chunk_size = max(1, int(chunk_size))
        self.weights_path = fetch_alexnet_weights(weights_path)
        import lpips  # imported late: it pulls in torchvision

        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            # torchvision warns about the deprecated `pretrained=` that lpips passes; the random
            # initialisation of the trunk must not disturb the caller's RNG stream.
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(pretrained=True, net="alex", version="0.1", pnet_rand=True, verbose=False)
        model.net.load_state_dict(self._read_trunk(model.net))
        self.model = model.eval().requires_grad_(False).to(self.device)

    def _read_trunk(self, net: torch.nn.Module) -> dict[str, Tensor]:
        # lpips splits torchvision's `features` into slice1..slice5 keeping the module indices:
        # features.{i}.{param} -> slice{k}.{i}.{param}.
        path = self.weights_path
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file ends in the same one-line message
            raise LPIPSWeightsError(
                f"cannot read {path} ({type(e).__name__}: {e}); replace it with torchvision's "
                f"{ALEXNET_WEIGHTS_FILE}, or pass --no_lpips to skip LPIPS"
            ) from None
        out = {}
        for key, ref in net.state_dict().items():
            src = "features." + key.split(".", 1)[1]
            if not isinstance(state, dict) or src not in state or state[src].shape != ref.shape:
                raise LPIPSWeightsError(
                    f"{path} is not torchvision's AlexNet ({src} missing or misshaped); replace it with "
                    f"{ALEXNET_WEIGHTS_FILE} or pass --no_lpips to skip LPIPS"
                )
            out[key] = state[src]
        return out

    @torch.no_grad()
    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        check_pair(pred, target)
        lead, chw = pred.shape[:-3], pred.shape[-3:]
        x = pred.reshape(-1, *chw)
        y = target.reshape(-1, *chw)
        out = []
        for i in range(0, x.shape[0], self.chunk_size):
            a = x[i : i + self.chunk_size].to(self.device, torch.float32).clamp(0, 1)
            b = y[i : i + self.chunk_size].to(self.device, torch.float32).clamp(0, 1)
            out.append(self.model(a, b, normalize=True).reshape(-1))  # normalize: [0,1] -> [-1,1]
        return torch.cat(out).reshape(lead)

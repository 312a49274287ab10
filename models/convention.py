"""Input conventions: how a network wants its images.

Between modules images travel as RGB float in [0, 1]. Each network owns a convention and converts
its own input with it; checkpoints record the convention so a network is always fed what it was
trained on (the authors' HyperCUT weights expect OpenCV's BGR order, normalised with ImageNet
statistics; Jin's networks expect plain RGB in [0, 1]).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputConvention:
    channel_order: str = "RGB"  # "RGB" or "BGR"
    mean: tuple = (0.0, 0.0, 0.0)  # per channel index, in the network's own channel order
    std: tuple = (1.0, 1.0, 1.0)

    def __post_init__(self):
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values each")

    def _stats(self, x: torch.Tensor, dim: int):
        shape = [1] * x.dim()
        shape[dim] = 3
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std

    def to_network(self, x: torch.Tensor, channel_dim: int = -3) -> torch.Tensor:
        """RGB [0, 1] -> the network's input space."""
        dim = channel_dim % x.dim()
        if self.channel_order == "BGR":
            x = x.flip(dim)
        if self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0):
            return x
        mean, std = self._stats(x, dim)
        return (x - mean) / std

    def from_network(self, x: torch.Tensor, channel_dim: int = -3) -> torch.Tensor:
        """The network's image space -> RGB [0, 1] (inverse of to_network)."""
        dim = channel_dim % x.dim()
        if not (self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0)):
            mean, std = self._stats(x, dim)
            x = x * std + mean
        if self.channel_order == "BGR":
            x = x.flip(dim)
        return x

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InputConvention":
        return cls(channel_order=d["channel_order"], mean=tuple(d["mean"]), std=tuple(d["std"]))


# The authors' code reads with OpenCV (BGR) and normalises with ImageNet statistics per channel index.
REFERENCE_BGR_IMAGENET = InputConvention("BGR", IMAGENET_MEAN, IMAGENET_STD)
# Jin et al.'s official networks: RGB in [0, 1], no normalisation.
RGB_UNIT = InputConvention("RGB")

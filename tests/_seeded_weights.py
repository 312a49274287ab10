"""The weight recipe of the compact conformance fixtures (tests/fixtures/README.md).

A fixture stores only a state dict's key names and shapes (in order) and a seed; these weights are
regenerated from them here, both by the test and by the script that ran the authors' code on them.
"""
import math

import torch


def seeded_state_dict(shapes: dict, seed: int) -> dict:
    """Float32 weights for `shapes` ({key: shape}, in state-dict order), drawn in that order from one
    torch.Generator seeded with `seed`: u ~ U[-1, 1) per tensor, then
    - conv weights (2+ dims): u * sqrt(3 / fan_in), i.e. variance 1 / fan_in;
    - 1-d `*.weight` (norm scales): 0.25 + 0.05 u;  1-d `*.bias`: 0.1 u;  `*hyperplane`: u itself.
    Norm scales of 0.25 keep Jin's seven chained frames near [-1, 2]: with scales near 1 their residuals
    grow and float32 rounding alone reaches 1e-4 (measured against float64)."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for key, shape in shapes.items():
        u = torch.rand(tuple(shape), generator=gen) * 2 - 1
        if len(shape) > 1:
            weights[key] = u * math.sqrt(3.0 / math.prod(shape[1:]))
        elif key.endswith("hyperplane"):
            weights[key] = u
        elif key.endswith(".weight"):
            weights[key] = 0.25 + 0.05 * u
        elif key.endswith(".bias"):
            weights[key] = 0.1 * u
        else:
            raise ValueError(f"no recipe for {key!r} with shape {tuple(shape)}")
    return weights

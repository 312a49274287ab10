"""The models' registries, filled beside each definition: BACKBONES (models/backbones/*.py), and HyperCUT's
pair joiners G_FUNCS and pair encoders F_FUNCS (models/hypercut.py, models/hypercut_ext.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from utils.registry import Registry


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    build: Callable[..., nn.Module]
    config_keys: tuple  # constructor arguments that rebuild a model (read back from the model's attributes)
    # folder -> model, for the authors' released weights; None when there are none
    load_official: Callable[..., nn.Module] | None = None


BACKBONES: Registry[BackboneEntry] = Registry("backbone", entry=BackboneEntry)
G_FUNCS: Registry[type] = Registry("g_func")
F_FUNCS: Registry[type] = Registry("f_func")

"""Deblurring backbones by name (timm style): build, describe for a checkpoint, load.

    model = build_backbone("Jin", width_mult=0.5)
    payload = {"model": model.state_dict(), **backbone_checkpoint_fields(model), "epoch": 3, ...}
    model = load_backbone("checkpoints/run/models/0003.pth")     # our checkpoint
    model = load_backbone("weights/jin_official/")               # Jin's four official files

A checkpoint written by train_blur2vid.py records the backbone's name and constructor arguments
({"backbone": {"name": "Jin", "width_mult": 1.0}}) and its input convention, so loading needs nothing
else. Each backbone registers itself beside its class, in BACKBONES (models/registries.py), with the
constructor arguments that rebuild it and, optionally, how to read its authors' official weights from a
folder:

    @BACKBONES.register("Jin", config_keys=("width_mult",), load_official=load_official_jin)
    class JinBackbone(nn.Module): ...

The backbone contract (Jin, Purohit, any later one), so that scripts and losses name no backbone:
- attributes `num_frames` (7), `input_convention` (models.convention: each network converts its own
  input; between modules images are RGB float in [0, 1]) and its constructor arguments (config_keys);
- `forward(blur, center=None)`: blur (B, 3, H, W) of any size -> a dict with "frames" (B, T, 3, H, W)
  at full resolution and "center" (B, 3, H, W), the central frame it used; `center` given = that frame
  is used instead of the backbone's own prediction (the ground-truth centre: an oracle, labelled so in
  every report). Extras that the backbone's losses use: Purohit adds "scales" (4 resolutions, finest
  first), "flows", "masks", "embedding", and "center_pred" when its centre network predicted the centre;
- `num_scales` > 1 marks a multi-scale output: losses.build_loss then builds the multi-scale losses
  (losses/multiscale.py); otherwise the losses score "frames".
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

import models.backbones.jin  # noqa: F401  (registers Jin and JinCenter)
import models.backbones.purohit  # noqa: F401  (registers Purohit)
from models.convention import InputConvention
from models.registries import BACKBONES, BackboneEntry
from utils.checkpoint import CheckpointError, load_checkpoint, state_dict_mismatch


def float_output(out: dict) -> dict:
    """A backbone's output with every floating tensor (also inside lists) in float32: losses are computed
    in float32 whatever the autocast dtype of the forward pass."""
    def cast(v):
        if torch.is_tensor(v):
            return v.float() if v.is_floating_point() else v
        if isinstance(v, (list, tuple)):
            return type(v)(cast(x) for x in v)
        return v
    return {k: cast(v) for k, v in out.items()}


def build_backbone(name: str, **kwargs) -> nn.Module:
    """A freshly initialised backbone; the name is remembered as `model.backbone_name`."""
    model = BACKBONES[name].build(**kwargs)
    model.backbone_name = name
    return model


def _name_of(model: nn.Module) -> str:
    name = getattr(model, "backbone_name", None)
    if name is None:  # built directly from its class
        name = next((n for n, e in BACKBONES.items() if type(model) is e.build), None)
    if name is None:
        raise ValueError(f"{type(model).__name__} is not a registered backbone")
    return name


def backbone_checkpoint_fields(model: nn.Module) -> dict:
    """{"backbone": {"name", <constructor arguments>}, "input_convention": {...}}: what a checkpoint
    needs beside the state dict to rebuild the model (see load_backbone)."""
    model = model.module if hasattr(model, "module") else model  # DDP
    name = _name_of(model)
    config = {k: getattr(model, k) for k in BACKBONES[name].config_keys}
    return {"backbone": {"name": name, **config}, "input_convention": model.input_convention.to_dict()}


def _strip_module_prefix(state: Mapping) -> dict:
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_backbone(path, map_location="cpu", *, name: str | None = None,
                  width_mult: float | None = None) -> nn.Module:
    """A backbone (eval mode, on map_location) from our checkpoint or an official-weights folder.

    path: a file written by train_blur2vid.py (models/NNNN.pth or a training state: {"model",
    "backbone", "input_convention", ...}), or a folder with the authors' official files (Jin's four).
    name: expected backbone (default: the checkpoint's; for a folder, "Jin").
    width_mult: for a folder, the width to build (default 1.0, the official one); for a checkpoint, a
    check against the recorded width.
    Every problem raises CheckpointError with one line naming the file.
    """
    path = Path(path)
    if path.is_dir():
        entry = BACKBONES[name or "Jin"]
        if entry.load_official is None:
            raise CheckpointError(f"{path} is a folder, but backbone {entry.name!r} has no official "
                                  "weights: pass a checkpoint file written by train_blur2vid.py")
        model = entry.load_official(path, width_mult=1.0 if width_mult is None else width_mult)
        model.backbone_name = entry.name
        return model.to(map_location).eval()

    ckpt = load_checkpoint(path, map_location="cpu")  # not found / unreadable -> CheckpointError

    def fail(problem: str):
        raise CheckpointError(f"{path}: {problem}")

    if not isinstance(ckpt, Mapping):
        fail(f"expected a checkpoint dict, found {type(ckpt).__name__}")
    if "state_dict_G" in ckpt:
        fail("this is one of Jin's official files; pass the folder holding all four "
             "(center_v3.pth, F35_N8.pth, F26_N9_from_F35_N8.pth, F17_N9_from_F26_N9_from_F35_N8.pth)")
    state = ckpt.get("model")
    keys = state.keys() if isinstance(state, Mapping) else ckpt.keys()
    if "hypercut_config" in ckpt or any(isinstance(k, str) and k.startswith(("f_func.", "hyperplane.")) for k in keys):
        fail("this is a HyperCUT ordering model, not a deblurring backbone (pass it as --hypercut_path)")
    if not isinstance(state, Mapping) or not isinstance(ckpt.get("backbone"), Mapping):
        fail("not a deblurring checkpoint of this project (expected 'model' and 'backbone' entries, "
             f"found {', '.join(sorted(map(str, ckpt.keys()))[:6]) or 'nothing'})")
    info = dict(ckpt["backbone"])
    saved_name = info.pop("name", None)
    if saved_name not in BACKBONES:
        fail(f"unknown backbone {saved_name!r}; this version knows {', '.join(BACKBONES.names())}")
    if name is not None and name != saved_name:
        fail(f"holds a {saved_name} backbone, not {name}")
    entry = BACKBONES[saved_name]
    config = {k: info[k] for k in entry.config_keys if k in info}
    if width_mult is not None and "width_mult" in config and float(config["width_mult"]) != float(width_mult):
        fail(f"was trained with width_mult {config['width_mult']:g}, but width_mult {width_mult:g} was asked for "
             "(leave --width_mult out to use the checkpoint's)")
    try:
        model = build_backbone(saved_name, **config)
    except (TypeError, ValueError) as e:
        fail(f"cannot build backbone {saved_name} with {config}: {e}")
    conv = ckpt.get("input_convention")
    if conv is not None:
        try:
            model.input_convention = conv if isinstance(conv, InputConvention) else InputConvention.from_dict(conv)
        except (KeyError, TypeError, ValueError) as e:
            fail(f"bad input_convention {conv!r}: {e}")
    state = _strip_module_prefix(state)
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        fail(f"does not match a {saved_name} backbone with {config}: {problem}")
    model.load_state_dict(state, strict=True)
    model.training_stage = ckpt.get("stage")  # Purohit: 1 = the video autoencoder of stage 1
    return model.to(map_location).eval()


__all__ = ["BACKBONES", "BackboneEntry", "build_backbone",
           "backbone_checkpoint_fields", "load_backbone", "float_output"]

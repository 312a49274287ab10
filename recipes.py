"""The training settings that run_demo.py and the lab share, as flags of train_hypercut.py and
train_blur2vid.py; each caller adds its budget (crops, epochs, schedule):

    ["--crop_size", "48", *recipe("hypercut_paper"), "--epochs", "3"]
    recipe("hypercut_ext", batch_size=4)      # the recipe with --batch_size 4, in the same place
"""
from __future__ import annotations

# The paper's HyperCUT (f ResnetIm2Vec, slope 1.0) at lr 5e-5: the reference's 5e-4 makes f blow up on our
# data (README, differences from the reference).
_HYPERCUT_PAPER = ("--batch_size", "8", "--lr", "5e-5")

RECIPES: dict[str, tuple[str, ...]] = {
    "hypercut_paper": _HYPERCUT_PAPER,
    # the lab's schedule for it: 24 epochs, the lr halved at epochs 12, 18 and 22
    "hypercut_paper_lab": _HYPERCUT_PAPER + ("--decay_type", "step_12_18_22", "--gamma", "0.5", "--val_epoch", "4"),
    # our extension (lab/ordering.md): f reads a global motion estimate; sub-crops must agree
    "hypercut_ext": ("--f_func", "FlowIm2Vec", "--crop_consistency", "2.0", "--batch_size", "8", "--lr", "1e-3"),
    # the demo's narrow Jin: a quarter of the width, Adam at 3e-3 (lab/learning.md)
    "jin_demo": ("--width_mult", "0.25", "--optimizer", "ADAM", "--lr", "3e-3"),
    # the lab's narrow Jin: a quarter of the width, 64x64 crops, batch 8, the reference's optimiser
    "jin_lab": ("--width_mult", "0.25", "--crop_size", "64", "--batch_size", "8"),
}


def recipe(name: str, **changes) -> list[str]:
    """RECIPES[name] as a new list; each change (batch_size=4) replaces the value of a flag the recipe
    has, where it stands."""
    flags = list(RECIPES[name])
    for key, value in changes.items():
        flag = f"--{key}"
        if flag not in flags:
            raise KeyError(f"recipe {name!r} has no {flag}")
        flags[flags.index(flag) + 1] = str(value)
    return flags

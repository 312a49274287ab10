"""Run a train script's train() under torchrun (CPU, gloo) or alone, and keep what only a test needs.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_dist_train_worker.py \
        train_hypercut OUT -- <the script's flags>

Each rank writes OUT/rank<r>.pt: the trained weights as that rank holds them at the end, and the
history train() returned (per-step losses, validation figures).
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    script, out, flags = sys.argv[1], Path(sys.argv[2]), sys.argv[4:]
    module = __import__(script)
    captured = {}
    fit = module.fit

    def capturing_fit(config, **kwargs):
        captured["model"] = kwargs["model"]
        return fit(config, **kwargs)

    module.fit = capturing_fit  # the model object train() hands to fit, to read its final weights
    args = module.build_parser().parse_args(flags)
    history = module.train(args)
    rank = int(os.environ.get("RANK", "0"))
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": captured["model"].state_dict(), "losses": history["losses"], "val": history["val"]},
               out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()

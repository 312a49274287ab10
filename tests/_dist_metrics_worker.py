"""Run under torchrun (2 CPU processes, gloo): rank 0 scores two sequences, rank 1 none.

Prints one JSON line per rank with the figures after SequenceMetrics.all_reduce; the test compares them
with a single-process run over the same two sequences.
"""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.metrics.sequence import SequenceMetrics  # noqa: E402


def sequences():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 3, 3, 16, 16, generator=g)
    pred = (gt + 0.1 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    return pred, gt


def main():
    dist.init_process_group("gloo")
    acc = SequenceMetrics(lpips=None, mode="pair")
    if dist.get_rank() == 0:
        acc.update(*sequences())
    acc.all_reduce(num_frames=3)
    line = json.dumps({"rank": dist.get_rank(), "n": acc.num_sequences, "pPSNR": acc.per_frame("pPSNR"),
                       "SSIM": acc.per_frame("SSIM")}) + "\n"
    # one write(2) of the whole line (under PIPE_BUF, so atomic on the shared pipe): print() may write the
    # text and its newline separately, and the other rank's line then landed between them
    os.write(sys.stdout.fileno(), line.encode())
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

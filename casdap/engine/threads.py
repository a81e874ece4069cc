"""How many CPU threads torch uses, chosen once per command for its workload.

The models here are small: at 32-64 px a CAS-ViT batch is too little work to share between
threads, and on a machine where other jobs run OpenMP threads that wait on each other make two
threads slower than one: a digits DAP run took 21.7 s on one thread and 20.0 s on two when idle,
38 s and 80-147 s beside two busy processes (docs/performance.md, "Threads"). So CPU runs on small inputs
use one thread per process; large inputs and CUDA runs keep torch's default. ``OMP_NUM_THREADS``
(or a command's own ``--threads``) always wins.
"""

from __future__ import annotations

import os
import sys

# Inputs up to this side count as small (the embedded benchmarks run at 32 px, CIFAR at 32).
SMALL_INPUT_SIDE = 64

_announced = False


def choose_threads(input_side: int, device: str = "cpu", requested: int | None = None) -> tuple[int, str]:
    """``(threads, reason)`` for a workload of ``input_side`` px images on ``device``."""
    import torch

    if requested is not None:
        return int(requested), "as requested"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "from OMP_NUM_THREADS"
    if str(device).startswith("cuda"):
        return torch.get_num_threads(), "torch's default (CUDA run)"
    if input_side <= SMALL_INPUT_SIDE:
        return 1, f"{input_side} px inputs, where one thread is fastest for small CPU models"
    return torch.get_num_threads(), f"torch's default for {input_side} px inputs"


def set_threads(command: str, input_side: int, device: str = "cpu", requested: int | None = None) -> int:
    """Apply :func:`choose_threads` and say so once per process (on stderr, so tables stay clean)."""
    import torch

    global _announced
    threads, reason = choose_threads(input_side, device, requested)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    if not _announced:
        _announced = True
        hint = "" if "OMP_NUM_THREADS" in reason else "; set OMP_NUM_THREADS to change"
        print(f"{command}: {threads} torch thread{'s' if threads != 1 else ''} ({reason}{hint})",
              file=sys.stderr, flush=True)
    return threads

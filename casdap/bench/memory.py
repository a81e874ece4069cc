"""Peak tensor memory of one call.

CUDA has public counters (the caching allocator's peak). On CPU torch has no public peak figure:
the profiler's memory events are the only record of every allocation and free, and they are read
here from its raw (Kineto) results, which are not a stable interface. Any failure there gives None
(reported as "-"), never an error.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["peak_memory_bytes"]


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler backend's C++ log lines (start/stop notices) on file descriptor 2."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak_from_profiler(fn: Callable[[], Any]) -> int | None:
    """Replay the profiler's allocation events ("[memory]": +bytes on allocation, -bytes on free)
    in time order and return the highest running total."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        sizes = [e.nbytes() for e in events]
    except Exception:  # the profiler's raw events are not a stable interface
        return None
    live = peak = 0
    for n in sizes:
        live += n
        peak = max(peak, live)
    return peak


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak of the tensor memory allocated during one call, above what was live before it.

    CUDA reads the caching allocator's counters; CPU replays the profiler's allocation events
    (None where this torch build does not record them).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return _cpu_peak_from_profiler(fn)

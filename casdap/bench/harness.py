"""Timing primitives: interleaved sampling, device synchronisation, the fp32 matmul rate.

Timings on a shared machine drift while they run, so every comparison is made *within* one
process and *interleaved*: each repeat times every function once, in turn, and a ratio is the
median of the per-repeat ratios (see :func:`time_interleaved`).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Stats", "exact_fp32", "matmul_gflops", "synchronizer", "time_interleaved"]


@dataclass
class Stats:
    """Median and spread of a list of samples."""

    median: float
    min: float
    max: float
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, samples: Iterable[float]) -> Stats:
        s = list(samples)
        return cls(statistics.median(s), min(s), max(s), s)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits until ``device`` has finished its queued work (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """Full fp32 arithmetic on CUDA for the parity checks: by default cuDNN convolutions there run in
    TF32 (a 10-bit mantissa), which moves the logits of two equal functions apart by about 1e-3,
    far above :data:`~casdap.bench.config.PARITY_TOLERANCE`. Timings keep the device's defaults."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _time_calls(fn: Callable[[], Any], iters: int, sync: Callable[[], None]) -> float:
    """Seconds per call over ``iters`` back-to-back calls (the device drained before and after)."""
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, min_time: float, sync: Callable[[], None]
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per call of every function, sampled in turn ``repeats`` times.

    Returns the samples and each function's warm-up time (which includes compilation where the
    function compiles on first call).
    """
    warm: dict[str, float] = {}
    iters: dict[str, int] = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        for _ in range(max(warmup, 1)):
            fn()
        sync()
        warm[name] = time.perf_counter() - start
        one = _time_calls(fn, 1, sync)
        iters[name] = max(1, math.ceil(min_time / max(one, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(_time_calls(fn, iters[name], sync))
    return samples, warm


def matmul_gflops(device: torch.device, repeats: int = 5, min_time: float = 0.2) -> list[float]:
    """fp32 square matmul GFLOP/s samples: the practical peak the other figures are read against."""
    n = 1024 if device.type == "cpu" else 4096
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    out = torch.empty(n, n, device=device)
    samples, _ = time_interleaved(
        {"mm": lambda: torch.mm(a, b, out=out)}, repeats, 2, min_time, synchronizer(device)
    )
    return [2 * n**3 / t / 1e9 for t in samples["mm"]]

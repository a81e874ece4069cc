"""The benchmark's former single module, kept as a path: the harness lives in :mod:`casdap.bench`.

``casdap bench`` imports its entry points from here, as do ``benchmarks/gpu_report.py`` and the
tests; ``python -m casdap.benchmark`` is ``casdap bench``.
"""

from __future__ import annotations

import sys

from casdap.bench import (
    INFER_PATHS,
    TRAIN_PATHS,
    BenchConfig,
    Stats,
    count_flops,
    exact_fp32,
    format_table,
    load_reference,
    matmul_gflops,
    peak_memory_bytes,
    run_benchmark,
    time_interleaved,
    write_json,
)
from casdap.bench.models import build_dap as _build_dap  # noqa: F401  (benchmarks/gpu_report.py)

__all__ = [
    "BenchConfig",
    "INFER_PATHS",
    "TRAIN_PATHS",
    "Stats",
    "count_flops",
    "exact_fp32",
    "format_table",
    "load_reference",
    "matmul_gflops",
    "peak_memory_bytes",
    "run_benchmark",
    "time_interleaved",
    "write_json",
]

if __name__ == "__main__":  # pragma: no cover - ``python -m casdap.benchmark`` == ``casdap bench``
    from casdap.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))

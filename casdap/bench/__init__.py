"""Speed of the CAS-ViT backbones (``casdap bench``): training and inference images/s, batch-1
latency, peak memory, FLOPs.

Timings on a shared machine drift while they run, so every comparison is made *within* one
process and *interleaved*: each repeat times every variant once, in turn, and a ratio is the
median of the per-repeat ratios. Each figure is the median over repeats with its min-max spread.
The fp32 matmul rate is measured in the same run, so each model's achieved GFLOP/s can be read
as a fraction of what the hardware reaches on the most favourable kernel.

Modules: :mod:`~casdap.bench.config` (what a run measures and its defaults, torch-free: the
command line builds its ``--help`` from it), :mod:`~casdap.bench.harness` (interleaved timing, the
matmul rate), :mod:`~casdap.bench.flops` (FLOP counting), :mod:`~casdap.bench.memory` (peak memory),
:mod:`~casdap.bench.models` (the timed models and reference model files),
:mod:`~casdap.bench.run` (a whole run) and :mod:`~casdap.bench.report` (tables and JSON).
Names load on first use, so importing this package imports no torch.
"""

from casdap.bench.config import INFER_PATHS, MODES, PARITY_TOLERANCE, TRAIN_PATHS, BenchConfig
from casdap.lazy import lazy_getattr

__all__ = [
    "BenchConfig",
    "INFER_PATHS",
    "MODES",
    "PARITY_TOLERANCE",
    "TRAIN_PATHS",
    "Stats",
    "build_dap",
    "build_model",
    "count_flops",
    "exact_fp32",
    "format_table",
    "import_model_file",
    "infer_variants",
    "load_reference",
    "matmul_gflops",
    "peak_memory_bytes",
    "run_benchmark",
    "synchronizer",
    "time_interleaved",
    "write_json",
]

_LAZY = {
    "count_flops": "casdap.bench.flops",
    "Stats": "casdap.bench.harness",
    "exact_fp32": "casdap.bench.harness",
    "matmul_gflops": "casdap.bench.harness",
    "synchronizer": "casdap.bench.harness",
    "time_interleaved": "casdap.bench.harness",
    "peak_memory_bytes": "casdap.bench.memory",
    "build_dap": "casdap.bench.models",
    "build_model": "casdap.bench.models",
    "import_model_file": "casdap.bench.models",
    "infer_variants": "casdap.bench.models",
    "load_reference": "casdap.bench.models",
    "format_table": "casdap.bench.report",
    "write_json": "casdap.bench.report",
    "run_benchmark": "casdap.bench.run",
}
__getattr__ = lazy_getattr("casdap.bench", _LAZY)

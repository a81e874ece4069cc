"""Speed of the CAS-ViT backbones (``casdap bench``): training and inference images/s, batch-1
latency, peak memory, FLOPs.

Timings on a shared machine drift while they run, so every comparison is made *within* one
process and *interleaved*: each repeat times every variant once, in turn, and a ratio is the
median of the per-repeat ratios. Each figure is the median over repeats with its min-max spread.
The fp32 matmul rate is measured in the same run, so each model's achieved GFLOP/s can be read
as a fraction of what the hardware reaches on the most favourable kernel.

Modules: :mod:`~casdap.bench.harness` (interleaved timing, the matmul rate),
:mod:`~casdap.bench.flops` (FLOP counting), :mod:`~casdap.bench.memory` (peak memory),
:mod:`~casdap.bench.models` (the timed models and reference model files),
:mod:`~casdap.bench.run` (a whole run) and :mod:`~casdap.bench.report` (tables and JSON).
What a run measures and its defaults are in :mod:`casdap.bench_config`, which imports no torch.
"""

from casdap.bench.flops import count_flops
from casdap.bench.harness import Stats, exact_fp32, matmul_gflops, synchronizer, time_interleaved
from casdap.bench.memory import peak_memory_bytes
from casdap.bench.models import build_dap, build_model, import_model_file, infer_variants, load_reference
from casdap.bench.report import format_table, write_json
from casdap.bench.run import run_benchmark
from casdap.bench_config import INFER_PATHS, MODES, PARITY_TOLERANCE, TRAIN_PATHS, BenchConfig

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

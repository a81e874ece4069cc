"""Class-incremental continual learning through Avalanche: benchmarks from local data, DAP and
non-DAP strategies, metrics and resumable run directories (``casdap cl``)."""

from casdap.continual.benchmarks import ContinualBenchmark, build_benchmark
from casdap.continual.runner import METHODS, RunResult, run_continual
from casdap.continual.strategies import DAPStrategy, NCMStrategy, TaskSelectionAccuracy

__all__ = [
    "METHODS",
    "ContinualBenchmark",
    "DAPStrategy",
    "NCMStrategy",
    "RunResult",
    "TaskSelectionAccuracy",
    "build_benchmark",
    "run_continual",
]

"""Class-incremental continual learning through Avalanche: benchmarks from local data, DAP and
non-DAP strategies, metrics and resumable run directories (``casdap cl``).

Names load on first use, so a light submodule (e.g. ``casdap.continual.results``) does not pull in
Avalanche and the strategies.
"""

from importlib import import_module

_EXPORTS = {
    "ContinualBenchmark": "casdap.continual.benchmarks",
    "build_benchmark": "casdap.continual.benchmarks",
    "METHODS": "casdap.continual.runner",
    "RunResult": "casdap.continual.runner",
    "run_continual": "casdap.continual.runner",
    "DAPStrategy": "casdap.continual.strategies",
    "NCMStrategy": "casdap.continual.strategies",
    "TaskSelectionAccuracy": "casdap.continual.strategies",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'casdap.continual' has no attribute '{name}'")

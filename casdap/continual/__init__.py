"""Class-incremental continual learning through Avalanche: benchmarks from local data, DAP and
non-DAP strategies, metrics and resumable run directories (``casdap cl``).

Names load on first use, so a light submodule (e.g. ``casdap.continual.results``) does not pull in
Avalanche and the strategies.
"""

from casdap.lazy import lazy_getattr

_EXPORTS = {
    "ContinualBenchmark": "casdap.continual.benchmarks",
    "build_benchmark": "casdap.continual.benchmarks",
    "METHODS": "casdap.continual.runner",
    "METHOD_NAMES": "casdap.continual.methods",
    "get_method": "casdap.continual.methods",
    "RunResult": "casdap.continual.runner",
    "run_continual": "casdap.continual.runner",
    "CasdapStrategyMixin": "casdap.continual.strategy_mixin",
    "DAPStrategy": "casdap.continual.dap_strategy",
    "NCMStrategy": "casdap.continual.gradient_free",
    "TaskSelectionAccuracy": "casdap.continual.task_selection",
    "L2PStrategy": "casdap.continual.prompt_methods",
    "DualPromptStrategy": "casdap.continual.prompt_methods",
    "CODAPromptStrategy": "casdap.continual.prompt_methods",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr("casdap.continual", _EXPORTS)

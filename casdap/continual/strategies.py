"""The package's strategies and the parts they share, under one import: each lives in its own module.

- :mod:`casdap.continual.strategy_mixin`: :class:`CasdapStrategyMixin` (resume state, batch-wide
  prediction, data loaders) that every strategy mixes in;
- :mod:`casdap.continual.dap_strategy`: :class:`DAPStrategy`, with its prediction modes in
  :mod:`casdap.continual.prediction` and its first-task adaptation in
  :mod:`casdap.continual.first_session`;
- :mod:`casdap.continual.gradient_free`: :class:`GradientFreeStrategy` and nearest class mean;
- :mod:`casdap.continual.task_selection`: the :class:`TaskSelectionAccuracy` metric;
- :mod:`casdap.models.classifiers`: :class:`BackboneClassifier` and :class:`NCMClassifier`.
"""

from casdap.continual.dap_strategy import DAPStrategy
from casdap.continual.gradient_free import GradientFreeStrategy, NCMStrategy, add_class_means
from casdap.continual.strategy_mixin import CasdapStrategyMixin
from casdap.continual.task_selection import TaskSelectionAccuracy
from casdap.models.classifiers import BackboneClassifier, NCMClassifier
from casdap.models.dap import SELECTIONS

__all__ = [
    "SELECTIONS",
    "CasdapStrategyMixin",
    "BackboneClassifier",
    "NCMClassifier",
    "DAPStrategy",
    "GradientFreeStrategy",
    "NCMStrategy",
    "TaskSelectionAccuracy",
    "add_class_means",
]

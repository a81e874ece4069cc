"""``joint``: one training on every task at once (Avalanche's ``JointTraining``), the upper bound:
one row of the accuracy matrix."""

from avalanche.training import JointTraining

from casdap.continual.methods.base import Method
from casdap.continual.strategy_mixin import CasdapStrategyMixin


class JointStrategy(CasdapStrategyMixin, JointTraining):
    """Avalanche's ``JointTraining`` with the package's resume state and prediction."""


class Joint(Method):
    name = "joint"
    joint = True

    def build_strategy(self, cfg, model, optimizer, plugins, **common):
        return JointStrategy(model=model, optimizer=optimizer, criterion=self.criterion(), plugins=plugins, **common)


METHOD = Joint()

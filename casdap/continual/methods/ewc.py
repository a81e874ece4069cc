"""``ewc``: elastic weight consolidation (Avalanche's ``EWC``, one importance per task)."""

from __future__ import annotations

from typing import Any

from avalanche.training import EWC
from avalanche.training.plugins import EWCPlugin

from casdap.continual.methods.base import Method
from casdap.continual.strategy_mixin import CasdapStrategyMixin


class EWCStrategy(CasdapStrategyMixin, EWC):
    """Avalanche's ``EWC`` that keeps each task's saved parameters and importances on resume."""

    def state_dict(self) -> dict[str, Any]:
        ewc = self.find_plugin(EWCPlugin)
        return {
            **super().state_dict(),
            "ewc_saved": {int(e): {k: p.data.cpu() for k, p in d.items()} for e, d in ewc.saved_params.items()},
            "ewc_importances": {int(e): {k: p.data.cpu() for k, p in d.items()} for e, d in ewc.importances.items()},
        }

    def load_own_state(self, state, *, task_classes, done) -> None:
        from avalanche.training.utils import ParamData

        ewc, dev = self.find_plugin(EWCPlugin), self.device
        for attr, key in (("saved_params", "ewc_saved"), ("importances", "ewc_importances")):
            target = getattr(ewc, attr)
            for e, d in state[key].items():
                target[int(e)] = {k: ParamData(k, init_tensor=t.to(dev), device=dev) for k, t in d.items()}


class EWCMethod(Method):
    name = "ewc"

    def build_strategy(self, cfg, model, optimizer, plugins, **common):
        return EWCStrategy(model=model, optimizer=optimizer, criterion=self.criterion(),
                           ewc_lambda=cfg.BASELINES.EWC_LAMBDA, mode="separate", plugins=plugins, **common)


METHOD = EWCMethod()

"""``lwf``: learning without forgetting (Avalanche's ``LwF``: distillation from the model of the
previous task)."""

from __future__ import annotations

import copy
from typing import Any

from avalanche.training import LwF
from avalanche.training.plugins import LwFPlugin

from casdap.continual.methods.base import Method
from casdap.continual.strategy_mixin import CasdapStrategyMixin


class LwFStrategy(CasdapStrategyMixin, LwF):
    """Avalanche's ``LwF`` that keeps its task count and the classes its teacher knows on resume.

    The teacher is the model at the end of the last finished task, which is the checkpoint's model:
    it is copied from the restored model rather than stored twice.
    """

    def state_dict(self) -> dict[str, Any]:
        lwf = self.find_plugin(LwFPlugin).lwf
        return {**super().state_dict(), "lwf_expcount": int(lwf.expcount),
                "lwf_prev_classes": {int(t): sorted(int(c) for c in cs) for t, cs in lwf.prev_classes_by_task.items()}}

    def load_own_state(self, state, *, task_classes, done) -> None:
        lwf = self.find_plugin(LwFPlugin).lwf
        lwf.prev_model = copy.deepcopy(self.model)
        lwf.expcount = int(state.get("lwf_expcount", done))
        if "lwf_prev_classes" in state:
            for t, cs in state["lwf_prev_classes"].items():
                lwf.prev_classes_by_task[int(t)] = {int(c) for c in cs}
        else:  # a checkpoint written before the classes were stored: every finished task's classes
            lwf.prev_classes_by_task[0] = {c for t in range(done) for c in task_classes[t]}


class LwFMethod(Method):
    name = "lwf"

    def build_strategy(self, cfg, model, optimizer, plugins, **common):
        b = cfg.BASELINES
        return LwFStrategy(model=model, optimizer=optimizer, criterion=self.criterion(), alpha=b.LWF_ALPHA,
                           temperature=b.LWF_TEMPERATURE, plugins=plugins, **common)


METHOD = LwFMethod()

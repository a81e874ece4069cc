"""The task-selection accuracy of strategies that select a task per image (DAP, the prompt methods)."""

from __future__ import annotations

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name

__all__ = ["TaskSelectionAccuracy"]


class TaskSelectionAccuracy(PluginMetric[float]):
    """Fraction of evaluated images whose selected key is their own task's (DAP strategies).

    Emitted per evaluated experience and for the whole evaluated stream.
    """

    def __init__(self) -> None:
        super().__init__()
        self.exp_hits = self.exp_total = 0
        self.stream_hits = self.stream_total = 0

    def reset(self) -> None:
        self.exp_hits = self.exp_total = 0

    def result(self) -> float:
        return self.exp_hits / self.exp_total if self.exp_total else 0.0

    def before_eval(self, strategy):
        self.stream_hits = self.stream_total = 0

    def before_eval_exp(self, strategy):
        self.reset()

    def after_eval_iteration(self, strategy):
        if getattr(strategy, "mb_dap", None) is None or strategy.mb_true_task is None:
            return
        hits = int((strategy.mb_dap.key_idx.to(strategy.mb_true_task.device) == strategy.mb_true_task).sum())
        self.exp_hits += hits
        self.exp_total += len(strategy.mb_true_task)
        self.stream_hits += hits
        self.stream_total += len(strategy.mb_true_task)

    def after_eval_exp(self, strategy):
        name = get_metric_name("TaskSel_Exp", strategy, add_experience=True)
        return [MetricValue(self, name, self.result(), strategy.clock.train_iterations)]

    def after_eval(self, strategy):
        value = self.stream_hits / self.stream_total if self.stream_total else 0.0
        name = get_metric_name("TaskSel_Stream", strategy, add_experience=False)
        return [MetricValue(self, name, value, strategy.clock.train_iterations)]

    def __str__(self) -> str:
        return "TaskSel"

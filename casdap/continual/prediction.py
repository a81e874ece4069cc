"""How a prompted model turns an evaluation batch into class scores, given its task inference
(``MODEL.DAP.PREDICTION``): one small object per mode, looked up by name in :data:`PREDICTIONS`.

- ``None`` (:class:`Plain`): the head's logits under the selected task's prompts, over every class.
- ``restrict`` (:class:`Restrict`): those logits kept to the selected task's classes (DAP's option).
- ``all`` (:class:`AllClasses`): every seen class scored by the head re-aligned on statistics of
  the prompted features (``CASDAP.all_class_logits``), so a wrong task changes the prompts but does
  not rule out the right class.
- ``soft`` (:class:`Soft`): every image under the prompts of its ``top_k`` best-scored tasks, class
  ``c`` of task ``t`` scored ``log p(t) + log p(c | t)``.

A mode reads the strategy (its model, selection and class-to-task tables) but keeps no state. Any
mode can be fused with the query's class Gaussians (:mod:`casdap.continual.fusion`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from casdap.dap_registry import PREDICTION_NAMES, checked
from casdap.errors import CasdapError
from casdap.models.dap import DAPOutput, restrict_logits
from casdap.models.logit_mask import MASKED_LOGIT

__all__ = ["PREDICTIONS", "AllClasses", "Plain", "Prediction", "Restrict", "Soft", "prediction_mode",
           "task_class_mask"]


def task_class_mask(strategy, width: int, device: torch.device) -> torch.Tensor:
    """``[num_tasks, width]`` bool: the classes of each task trained so far (the strategy's cached
    class-to-task table, cut or padded to ``width`` classes), with no host sync."""
    splits = strategy.class_task_mask().to(device)
    keep = torch.zeros(splits.shape[0], width, dtype=torch.bool, device=device)
    cut = min(splits.shape[1], width)
    keep[:, :cut] = splits[:, :cut]
    return keep


class Prediction:
    """One prediction mode. :meth:`check` refuses a model or setting the mode cannot use (at the
    strategy's construction); :meth:`predict` gives the model's output (its logits: what the
    evaluation loss is over) and the predicted logits; :meth:`head` scores prompted features (the
    task decomposition's within-task logits)."""

    name: str | None = None

    def check(self, model: nn.Module, selection: str, top_k: int) -> None:
        return None

    def predict(self, strategy, x: torch.Tensor, true_task: torch.Tensor) -> tuple[DAPOutput, torch.Tensor]:
        out = self.selected(strategy, x, true_task)
        return out, out.logits

    @staticmethod
    def selected(strategy, x: torch.Tensor, true_task: torch.Tensor) -> DAPOutput:
        """The model's pass under the strategy's selection (oracle: the true task)."""
        oracle = strategy.oracle_task(true_task) if strategy.selection == "oracle" else None
        return strategy.model(x, task_id=oracle, selection=strategy.selection)

    def head(self, model: nn.Module):
        return model.head

    def fuse(self, strategy, x: torch.Tensor, out, logits: torch.Tensor) -> torch.Tensor:
        """The final class scores from the mode's ``logits`` for images ``x`` (``out``: the model's
        pass): the logits themselves, unless fused (:class:`casdap.continual.fusion.Fused`)."""
        return logits


class Plain(Prediction):
    """The head's logits under the selected task's prompts, over every class."""


class Restrict(Prediction):
    """Only the selected task's classes keep their logits (others :data:`MASKED_LOGIT`)."""

    name = "restrict"

    def predict(self, strategy, x, true_task):
        out = self.selected(strategy, x, true_task)
        return out, restrict_logits(out.logits, out.key_idx, strategy.class_splits())


class AllClasses(Prediction):
    """Every seen class, by the head fitted on the class statistics of the prompted features."""

    name = "all"

    def check(self, model, selection, top_k):
        if not getattr(model, "prompted_statistics", False):
            raise CasdapError("prediction 'all' needs a model that keeps prompted-feature statistics "
                              "(CASDAP(..., prompted_statistics=True))")

    def predict(self, strategy, x, true_task):
        out = self.selected(strategy, x, true_task)
        out = replace(out, logits=strategy.model.all_class_logits(out.feats))
        return out, out.logits

    def head(self, model):
        return model.all_class_logits


class Soft(Prediction):
    """``log p(t) + log p(c | t)`` over each image's ``top_k`` best tasks (``p(t)``: softmax of the task
    predictor's scores over the trained tasks; ``p(c | t)``: softmax of the head over ``t``'s classes),
    at ``top_k`` prompted passes per image."""

    name = "soft"

    def check(self, model, selection, top_k):
        n_tasks = getattr(model, "num_tasks", 1)
        if not 1 <= int(top_k) <= n_tasks:
            raise CasdapError(f"top_k must be 1..{n_tasks} (the model's tasks), got {top_k}")
        if selection != "per_image":
            raise CasdapError(f"prediction 'soft' takes each image's own top tasks: selection must be per_image, "
                              f"got '{selection}'")

    def predict(self, strategy, x, true_task):
        scores, top, logits = strategy.model.forward_top_tasks(x, strategy.top_k)
        combined = self.combine(strategy, scores, top, logits)
        return DAPOutput(logits=combined, key_idx=top[:, 0], pull=combined.new_zeros(())), combined

    @staticmethod
    def combine(strategy, scores: torch.Tensor, top: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``log p(t) + log p(c | t)`` for each class ``c`` of each of an image's tasks ``top`` ``[B, k]``
        (logits ``[B, k, K]`` under each task's prompts); classes of no top task :data:`MASKED_LOGIT`."""
        keep = task_class_mask(strategy, logits.shape[2], logits.device)
        trained = keep.any(1)[: scores.shape[1]]
        log_task = torch.log_softmax(scores.float().masked_fill(~trained[None], float("-inf")), dim=1)
        out = torch.full(logits.shape[::2], MASKED_LOGIT, dtype=torch.float32, device=logits.device)
        for j in range(top.shape[1]):
            t = top[:, j]
            member = keep[t]  # [B, K]
            log_class = torch.log_softmax(logits[:, j].float().masked_fill(~member, float("-inf")), dim=1)
            out = torch.where(member, log_task.gather(1, t[:, None]) + log_class, out)
        return out


PREDICTIONS: dict[str | None, type[Prediction]] = {None: Plain, "restrict": Restrict, "all": AllClasses,
                                                    "soft": Soft}


def prediction_mode(name: str | None) -> Prediction:
    """The mode called ``name`` (None: :class:`Plain`); an unknown name is one clear error."""
    if name is None:
        return Plain()
    return PREDICTIONS[checked("prediction", name, PREDICTION_NAMES)]()

"""Ruling classes out of a prediction: one fill value and one rule for every place that does it.

DAP's restriction to the selected task, the current-task masking of training, prototype methods'
untrained classes and the exported graph's restriction all set excluded logits to
:data:`MASKED_LOGIT` through :func:`mask_logits`; the boolean masks come from :func:`class_mask`
(one set of classes) or :func:`task_class_masks` (one row per task).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

__all__ = ["MASKED_LOGIT", "class_mask", "mask_logits", "task_class_masks"]

# Far below any trained logit, yet finite even in float16: softmax gives excluded classes zero
# weight as -inf would, but the batch-mean loss over rows whose true class is excluded stays
# finite (-inf or the dtype's lowest value would make it inf or nan).
MASKED_LOGIT = -1e4


def mask_logits(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``logits`` with every entry where ``keep`` (broadcast to its shape) is False set to
    :data:`MASKED_LOGIT`, out of place."""
    return logits.masked_fill(~keep.to(logits.device), MASKED_LOGIT)


def class_mask(classes: Iterable[int], num_classes: int) -> torch.Tensor:
    """``[num_classes]`` bool, True at ``classes`` (built on the CPU: nothing is read back)."""
    keep = torch.zeros(num_classes, dtype=torch.bool)
    keep[torch.as_tensor(sorted(int(c) for c in classes), dtype=torch.long)] = True
    return keep


def task_class_masks(class_splits: Sequence[Iterable[int]], num_classes: int) -> torch.Tensor:
    """``[len(class_splits), num_classes]`` bool: row t is True at task t's classes (empty for a
    task not trained yet)."""
    if not class_splits:
        return torch.zeros(0, num_classes, dtype=torch.bool)
    return torch.stack([class_mask(classes, num_classes) for classes in class_splits])

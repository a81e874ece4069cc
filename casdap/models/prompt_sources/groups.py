"""A batch's images grouped by their selected task (:class:`TaskGroups`).

A prompt source with per-task maps (DAP's generator with ``task_maps``) would otherwise gather
every image's own copy of its task's maps and multiply each image by its own copy (``index`` and
``bmm``, a ``dim x dim`` channel map per image). Grouped, each task's maps are applied once, as a
plain matrix product, to the rows of that task's images, and the results go back to the batch's
order: the same arithmetic per image as a batch of one task, whatever the batch mates' tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["TaskGroups"]


@dataclass(frozen=True)
class TaskGroups:
    """The images of one batch grouped by task: ``tasks`` the distinct tasks (ascending Python ints),
    ``counts`` their images, ``order`` ``[B]`` the batch's images sorted by task (stable: images of one
    task keep their order) and ``inverse`` ``[B]`` the position of each image in ``order``."""

    tasks: tuple[int, ...]
    counts: tuple[int, ...]
    order: torch.Tensor
    inverse: torch.Tensor

    @classmethod
    def of(cls, task_idx: torch.Tensor, num_tasks: int) -> TaskGroups:
        """The groups of the per-image tasks ``task_idx`` ``[B]`` (ids in ``0..num_tasks-1``): one read
        back from the device, the images per task."""
        order = torch.argsort(task_idx, stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        per_task = torch.zeros(num_tasks, dtype=torch.long, device=task_idx.device)
        per_task = per_task.index_add_(0, task_idx, torch.ones_like(task_idx)).tolist()
        tasks = tuple(t for t, n in enumerate(per_task) if n)
        return cls(tasks, tuple(per_task[t] for t in tasks), order, inverse)

    def __len__(self) -> int:
        return len(self.tasks)

    def apply(self, x: torch.Tensor, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
        """``fn(rows, task)`` on the rows of ``x`` (``[B, ...]``) of each task, results ``[B, ...]`` back in
        the batch's order. Rows are copied once into task order and split into views; autograd follows."""
        parts = x.index_select(0, self.order).split(list(self.counts))
        out = torch.cat([fn(rows, task) for rows, task in zip(parts, self.tasks)])
        return out.index_select(0, self.inverse)

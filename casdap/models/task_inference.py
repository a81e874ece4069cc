"""Task inference: which task's prompts an image gets.

A *task predictor* (registered by name in :data:`casdap.dap_registry.TASK_PREDICTORS`) maps the
query of each image to per-task scores; a *selection* (:data:`casdap.dap_registry.SELECTIONS`)
reduces the scores to one task index per image. DAP's key pool (:class:`KeyTaskPredictor`, name
``"keys"``) is the first predictor; ``per_image``, ``batch_majority`` and ``oracle`` are the
selections. The predictors estimated from class statistics (``gaussian``, ``lda``, ``head``) take
their estimates from :mod:`casdap.models.class_statistics`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from casdap.dap_defaults import KEYS_PER_TASK
from casdap.errors import CasdapError
from casdap.models.class_statistics import (
    MASKED_SCORE,
    ClassStatistics,
    check_shrinkage,
    fit_linear_on_gaussians,
    gaussian_log_likelihood,
    gaussian_parameters,
    lda_classifier,
)

__all__ = [
    "MASKED_SCORE",
    "ClassStatistics",
    "GaussianTaskPredictor",
    "HeadTaskPredictor",
    "KeyTaskPredictor",
    "LDATaskPredictor",
    "TaskPredictor",
    "batch_majority",
    "mask_untrained",
    "task_scores",
    "oracle",
    "per_image",
    "task_index",
]


class TaskPredictor(nn.Module):
    """The contract of a task predictor (subclass it and register the class by name).

    Built as ``Predictor(num_tasks, dim, **options)``: ``num_tasks`` tasks, queries of width ``dim``
    (the backbone's pooled features); ``options`` holds only the options a user set (the key pool's
    ``keys_per_task``), so a predictor that does not take one fails when the model is built.

    - ``forward(query)``: the query ``[B, dim]`` (frozen, un-prompted features) -> per-task scores
      ``[B, num_tasks]``, higher for a likelier task. Selections take the argmax per image.
    - :meth:`pull`: a training term the loss *subtracts* (times ``SIM_LAMBDA``), given the scores
      and the task each image trains under; zero by default.
    - :meth:`seed`: called with the queries of a task's first training batch; nothing by default.
    - :meth:`fit`: called with per-class statistics of the queries (:class:`ClassStatistics`), for
      predictors that are estimated rather than trained (class Gaussians, a head retrained on
      statistics); nothing by default.

    ``trained`` (a buffer, saved with the model) marks the tasks that have started training
    (:meth:`mark_trained`, called by the strategy); the selections never choose any other task
    (:func:`mask_untrained`). While no task is marked (a model used outside a strategy) every task
    can be chosen.
    """

    def __init__(self, num_tasks: int, dim: int) -> None:
        super().__init__()
        self.num_tasks = int(num_tasks)
        self.dim = int(dim)
        self.register_buffer("trained", torch.zeros(self.num_tasks, dtype=torch.bool))
        self.register_load_state_dict_pre_hook(_trained_before_it_was_saved)

    @torch.no_grad()
    def mark_trained(self, task: int) -> None:
        """Task ``task`` is being trained: from now on the selections may choose it."""
        self.trained[int(task)] = True

    def selectable(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` as the selections see them: untrained tasks at -inf (:func:`mask_untrained`)."""
        return mask_untrained(scores, self.trained)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pull(self, scores: torch.Tensor, task_idx: torch.Tensor) -> torch.Tensor:
        return scores.new_zeros(())

    @property
    def has_pull(self) -> bool:
        """Whether this predictor defines :meth:`pull` (else it is zero whatever the scores, and a
        training pass under the given task need not compute them)."""
        return type(self).pull is not TaskPredictor.pull

    def seed(self, task: int, query: torch.Tensor, generator: torch.Generator | None = None) -> None:
        return None

    def fit(self, stats: ClassStatistics) -> None:
        return None

    def task_rows(self, tasks: Sequence[int]) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, rows along its first axis) that belong to ``tasks`` alone; kept as they are
        while later tasks train (weight decay would otherwise move them). None by default."""
        return []


class KeyTaskPredictor(TaskPredictor):
    """DAP's key pool: a task's score is the cosine between the query and the nearest of its keys.

    Each task owns ``keys_per_task`` learnable keys (DAP: one; row ``j`` belongs to task
    ``j // keys_per_task``). With several keys per task, each covers one mode of the task's queries
    (the pull term moves only the nearest one, an online spherical k-means), so a task whose
    classes lie apart in the query space is still matched by one of its keys. The keys train
    through :meth:`pull`: the mean score of each image's own task.
    """

    def __init__(self, num_tasks: int, dim: int, keys_per_task: int = KEYS_PER_TASK) -> None:
        super().__init__(num_tasks, dim)
        if keys_per_task < 1:
            raise CasdapError(f"keys_per_task must be at least 1, got {keys_per_task}")
        self.keys_per_task = int(keys_per_task)
        # DAP's uniform (Glorot-style) init, stem of 4x4 patches.
        bound = math.sqrt(6.0 / (3 * 4 * 4 + self.dim))
        self.keys = nn.Parameter(torch.empty(self.num_tasks * self.keys_per_task, self.dim).uniform_(-bound, bound))

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        sim = F.normalize(query, dim=1) @ F.normalize(self.keys, dim=1).t()
        return sim.view(query.shape[0], self.num_tasks, self.keys_per_task).amax(2)

    def task_rows(self, tasks: Sequence[int]) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """The keys of ``tasks``."""
        m = self.keys_per_task
        rows = [t * m + i for t in tasks for i in range(m)]
        return [(self.keys, torch.as_tensor(rows, dtype=torch.long, device=self.keys.device))]

    def pull(self, scores: torch.Tensor, task_idx: torch.Tensor) -> torch.Tensor:
        """Mean cosine between each query and the nearest key of its selected task."""
        return scores.gather(1, task_idx[:, None]).mean()

    @torch.no_grad()
    def seed(self, task: int, query: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Point task ``task``'s keys at ``keys_per_task`` of its queries, spread by k-means++ seeding.

        With several keys per task, randomly initialised keys can be dead: one key is nearest to
        every query, takes every pull, and the others never move. Seeding from the task's first
        batch (cosine D^2 sampling) starts each key on a different mode. Only the direction is taken
        (cosine ignores scale); each key keeps its norm, so the optimiser's step size means the same
        as for a randomly initialised key. One key per task (DAP) is left as initialised.
        """
        m = self.keys_per_task
        if m == 1:
            return
        q = F.normalize(query.detach().float(), dim=1)
        picks = [int(torch.randint(len(q), (1,), generator=generator, device=q.device))]
        for _ in range(1, m):
            dist = (1.0 - (q @ q[picks].t()).amax(1)).clamp_min(0.0) ** 2
            dist = dist if float(dist.sum()) > 0 else torch.ones_like(dist)  # fewer distinct queries than keys
            picks.append(int(torch.multinomial(dist, 1, generator=generator)))
        rows = self.keys[task * m:(task + 1) * m]
        rows.copy_(q[picks].to(rows) * rows.norm(dim=1, keepdim=True))


def _trained_before_it_was_saved(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """State dicts saved before predictors kept ``trained``: no task marked (every task selectable, as
    then); a resumed strategy marks its trained tasks again."""
    key = prefix + "trained"
    if key not in state_dict and isinstance(getattr(module, "trained", None), torch.Tensor):
        state_dict[key] = torch.zeros_like(module.trained)


# -- selections: scores [B, T] (and the true task) -> task index per image [B] ------------------


def mask_untrained(scores: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
    """``scores`` ``[B, T]`` with every task not in ``trained`` (``[T]`` bool) at -inf, so no selection
    picks a task whose keys (or statistics) were never trained. No task marked: ``scores`` as they are.
    Reads nothing back from the device."""
    untrained = ~trained.to(scores.device) & trained.any().to(scores.device)
    return scores.masked_fill(untrained, float("-inf"))


def task_index(task: int | torch.Tensor, batch: int, num_tasks: int, device: torch.device) -> torch.Tensor:
    """The given task as a ``[batch]`` long tensor. A Python int is range-checked here (no device
    sync); a tensor is taken as it is (the caller made it: checking it would sync with the device)."""
    if not torch.is_tensor(task):
        try:
            task = operator.index(task)
        except TypeError:
            raise CasdapError(f"task_id must be an int or a [{batch}] long tensor, got {type(task).__name__}") from None
        if not 0 <= task < num_tasks:
            raise CasdapError(f"task id {task} is outside the tasks 0..{num_tasks - 1} of this model (num_tasks)")
    idx = torch.as_tensor(task, dtype=torch.long, device=device)
    idx = idx.expand(batch).clone() if idx.dim() == 0 else idx
    if idx.shape != (batch,):
        raise CasdapError(f"task_id must be an int or a [{batch}] tensor, got shape {tuple(idx.shape)}")
    return idx


def per_image(scores: torch.Tensor, task: int | torch.Tensor | None = None) -> torch.Tensor:
    """Each image's own best task: its prediction depends on no other image of the batch."""
    return scores.argmax(dim=1)


def batch_majority(scores: torch.Tensor, task: int | torch.Tensor | None = None) -> torch.Tensor:
    """The task most images of the batch pick, for all of them (DAP's evaluation protocol: uses the
    test batch's shared task)."""
    idx = scores.argmax(dim=1)
    return torch.bincount(idx, minlength=scores.shape[1]).argmax().expand(len(idx)).clone()


def oracle(scores: torch.Tensor, task: int | torch.Tensor | None = None) -> torch.Tensor:
    """The true task (a diagnostic, and how training picks the prompts)."""
    if task is None:
        raise CasdapError("oracle task selection needs the true task id (task_id=int or [B] tensor)")
    return task_index(task, scores.shape[0], scores.shape[1], scores.device)


def task_scores(class_scores: torch.Tensor, class_task: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """Per-task log-sum-exp of class scores ``[B, K]`` (classes of task ``class_task[k]``; -1: unseen):
    a task is as likely as its classes together. A task with no class scores :data:`MASKED_SCORE`."""
    member = class_task[None, :] == torch.arange(num_tasks, device=class_task.device)[:, None]  # [T, K]
    masked = class_scores[:, None, :].masked_fill(~member[None], float("-inf"))  # [B, T, K]
    out = torch.logsumexp(masked, dim=2)
    return torch.where(member.any(1)[None, :], out, torch.full_like(out, MASKED_SCORE))


class _StatisticsPredictor(TaskPredictor):
    """A predictor estimated from class statistics (:meth:`fit`) rather than trained: it needs the
    class count and keeps each class's task (-1: unseen) as a buffer, so it lives in the state dict.
    ``second_moments``: what of each class's second moments its model keeps for it between tasks
    (:data:`casdap.models.class_statistics.MOMENT_LAYOUTS`); with ``once``, :meth:`fit` gets only the
    classes of the task that just ended."""

    needs_statistics = True
    second_moments = "per_class"

    def __init__(self, num_tasks: int, dim: int, num_classes: int, shrinkage: float = 1.0) -> None:
        super().__init__(num_tasks, dim)
        self.num_classes = int(num_classes)
        self.shrinkage = check_shrinkage(shrinkage)
        self.register_buffer("class_task", torch.full((self.num_classes,), -1, dtype=torch.long))

    def class_scores(self, query: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        return task_scores(self.class_scores(query.float()), self.class_task, self.num_tasks)


class GaussianTaskPredictor(_StatisticsPredictor):
    """FeCAM-like: each class a Gaussian of the query (its mean and shrunk covariance, ``shrinkage``
    times the mean variance added to the diagonal); a class scores its log-likelihood, a task the
    log-sum-exp over its classes. Nothing is trained. A class's precision is fixed when its task
    ends, so no class's outer products are kept after that (``once``)."""

    second_moments = "once"

    def __init__(self, num_tasks: int, dim: int, num_classes: int, shrinkage: float = 1.0) -> None:
        super().__init__(num_tasks, dim, num_classes, shrinkage)
        self.register_buffer("means", torch.zeros(self.num_classes, self.dim))
        self.register_buffer("precisions", torch.zeros(self.num_classes, self.dim, self.dim))
        self.register_buffer("logdets", torch.zeros(self.num_classes))

    @torch.no_grad()
    def fit(self, stats: ClassStatistics) -> None:
        precisions, logdets = gaussian_parameters(stats, self.shrinkage)
        idx = stats.classes.to(self.means.device)
        self.means[idx] = stats.mean.to(self.means)
        self.precisions[idx] = precisions.to(self.precisions)
        self.logdets[idx] = logdets.to(self.logdets)
        self.class_task[idx] = stats.tasks.to(self.class_task)

    def class_scores(self, query: torch.Tensor) -> torch.Tensor:
        scores = gaussian_log_likelihood(query, self.means, self.precisions, self.logdets)
        return scores.masked_fill(self.class_task[None] < 0, float("-inf"))


class _LinearStatisticsPredictor(_StatisticsPredictor):
    """A linear classifier over every class seen so far, refitted from the class statistics by
    :meth:`fitter` (``(stats, num_classes, shrinkage) -> (weight, bias)``) at each task end. Weights
    are buffers (no optimiser sees them)."""

    def __init__(self, num_tasks: int, dim: int, num_classes: int, shrinkage: float = 1.0) -> None:
        super().__init__(num_tasks, dim, num_classes, shrinkage)
        self.register_buffer("weight", torch.zeros(self.num_classes, self.dim))
        self.register_buffer("bias", torch.zeros(self.num_classes))

    @staticmethod
    def fitter(stats: ClassStatistics, num_classes: int, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def fit(self, stats: ClassStatistics) -> None:
        weight, bias = self.fitter(stats, self.num_classes, self.shrinkage)
        self.weight.copy_(weight)
        self.bias.copy_(bias)
        self.class_task[stats.classes.to(self.class_task.device)] = stats.tasks.to(self.class_task)

    def class_scores(self, query: torch.Tensor) -> torch.Tensor:
        return (query @ self.weight.t() + self.bias).masked_fill(self.class_task[None] < 0, float("-inf"))


class LDATaskPredictor(_LinearStatisticsPredictor):
    """Streaming-LDA-like: class means and one shared shrunk covariance of the query
    (:func:`lda_classifier`); a task scores the log-sum-exp of its classes' discriminants. With few
    images per class one covariance is far better estimated than one per class (``gaussian``).
    Nothing is trained; of the second moments one within-class scatter is kept (``pooled``)."""

    second_moments = "pooled"
    fitter = staticmethod(lda_classifier)


class HeadTaskPredictor(_LinearStatisticsPredictor):
    """HiDe-Prompt-style: a linear classifier over every class seen so far, retrained at each task end
    on pseudo-queries drawn from the class Gaussians (:func:`fit_linear_on_gaussians`); a task scores
    the log-sum-exp of its classes' log-probabilities."""

    fitter = staticmethod(fit_linear_on_gaussians)

    def class_scores(self, query: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(super().class_scores(query), dim=1)

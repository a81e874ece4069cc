"""Continual-learning strategies: DAP as an Avalanche strategy, the nearest-class-mean baseline,
the backbone + linear-head model the other baselines train, and the task-selection metric."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from casdap.errors import CasdapError
from casdap.models.dap import MASKED_LOGIT, SELECTIONS, restrict_logits

__all__ = [
    "SELECTIONS",
    "BackboneClassifier",
    "NCMClassifier",
    "DAPStrategy",
    "GradientFreeStrategy",
    "NCMStrategy",
    "TaskSelectionAccuracy",
    "add_class_means",
]

class BackboneClassifier(nn.Module):
    """A CAS-ViT backbone's pooled features and one linear head over all classes.

    With ``freeze_backbone`` the backbone gets no gradients and stays in eval mode (BatchNorm
    statistics untouched), so only the head learns.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, freeze_backbone: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.freeze_backbone = freeze_backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_pooled(x))


class NCMClassifier(nn.Module):
    """Frozen backbone and nearest-class-mean prototypes of L2-normalised pooled features.

    Class sums and counts are buffers, so the prototypes live in the state dict (checkpoints,
    resuming). Logits are cosine similarities to the class means; unseen classes never win.
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.register_buffer("class_sums", torch.zeros(num_classes, backbone.num_features))
        self.register_buffer("class_counts", torch.zeros(num_classes))

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.forward_pooled(x), dim=-1)

    @staticmethod
    def logits_from(feats: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Cosine logits of normalised ``feats`` against the class means ``sums / counts``."""
        means = F.normalize(sums / counts.clamp(min=1).unsqueeze(1), dim=-1)
        return (feats @ means.t()).masked_fill(~(counts > 0), MASKED_LOGIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from(self.features(x), self.class_sums, self.class_counts)


class DAPStrategy(SupervisedTemplate):
    """Domain-adaptive prompting (Jung et al., ICCV 2023) as an Avalanche strategy.

    Training: every sample is trained under its own task, read from its label (``class_to_task``,
    filled as experiences start): its task's key is forced and its logits are restricted to its
    task's classes (others :data:`MASKED_LOGIT`). On a plain stream that is the current experience
    for every sample (DAP); a plugin that mixes stored samples into the batch (Avalanche's
    ``ReplayPlugin``) gets them trained under their own keys and classes. The loss is
    ``current_lambda`` times the cross-entropy over those restricted logits minus ``sim_lambda``
    times the mean cosine pull between each query and its own task's nearest key. ``mb_output`` is
    the restricted logits, so the training accuracy metric scores what the loss trains. With several
    keys per task, the current task's keys are seeded from the current-task samples of its first
    training batch (``CASDAP.seed_keys``). The generators' token-axis maps are frozen once the first
    experience is done.

    Evaluation picks the key per image (default), by batch majority (the reference protocol: uses
    the test batch's shared task), or from the true task (oracle, a diagnostic); ``restrict_to_task``
    keeps only the selected key's task classes in the predictions (``mb_output``). The evaluation
    loss is the same for every protocol: the cross-entropy of the selected key's logits over the
    classes trained so far (plus the image's own class if it was never trained), before any
    restriction. So a key-selection error costs what the head's scores say, not the ~1e4 of an
    excluded logit. The model must follow ``casdap.models.dap.CASDAP``.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_mb_size: int = 128,
        train_epochs: int = 5,
        eval_mb_size: int | None = None,
        device: str | torch.device = "cpu",
        plugins: Sequence | None = None,
        evaluator: EvaluationPlugin | None = None,
        current_lambda: float = 1.0,
        sim_lambda: float = 0.1,
        selection: str = "per_image",
        restrict_to_task: bool = False,
        eval_every: int = -1,
    ) -> None:
        if selection not in SELECTIONS:
            raise CasdapError(f"unknown key selection '{selection}' (use one of {', '.join(SELECTIONS)})")
        kwargs = {} if evaluator is None else {"evaluator": evaluator}
        super().__init__(
            model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), train_mb_size=train_mb_size,
            train_epochs=train_epochs, eval_mb_size=eval_mb_size or train_mb_size, device=device,
            plugins=list(plugins or []), eval_every=eval_every, **kwargs,
        )
        self.current_lambda, self.sim_lambda = current_lambda, sim_lambda
        self.selection, self.restrict_to_task = selection, restrict_to_task
        self.class_to_task: dict[int, int] = {}  # filled as experiences are trained
        self.mb_dap = None  # DAPOutput of the last minibatch
        self._keys_seeded = True  # set False at the start of every training experience
        self.mb_true_task: torch.Tensor | None = None

    # -- experience bookkeeping ------------------------------------------------------------
    @property
    def current_task(self) -> int:
        return int(self.experience.current_experience)

    def _before_training_exp(self, **kwargs):
        t = self.current_task
        if t >= getattr(self.model, "num_tasks", t + 1):
            raise CasdapError(
                f"experience {t} has no key: the model has {self.model.num_tasks} "
                "(raise MODEL.DAP.PROMPT_POOL / NUM_TASKS_FOR_EMB to at least CONTINUAL.N_TASKS)"
            )
        for c in self.experience.classes_in_this_experience:
            self.class_to_task[int(c)] = t
        if t >= 1:
            self.model.freeze_token_axis()
        self._keys_seeded = False
        super()._before_training_exp(**kwargs)

    def _seed_keys(self, own: torch.Tensor) -> None:
        """Seed the current task's keys from the current-task samples (``own``) of its first training
        batch (same keys on every rank). Replayed samples of earlier tasks never seed them."""
        if bool(own.any()):
            self.model.seed_keys(self.current_task, self.model.forward_query(self.mb_x[own]))
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(self.model.dap_keys.data, src=0)
        self._keys_seeded = True

    def true_task(self, y: torch.Tensor) -> torch.Tensor:
        """Task of each label, from the experiences trained so far (-1: never trained)."""
        table = torch.full((max(self.class_to_task, default=0) + 1,), -1, dtype=torch.long)
        for c, t in self.class_to_task.items():
            table[c] = t
        table = table.to(y.device)
        inside = y < len(table)
        return torch.where(inside, table[y.clamp(max=len(table) - 1)], -1).to(self.device)

    def class_splits(self) -> list[list[int]]:
        """Classes of each task (one list per key group; empty for a task not trained yet)."""
        return [[c for c, t in self.class_to_task.items() if t == task] for task in range(self.model.num_tasks)]

    # -- forward and loss ------------------------------------------------------------------
    def forward(self):
        if self.is_training:
            task = self.true_task(self.mb_y)
            if bool((task < 0).any()):
                bad = sorted(set(self.mb_y[task < 0].tolist()))
                raise CasdapError(f"training labels {bad[:10]} belong to no experience trained so far")
            if not self._keys_seeded:
                self._seed_keys(task == self.current_task)
            out = self.model(self.mb_x, task_id=task)
            self.mb_dap = out
            # The logits the loss trains on: each sample's own task's classes (finite fill).
            return restrict_logits(out.logits, task, self.class_splits())
        self.mb_true_task = self.true_task(self.mb_y)
        oracle = self.mb_true_task.clamp(min=0) if self.selection == "oracle" else None
        out = self.model(self.mb_x, task_id=oracle, selection=self.selection)
        self.mb_dap = out
        return self.restrict(out.logits, out.key_idx) if self.restrict_to_task else out.logits

    def restrict(self, logits: torch.Tensor, key_idx: torch.Tensor) -> torch.Tensor:
        """Keep, per image, only the classes of the task its selected key stands for."""
        return restrict_logits(logits, key_idx, self.class_splits())

    def eval_loss_logits(self) -> torch.Tensor:
        """Logits the evaluation loss is taken over: the selected key's logits before any restriction,
        over the classes trained so far and each image's own class (others :data:`MASKED_LOGIT`)."""
        logits = self.mb_dap.logits.float()
        keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        if self.class_to_task:
            keep[torch.as_tensor(sorted(self.class_to_task), dtype=torch.long, device=logits.device)] = True
        keep = keep.unsqueeze(0).expand_as(logits).clone()
        keep[torch.arange(len(self.mb_y), device=logits.device), self.mb_y.to(logits.device)] = True
        return logits.masked_fill(~keep, MASKED_LOGIT)

    def criterion(self):
        if self.is_training:
            ce = F.cross_entropy(self.mb_output.float(), self.mb_y)
            return self.current_lambda * ce - self.sim_lambda * self.mb_dap.pull
        return F.cross_entropy(self.eval_loss_logits(), self.mb_y)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and selected keys for a batch, under the strategy's evaluation protocol."""
        self.model.eval()
        true_task = self.true_task(y)
        oracle = true_task.clamp(min=0) if self.selection == "oracle" else None
        out = self.model(x, task_id=oracle, selection=self.selection)
        logits = self.restrict(out.logits, out.key_idx) if self.restrict_to_task else out.logits
        return logits, out.key_idx


class GradientFreeStrategy(SupervisedTemplate):
    """A strategy whose "training" is one pass that adds up statistics of frozen features (no
    gradient step): the shared constructor of the prototype methods (ncm, ranpac, and aper after
    its first task, which trains with the optimizer it is given)."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        train_mb_size: int = 128,
        train_epochs: int = 1,
        eval_mb_size: int | None = None,
        device: str | torch.device = "cpu",
        plugins: Sequence | None = None,
        evaluator: EvaluationPlugin | None = None,
        eval_every: int = -1,
    ) -> None:
        kwargs = {} if evaluator is None else {"evaluator": evaluator}
        # Avalanche expects an optimizer; nothing is optimised (every parameter is frozen).
        optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.0)
        super().__init__(
            model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), train_mb_size=train_mb_size,
            train_epochs=1, eval_mb_size=eval_mb_size or train_mb_size, device=device,
            plugins=list(plugins or []), eval_every=eval_every, **kwargs,
        )

    def statistics_pass(self, **kwargs) -> Iterator[None]:
        """One pass over the training dataloader that yields at every batch (``mb_x``, ``mb_y``
        set) between Avalanche's iteration hooks; the loss is zero, no gradient step is taken."""
        for batch in self.dataloader:
            self.mbatch = batch
            if self._stop_training:
                break
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            yield
            self.loss = self._make_empty_loss()
            self._after_training_iteration(**kwargs)


class NCMStrategy(GradientFreeStrategy):
    """Nearest class mean on frozen features: each experience adds its classes' prototypes.

    No gradient step happens; the "epoch" is one pass that accumulates class sums. Under
    ``torchrun`` the sums are added over ranks. The training ``mb_output`` of each batch is the
    logits of the classifier being built (the prototypes so far, this batch included, on this
    rank), so the training accuracy metric scores the classifier, not raw features; the training
    loss is zero (nothing is optimised).
    """

    def training_epoch(self, **kwargs):
        add_class_means(self, **kwargs)


@torch.no_grad()
def add_class_means(strategy: GradientFreeStrategy, **kwargs) -> None:
    """One pass over the strategy's dataloader adding each class's feature sum and count to the
    model's ``class_sums`` / ``class_counts`` (summed over ``torchrun`` ranks). Each batch's
    ``mb_output`` is the logits of the prototypes so far, this batch included; the loss is zero."""
    model = strategy.model
    sums = torch.zeros_like(model.class_sums)
    counts = torch.zeros_like(model.class_counts)
    for _ in strategy.statistics_pass(**kwargs):
        feats = model.features(strategy.mb_x)
        sums.index_add_(0, strategy.mb_y, feats)
        counts.index_add_(0, strategy.mb_y, torch.ones_like(strategy.mb_y, dtype=counts.dtype))
        strategy.mb_output = model.logits_from(feats, model.class_sums + sums, model.class_counts + counts)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    model.class_sums += sums
    model.class_counts += counts


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

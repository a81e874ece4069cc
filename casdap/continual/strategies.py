"""Continual-learning strategies: DAP as an Avalanche strategy, the nearest-class-mean baseline,
the backbone + linear-head model the other baselines train, and the task-selection metric."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from casdap.continual.plugins import mask_to_classes
from casdap.errors import CasdapError
from casdap.models.dap import MASKED_LOGIT, SELECTIONS, restrict_logits

__all__ = [
    "SELECTIONS",
    "BackboneClassifier",
    "NCMClassifier",
    "DAPStrategy",
    "NCMStrategy",
    "TaskSelectionAccuracy",
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = self.class_counts > 0
        means = F.normalize(self.class_sums / self.class_counts.clamp(min=1).unsqueeze(1), dim=-1)
        logits = self.features(x) @ means.t()
        return logits.masked_fill(~seen, MASKED_LOGIT)


class DAPStrategy(SupervisedTemplate):
    """Domain-adaptive prompting (Jung et al., ICCV 2023) as an Avalanche strategy.

    Training on experience ``t`` forces key ``t``; the loss is ``current_lambda`` times the
    cross-entropy over the current experience's classes (other logits -inf) minus
    ``sim_lambda`` times the mean cosine pull between queries and the selected key. With several
    keys per task, the task's keys are seeded from its first training batch (``CASDAP.seed_keys``).
    The generators' token-axis maps are frozen once the first experience is done. Evaluation picks
    the key per image (default), by batch majority (the reference protocol: uses the test
    batch's shared task), or from the true task (oracle, a diagnostic); ``restrict_to_task``
    keeps only the selected key's task classes. The model must follow ``casdap.models.dap.CASDAP``.
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

    def _seed_keys(self) -> None:
        """Seed the current task's keys from its first training batch (same keys on every rank)."""
        self.model.seed_keys(self.current_task, self.model.forward_query(self.mb_x))
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(self.model.dap_keys.data, src=0)
        self._keys_seeded = True

    def true_task(self, y: torch.Tensor) -> torch.Tensor:
        """Task of each label, from the experiences trained so far (-1: never trained)."""
        table = torch.full((max(self.class_to_task, default=0) + 1,), -1, dtype=torch.long)
        for c, t in self.class_to_task.items():
            table[c] = t
        y = y.cpu()
        out = torch.full_like(y, -1)
        inside = y < len(table)
        out[inside] = table[y[inside]]
        return out.to(self.device)

    # -- forward and loss ------------------------------------------------------------------
    def forward(self):
        if self.is_training:
            if not self._keys_seeded:
                self._seed_keys()
            out = self.model(self.mb_x, task_id=self.current_task)
        else:
            self.mb_true_task = self.true_task(self.mb_y)
            oracle = self.mb_true_task.clamp(min=0) if self.selection == "oracle" else None
            out = self.model(self.mb_x, task_id=oracle, selection=self.selection)
        self.mb_dap = out
        logits = out.logits
        if not self.is_training and self.restrict_to_task:
            logits = self.restrict(logits, out.key_idx)
        return logits

    def restrict(self, logits: torch.Tensor, key_idx: torch.Tensor) -> torch.Tensor:
        """Keep, per image, only the classes of the task its selected key stands for."""
        splits = [[c for c, t in self.class_to_task.items() if t == task] for task in range(self.model.num_tasks)]
        return restrict_logits(logits, key_idx, splits)

    def criterion(self):
        if self.is_training:
            logits = mask_to_classes(self.mb_output, self.experience.classes_in_this_experience)
            ce = F.cross_entropy(logits, self.mb_y)
            return self.current_lambda * ce - self.sim_lambda * self.mb_dap.pull
        return F.cross_entropy(self.mb_output, self.mb_y)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and selected keys for a batch, under the strategy's evaluation protocol."""
        self.model.eval()
        true_task = self.true_task(y)
        oracle = true_task.clamp(min=0) if self.selection == "oracle" else None
        out = self.model(x, task_id=oracle, selection=self.selection)
        logits = self.restrict(out.logits, out.key_idx) if self.restrict_to_task else out.logits
        return logits, out.key_idx


class NCMStrategy(SupervisedTemplate):
    """Nearest class mean on frozen features: each experience adds its classes' prototypes.

    No gradient step happens; the "epoch" is one pass that accumulates class sums. Under
    ``torchrun`` the sums are added over ranks.
    """

    def __init__(
        self,
        *,
        model: NCMClassifier,
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

    @torch.no_grad()
    def training_epoch(self, **kwargs):
        sums = torch.zeros_like(self.model.class_sums)
        counts = torch.zeros_like(self.model.class_counts)
        for batch in self.dataloader:
            self.mbatch = batch
            if self._stop_training:
                break
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            feats = self.model.features(self.mb_x)
            sums.index_add_(0, self.mb_y, feats)
            counts.index_add_(0, self.mb_y, torch.ones_like(self.mb_y, dtype=counts.dtype))
            self.mb_output = feats
            self.loss = self._make_empty_loss()
            self._after_training_iteration(**kwargs)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        self.model.class_sums += sums
        self.model.class_counts += counts


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

"""Domain-adaptive prompting (DAP) as an Avalanche strategy: training under each sample's own task,
evaluation under the task inference and prediction mode, the first-task adaptation of the query,
the statistics pass and the protection of finished tasks' parameters under weight decay."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from casdap import dap_defaults as D
from casdap.continual.first_session import FirstSessionTraining
from casdap.continual.fusion import with_fusion
from casdap.continual.prediction import prediction_mode, task_class_mask
from casdap.continual.statistics_pass import statistics_pass
from casdap.continual.strategy_mixin import CasdapStrategyMixin
from casdap.errors import CasdapError
from casdap.models.dap import SELECTIONS
from casdap.models.logit_mask import mask_logits

__all__ = ["DAPStrategy"]


class _DAPCallbacks(SupervisedPlugin):
    """DAP's own callbacks, first among its strategy's plugins: the experience's bookkeeping at the
    first callback of its set-up (before its data loader and optimizer are made), the statistics
    pass at the end of its training (before any other plugin's ``after_training_exp``)."""

    def before_train_dataset_adaptation(self, strategy, *args, **kwargs):
        strategy.start_task()

    def after_training_exp(self, strategy, *args, **kwargs):
        if strategy.keeps_statistics:
            strategy.statistics_pass()


class DAPStrategy(CasdapStrategyMixin, FirstSessionTraining, SupervisedTemplate):
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

    ``prediction`` (task-adaptive prediction, :mod:`casdap.continual.prediction`) overrides
    ``restrict_to_task`` when given: ``restrict`` is DAP's restriction; ``all`` scores every seen
    class with the head re-aligned on statistics of the prompted features; ``soft`` combines the
    ``top_k`` best-scored tasks' predictions. ``fusion_weight`` (None: unfused) fuses any of them with
    the query's class Gaussians (:mod:`casdap.continual.fusion`; the model must keep them, built with
    ``fusion=True``). When the model keeps class statistics (a predictor estimated from them, or
    ``all``), one pass over the task's training images with the evaluation transform adds them
    at the end of each task (summed over ``torchrun`` ranks) and refits what is estimated.

    With an adapted query (``CASDAP(query="adapted")``) the first experience begins with APER's first
    session: ``train_epochs`` epochs of the query's backbone and a linear head on the task's labels
    (the optimizer's adaptation groups, the same schedule restarted after), then that backbone is
    frozen for good and DAP's own training of the task follows on the adapted query.

    The class-to-task table and the classes of every task are tensors on the strategy's device,
    rebuilt when an experience starts (and on resume), so a training step after the first of its
    experience reads nothing back from the device.
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
        current_lambda: float = D.CURRENT_LAMBDA,
        sim_lambda: float = D.SIM_LAMBDA,
        selection: str = D.SELECTION,
        restrict_to_task: bool = False,
        prediction: str | None = None,
        top_k: int = 1,
        fusion_weight: float | None = None,
        eval_every: int = -1,
    ) -> None:
        selection = selection.lower()
        if selection not in SELECTIONS:
            raise CasdapError(f"unknown key selection '{selection}' (use one of {', '.join(SELECTIONS)})")
        if prediction is None and restrict_to_task:
            prediction = "restrict"
        mode = with_fusion(prediction_mode(prediction), fusion_weight)
        mode.check(model, selection, top_k)
        kwargs = {} if evaluator is None else {"evaluator": evaluator}
        super().__init__(
            model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), train_mb_size=train_mb_size,
            train_epochs=train_epochs, eval_mb_size=eval_mb_size or train_mb_size, device=device,
            plugins=list(plugins or []), eval_every=eval_every, **kwargs,
        )
        self.current_lambda, self.sim_lambda = current_lambda, sim_lambda
        self.selection = selection
        self.prediction_mode = mode  # casdap.continual.prediction: how evaluation batches are scored
        self.prediction = mode.name
        self.restrict_to_task = mode.name == "restrict"
        self.top_k = int(top_k)
        self.class_to_task: dict[int, int] = {}  # filled as experiences are trained
        self.mb_dap = None  # DAPOutput of the last minibatch
        self._keys_seeded = True  # set False at the start of every training experience
        self.mb_true_task: torch.Tensor | None = None
        self._tables: tuple[dict[int, int], torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._one_task_batches = False
        self.plugins.insert(0, _DAPCallbacks())  # first: before every other plugin's callbacks

    # -- experience bookkeeping ------------------------------------------------------------
    @property
    def current_task(self) -> int:
        return int(self.experience.current_experience)

    def start_task(self) -> None:
        """The experience's bookkeeping, before anything of it is set up (:class:`_DAPCallbacks`): its
        classes join the class-to-task map, its task becomes selectable, earlier tasks' shared parts
        stop training, and its keys wait for the first batch to seed them."""
        t = self.current_task
        if t >= getattr(self.model, "num_tasks", t + 1):
            raise CasdapError(
                f"experience {t} has no key: the model has {self.model.num_tasks} "
                "(raise MODEL.DAP.PROMPT_POOL / NUM_TASKS_FOR_EMB to at least CONTINUAL.N_TASKS)"
            )
        for c in self.experience.classes_in_this_experience:
            self.class_to_task[int(c)] = t
        self._refresh_tables()
        if hasattr(self.model, "mark_trained"):  # from now on task t can be selected
            self.model.mark_trained(t)
        from avalanche.training.plugins import ReplayPlugin

        # Without a plugin that mixes stored samples into the batch, every training sample is of the
        # current task: the model is given the task as an int (one task for the batch, no read-back).
        self._one_task_batches = self.find_plugin(ReplayPlugin) is None
        if t >= 1:
            self.model.freeze_token_axis()
        self._keys_seeded = False

    def _refresh_tables(self) -> None:
        """The class-to-task map as device tensors: the task of every label (-1: never trained), the
        classes of every task as a mask ``[num_tasks, max class + 1]``, and the classes trained so far."""
        size = max(self.class_to_task, default=0) + 1
        table = torch.full((size,), -1, dtype=torch.long)
        for c, t in self.class_to_task.items():
            table[c] = t
        n_tasks = self.model.num_tasks
        splits = torch.zeros(n_tasks, size, dtype=torch.bool)
        for c, t in self.class_to_task.items():
            if t < n_tasks:
                splits[t, c] = True
        seen = torch.as_tensor(sorted(self.class_to_task), dtype=torch.long)
        self._tables = (dict(self.class_to_task), table.to(self.device), splits.to(self.device), seen.to(self.device))

    def _current_tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._tables is None or self._tables[0] != self.class_to_task:
            self._refresh_tables()  # the map was changed from outside (or never built)
        return self._tables[1:]

    def _seed_keys(self, own: torch.Tensor) -> None:
        """Seed the current task's keys from the current-task samples (``own``) of its first training
        batch (same keys on every rank). Replayed samples of earlier tasks never seed them."""
        if bool(own.any()):
            self.model.seed_keys(self.current_task, self.model.forward_query(self.mb_x[own]))
        if dist.is_available() and dist.is_initialized():
            keys = getattr(self.model.dap_task_predictor, "keys", None)  # predictors without keys: nothing to share
            if keys is not None:
                dist.broadcast(keys.data, src=0)
        self._keys_seeded = True

    def true_task(self, y: torch.Tensor) -> torch.Tensor:
        """Task of each label, from the experiences trained so far (-1: never trained)."""
        table = self._current_tables()[0].to(y.device)
        inside = y < len(table)
        return torch.where(inside, table[y.clamp(max=len(table) - 1)], -1).to(self.device)

    def class_splits(self) -> list[list[int]]:
        """Classes of each task (one list per key group; empty for a task not trained yet)."""
        return [[c for c, t in self.class_to_task.items() if t == task] for task in range(self.model.num_tasks)]

    def class_task_mask(self) -> torch.Tensor:
        """``[num_tasks, max class + 1]`` bool on the strategy's device: the classes of each task."""
        return self._current_tables()[1]

    def _restrict_to(self, logits: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Keep, per row, only the classes of ``task`` (others :data:`MASKED_LOGIT`), from the cached
        class mask: what :func:`casdap.models.dap.restrict_logits` gives, with no host sync."""
        keep = task_class_mask(self, logits.shape[1], logits.device)
        return mask_logits(logits, keep[task.to(logits.device)])

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        if getattr(self.model, "query_mode", "frozen") == "adapted" and self.model.needs_adaptation:
            self.adapt_query(experience, eval_streams, **kwargs)
        super()._train_exp(experience, eval_streams, **kwargs)

    def make_optimizer(self, reset_optimizer_state: bool = False, **kwargs):
        """Avalanche's, except with the query's backbone copy, whose parameters Avalanche cannot tell
        from the backbone's: then the runner's groups are kept (:meth:`keep_optimizer_groups`)."""
        if getattr(self.model, "query_backbone", None) is None:
            return super().make_optimizer(reset_optimizer_state=reset_optimizer_state, **kwargs)
        self.keep_optimizer_groups(self.model.named_parameters(), reset_optimizer_state)

    def adapt_query(self, experience, eval_streams=None, **kwargs) -> None:
        """APER's first session for the query (:meth:`adapt_first_session`): the template's gradient
        epochs over the experience with the query's backbone and linear head as the only trained parts
        (cross-entropy on the labels). The learning-rate schedule restarts for DAP's epochs."""
        from casdap.continual.plugins import LRSchedulePlugin

        self.adapt_first_session(lambda: SupervisedTemplate._train_exp(self, experience, eval_streams, **kwargs))
        schedule = self.find_plugin(LRSchedulePlugin)
        if schedule is not None:
            schedule.before_training_exp(self)

    # -- forward and loss ------------------------------------------------------------------
    def forward(self):
        if self.is_training and self.adapting:
            return self.model.adaptation_logits(self.mb_x)
        if self.is_training:
            task = self.true_task(self.mb_y)
            if not self._keys_seeded:  # the first batch of the experience: checks and key seeding
                if bool((task < 0).any()):
                    bad = sorted(set(self.mb_y[task < 0].tolist()))
                    raise CasdapError(f"training labels {bad[:10]} belong to no experience trained so far")
                if self._one_task_batches and bool((task != self.current_task).any()):
                    raise CasdapError("a training batch holds samples of another task and no ReplayPlugin is "
                                      "attached: a plugin that mixes stored samples into the batch must be "
                                      "(or subclass) Avalanche's ReplayPlugin")
                self._seed_keys(task == self.current_task)
            out = self.model(self.mb_x, task_id=self.current_task if self._one_task_batches else task)
            self.mb_dap = out
            # The logits the loss trains on: each sample's own task's classes (finite fill).
            return self._restrict_to(out.logits, task)
        self.mb_true_task = self.true_task(self.mb_y)
        self.mb_dap, logits = self.prediction_mode.predict(self, self.mb_x, self.mb_true_task)
        return logits

    # -- class statistics ------------------------------------------------------------------
    @property
    def keeps_statistics(self) -> bool:
        return bool(getattr(self.model, "query_statistics", False) or getattr(self.model, "prompted_statistics", False))

    def statistics_pass(self) -> None:
        """Add the class statistics of the task just trained and refit what is estimated from them
        (:func:`casdap.continual.statistics_pass.statistics_pass`)."""
        statistics_pass(self, self.current_task)

    def oracle_task(self, true_task: torch.Tensor) -> torch.Tensor:
        """The true task of every image, for oracle selection; an image of a class no experience has
        trained has none, which is an error (one host sync, oracle evaluation only)."""
        if bool((true_task < 0).any()):
            raise CasdapError("oracle task selection: the batch holds images of classes no experience has trained "
                              "(they have no true task); evaluate only the tasks trained so far")
        return true_task

    def eval_loss_logits(self) -> torch.Tensor:
        """Logits the evaluation loss is taken over: the selected key's logits before any restriction,
        over the classes trained so far and each image's own class (others :data:`MASKED_LOGIT`)."""
        logits = self.mb_dap.logits.float()
        keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        if self.class_to_task:
            keep[self._current_tables()[2].to(logits.device)] = True
        keep = keep.unsqueeze(0).expand_as(logits).clone()
        keep[torch.arange(len(self.mb_y), device=logits.device), self.mb_y.to(logits.device)] = True
        return mask_logits(logits, keep)

    def criterion(self):
        if self.is_training and self.adapting:
            return F.cross_entropy(self.mb_output.float(), self.mb_y)
        if self.is_training:
            ce = F.cross_entropy(self.mb_output.float(), self.mb_y)
            return self.current_lambda * ce - self.sim_lambda * self.mb_dap.pull
        return F.cross_entropy(self.eval_loss_logits(), self.mb_y)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and selected keys for a batch, under the strategy's evaluation protocol (with
        ``batch_majority`` an image's key depends on its batch mates)."""
        self.model.eval()
        out, logits = self.prediction_mode.predict(self, x, self.true_task(y))
        return logits, out.key_idx

    @torch.no_grad()
    def task_decomposition(self, logits: torch.Tensor, class_task: torch.Tensor,
                           true_task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The selected task of every image (``mb_dap``) and its logits under its own task's prompts.

        An image whose selected task is its own already has them (the evaluation pass's, before any
        restriction); only the others get an oracle pass, each with its true task's prompts (the
        query pass skipped). The cost is one prompted forward of the images whose task was missed
        (1 - TII of them), none under oracle selection."""
        out = self.mb_dap
        if self.selection == "oracle":
            return out.key_idx, out.logits
        task = true_task.to(out.key_idx.device)
        within = out.logits.float().clone()
        missed = (out.key_idx != task).nonzero().squeeze(1)
        if len(missed):
            from casdap.continual.plugins import AutocastPlugin

            amp = self.find_plugin(AutocastPlugin)
            with torch.autocast(amp.device_type, dtype=torch.bfloat16) if amp is not None else nullcontext():
                feats = self.model.forward_prompted(self.mb_x[missed.to(self.mb_x.device)], task[missed])
                head = self.prediction_mode.head(self.model)
                within[missed.to(within.device)] = head(feats).float().to(within.device)
        return out.key_idx, within

    # -- weight decay on what is frozen ----------------------------------------------------
    def optimizer_step(self):
        """The optimizer's step, with the rows of earlier tasks (head rows of their classes, task
        embeddings, keys, per-task generator maps) put back as they were: without replay they get no
        gradient, yet weight decay (``SOLVER.WEIGHT_DECAY`` > 0) would shrink them. Without decay
        nothing is copied (the step leaves them exactly as they are)."""
        frozen = self._frozen_rows() if self._decays() else []
        saved = [p.detach()[rows].clone() for p, rows in frozen]
        super().optimizer_step()
        with torch.no_grad():
            for (p, rows), value in zip(frozen, saved):
                p[rows] = value

    def _decays(self) -> bool:
        return any(g.get("weight_decay", 0.0) > 0 for g in self.optimizer.param_groups)

    def _frozen_rows(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, rows along its first axis) of every task trained before the current one; none
        with replay (stored samples train their tasks' rows) or with a model that has no task rows."""
        rows_of = getattr(self.model, "task_rows", None)
        if not self._one_task_batches or rows_of is None:
            return []
        earlier = sorted({t for t in self.class_to_task.values() if t < self.current_task})
        classes = sorted(c for c, t in self.class_to_task.items() if t < self.current_task)
        return rows_of(earlier, classes) if earlier else []

    # -- resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "class_to_task": dict(self.class_to_task)}

    def load_own_state(self, state: dict[str, Any], *, task_classes: Sequence, done: int) -> None:
        self.class_to_task = {int(c): int(t) for c, t in state["class_to_task"].items()}
        self._refresh_tables()
        if hasattr(self.model, "mark_trained"):  # checkpoints from before the model kept its trained tasks
            for t in sorted(set(self.class_to_task.values())):
                self.model.mark_trained(t)

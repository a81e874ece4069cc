"""Continual-learning strategies: DAP as an Avalanche strategy, the nearest-class-mean baseline,
the backbone + linear-head model the other baselines train, and the task-selection metric."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from casdap import dap_defaults as D
from casdap.dap_registry import PREDICTION_NAMES, checked
from casdap.errors import CasdapError
from casdap.models.dap import SELECTIONS, DAPOutput, restrict_logits
from casdap.models.logit_mask import MASKED_LOGIT, mask_logits
from casdap.models.task_inference import add_moments, sum_over_ranks

__all__ = [
    "SELECTIONS",
    "CasdapStrategyMixin",
    "BackboneClassifier",
    "NCMClassifier",
    "DAPStrategy",
    "GradientFreeStrategy",
    "NCMStrategy",
    "TaskSelectionAccuracy",
    "add_class_means",
]

def _clock_state(strategy) -> dict[str, int]:
    return {k: int(v) for k, v in vars(strategy.clock).items() if isinstance(v, int)}


def _workers_for(loader, num_workers: int) -> int:
    """``num_workers`` capped at the loader's number of batches (at least 1): the data loader hands
    batch k to worker k mod n, seeded base seed + its index, so the workers past the last batch get
    no batch and only cost their start. Batches, their order and every random augmentation stay
    exactly as they are with ``num_workers``."""
    try:
        batches = len(loader)
    except TypeError:  # a loader that does not know its length
        return num_workers
    return min(num_workers, max(1, batches))


class CasdapStrategyMixin:
    """What every strategy of this package adds to its Avalanche template: the state a resumed run
    needs (:meth:`state_dict` / :meth:`load_state_dict`) and the batch-wide prediction of the
    run directory's mixed-stream pass (:meth:`predict`).

    The base state is Avalanche's clock and, where an :class:`~casdap.continual.plugins.RngRecorderPlugin`
    precedes a ``ReplayPlugin``, the random states from which the replay buffer is rebuilt update by
    update. A subclass adds its own part by extending :meth:`state_dict` and :meth:`load_own_state`.
    Put the mixin before the Avalanche template in the bases.
    """

    def state_dict(self) -> dict[str, Any]:
        """What the strategy keeps between tasks beyond its model (checkpointed after every task)."""
        from casdap.continual.plugins import RngRecorderPlugin

        state: dict[str, Any] = {"clock": _clock_state(self)}
        rec = self.find_plugin(RngRecorderPlugin)
        if rec is not None:
            state["replay_rng"] = dict(rec.states)
        return state

    def load_state_dict(self, state: dict[str, Any], *, train_stream, task_classes: Sequence, done: int) -> None:
        """Undo :meth:`state_dict` after ``done`` finished tasks, the model already loaded."""
        for k, v in state["clock"].items():
            setattr(self.clock, k, v)
        self.load_own_state(state, task_classes=task_classes, done=done)
        self._rebuild_replay(state, train_stream, done)

    def load_own_state(self, state: dict[str, Any], *, task_classes: Sequence, done: int) -> None:
        """A subclass's own part of :meth:`load_state_dict` (nothing here)."""

    def _rebuild_replay(self, state: dict[str, Any], train_stream, done: int) -> None:
        from avalanche.training.plugins import ReplayPlugin

        from casdap.continual.plugins import RngRecorderPlugin

        replay, rec = self.find_plugin(ReplayPlugin), self.find_plugin(RngRecorderPlugin)
        if replay is None or rec is None:
            return
        # the same buffer updates from the same random states give exactly the same buffer
        rec.states = {int(k): v for k, v in state["replay_rng"].items()}
        for t in range(done):
            torch.set_rng_state(rec.states[t])
            replay.storage_policy.post_adapt(self, train_stream[t])

    def make_train_dataloader(self, num_workers: int = 0, **kwargs) -> None:
        super().make_train_dataloader(num_workers=num_workers, **kwargs)
        capped = _workers_for(self.dataloader, num_workers)
        if capped:  # workers started once per experience, not at every epoch
            super().make_train_dataloader(num_workers=capped, persistent_workers=True, **kwargs)

    def make_eval_dataloader(self, num_workers: int = 0, **kwargs) -> None:
        super().make_eval_dataloader(num_workers=num_workers, **kwargs)
        capped = _workers_for(self.dataloader, num_workers)
        if capped != num_workers:
            super().make_eval_dataloader(num_workers=capped, **kwargs)
        if getattr(self.dataloader, "distributed_sampling", False):
            # under torchrun Avalanche hands each rank its share of the test set, but rank 0 evaluates
            # alone: it must see every test image
            from avalanche.benchmarks.utils.data_loader import SingleDatasetDataLoader

            loader = self.dataloader
            self.dataloader = SingleDatasetDataLoader(loader.datasets[0], loader.batch_sizes[0],
                                                      distributed_sampling=False, **loader.loader_kwargs)

    def find_plugin(self, kind: type):
        """The strategy's first plugin of type ``kind``, or None."""
        return next((p for p in self.plugins if isinstance(p, kind)), None)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for a batch under the strategy's evaluation protocol, and the selected keys where the
        method has keys (else None). Here every image is predicted alone by the model."""
        self.model.eval()
        return self.model(x), None

    @torch.no_grad()
    def task_decomposition(self, logits: torch.Tensor, class_task: torch.Tensor,
                           true_task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image of the evaluation batch (``mb_x``, ``mb_y``) whose predictions are ``logits``: the
        inferred task ``[B]`` and the logits under the true task ``[B, C]`` (the caller keeps only the
        true task's classes of them, for within-task accuracy). ``class_task[c]`` is class c's task
        (-1: not evaluated). Here the task the predicted class implies, and the same logits (a method
        whose prediction does not depend on a task)."""
        pred = logits.argmax(1).to(class_task.device)
        inside = pred < len(class_task)
        return torch.where(inside, class_task[pred.clamp(max=len(class_task) - 1)], -1), logits


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
        return mask_logits(feats @ means.t(), counts > 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from(self.features(x), self.class_sums, self.class_counts)


class DAPStrategy(CasdapStrategyMixin, SupervisedTemplate):
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

    ``prediction`` (task-adaptive prediction) overrides ``restrict_to_task`` when given:
    ``restrict`` is DAP's restriction; ``all`` scores every seen class with the model's head
    re-aligned on statistics of the prompted features (``CASDAP.all_class_logits``), so a wrong
    task changes the prompts but does not rule out the right class; ``soft`` runs every image
    under the prompts of its ``top_k`` best-scored tasks and scores class ``c`` of task ``t`` as
    ``log p(t) + log p(c | t)`` (``p(t)``: softmax of the predictor's scores over the trained
    tasks; ``p(c | t)``: softmax of the head over ``t``'s classes), at ``top_k`` prompted passes
    per image. When the model keeps class statistics (a predictor estimated from them, or
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
        eval_every: int = -1,
    ) -> None:
        selection = selection.lower()
        if selection not in SELECTIONS:
            raise CasdapError(f"unknown key selection '{selection}' (use one of {', '.join(SELECTIONS)})")
        if prediction is not None:
            prediction = checked("prediction", prediction, PREDICTION_NAMES)
            restrict_to_task = prediction == "restrict"
        n_tasks = getattr(model, "num_tasks", 1)
        if prediction == "soft" and not 1 <= int(top_k) <= n_tasks:
            raise CasdapError(f"top_k must be 1..{n_tasks} (the model's tasks), got {top_k}")
        if prediction == "soft" and selection != "per_image":
            raise CasdapError(f"prediction 'soft' takes each image's own top tasks: selection must be per_image, "
                              f"got '{selection}'")
        if prediction == "all" and not getattr(model, "prompted_statistics", False):
            raise CasdapError("prediction 'all' needs a model that keeps prompted-feature statistics "
                              "(CASDAP(..., prompted_statistics=True))")
        kwargs = {} if evaluator is None else {"evaluator": evaluator}
        super().__init__(
            model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), train_mb_size=train_mb_size,
            train_epochs=train_epochs, eval_mb_size=eval_mb_size or train_mb_size, device=device,
            plugins=list(plugins or []), eval_every=eval_every, **kwargs,
        )
        self.current_lambda, self.sim_lambda = current_lambda, sim_lambda
        self.selection, self.restrict_to_task = selection, restrict_to_task
        self.prediction = prediction or ("restrict" if restrict_to_task else None)
        self.top_k = int(top_k)
        self.class_to_task: dict[int, int] = {}  # filled as experiences are trained
        self.mb_dap = None  # DAPOutput of the last minibatch
        self._keys_seeded = True  # set False at the start of every training experience
        self.mb_true_task: torch.Tensor | None = None
        self._tables: tuple[dict[int, int], torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._one_task_batches = False
        self._adapting = False

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
        super()._before_training_exp(**kwargs)

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

    def _restrict_to(self, logits: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Keep, per row, only the classes of ``task`` (others :data:`MASKED_LOGIT`), from the cached
        class mask: what :func:`casdap.models.dap.restrict_logits` gives, with no host sync."""
        splits = self._current_tables()[1]
        keep = torch.zeros(splits.shape[0], logits.shape[1], dtype=torch.bool, device=logits.device)
        width = min(splits.shape[1], logits.shape[1])
        keep[:, :width] = splits[:, :width].to(logits.device)
        return mask_logits(logits, keep[task.to(logits.device)])

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        if getattr(self.model, "query_mode", "frozen") == "adapted" and self.model.needs_adaptation:
            self.adapt_query(experience, eval_streams, **kwargs)
        super()._train_exp(experience, eval_streams, **kwargs)

    def make_optimizer(self, reset_optimizer_state: bool = False, **kwargs):
        """Avalanche's, except with the query's backbone copy: Avalanche finds a parameter's group by
        its name and cannot tell ``query_backbone.x`` from ``backbone.x``, so the runner's groups are
        kept as they are (no parameter is added while a run trains)."""
        if getattr(self.model, "query_backbone", None) is None:
            return super().make_optimizer(reset_optimizer_state=reset_optimizer_state, **kwargs)
        if reset_optimizer_state:
            self.optimizer.state = defaultdict(dict)
        self.optimized_param_id = dict(self.model.named_parameters())

    def adapt_query(self, experience, eval_streams=None, **kwargs) -> None:
        """APER's first session for the query: the template's gradient epochs over the experience with
        the query's backbone and linear head as the only trained parts (cross-entropy on the labels),
        then they are frozen; under ``torchrun`` rank 0's BatchNorm statistics are broadcast so every
        rank holds the same query. The learning-rate schedule restarts for DAP's epochs."""
        from casdap.continual.plugins import LRSchedulePlugin

        self.model.start_adaptation()
        self._adapting = True
        try:
            super()._train_exp(experience, eval_streams, **kwargs)
        except BaseException:
            self.model.cancel_adaptation()
            raise
        finally:
            self._adapting = False
        self.model.finish_adaptation()
        if dist.is_available() and dist.is_initialized():
            for b in self.model.query_net.buffers():
                dist.broadcast(b, src=0)
        schedule = self.find_plugin(LRSchedulePlugin)
        if schedule is not None:
            schedule.before_training_exp(self)

    # -- forward and loss ------------------------------------------------------------------
    def forward(self):
        if self.is_training and self._adapting:
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
        self.mb_dap, logits = self._predict(self.mb_x, self.mb_true_task)
        return logits

    def _predict(self, x: torch.Tensor, true_task: torch.Tensor) -> tuple[DAPOutput, torch.Tensor]:
        """The model's output (its logits: what the evaluation loss is over) and the predicted
        logits, under the selection and the task-adaptive prediction; each image on its own."""
        if self.prediction == "soft":
            scores, top, logits = self.model.forward_top_tasks(x, self.top_k)
            combined = self.soft_logits(scores, top, logits)
            return DAPOutput(logits=combined, key_idx=top[:, 0], pull=combined.new_zeros(())), combined
        oracle = self.oracle_task(true_task) if self.selection == "oracle" else None
        out = self.model(x, task_id=oracle, selection=self.selection)
        if self.prediction == "all":
            out = replace(out, logits=self.model.all_class_logits(out.feats))
            return out, out.logits
        return out, self.restrict(out.logits, out.key_idx) if self.prediction == "restrict" else out.logits

    def soft_logits(self, scores: torch.Tensor, top: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``log p(t) + log p(c | t)`` for each class ``c`` of each of an image's tasks ``top`` ``[B, k]``
        (logits ``[B, k, K]`` under each task's prompts); classes of no top task :data:`MASKED_LOGIT`."""
        splits = self._current_tables()[1].to(logits.device)
        keep = torch.zeros(splits.shape[0], logits.shape[2], dtype=torch.bool, device=logits.device)
        width = min(splits.shape[1], logits.shape[2])
        keep[:, :width] = splits[:, :width]
        trained = keep.any(1)[: scores.shape[1]]
        log_task = torch.log_softmax(scores.float().masked_fill(~trained[None], float("-inf")), dim=1)
        out = torch.full(logits.shape[::2], MASKED_LOGIT, dtype=torch.float32, device=logits.device)
        for j in range(top.shape[1]):
            t = top[:, j]
            member = keep[t]  # [B, K]
            log_class = torch.log_softmax(logits[:, j].float().masked_fill(~member, float("-inf")), dim=1)
            out = torch.where(member, log_task.gather(1, t[:, None]) + log_class, out)
        return out

    # -- class statistics ------------------------------------------------------------------
    def _after_training_exp(self, **kwargs):
        if getattr(self.model, "query_statistics", False) or getattr(self.model, "prompted_statistics", False):
            self.statistics_pass()
        super()._after_training_exp(**kwargs)

    @torch.no_grad()
    def statistics_pass(self) -> None:
        """Add the class statistics of the task just trained: one pass over its training images with
        the evaluation transform (the images test queries look like: augmented views would widen every
        class's covariance with variation the test set never shows), each rank over its share of the
        training data, summed over ranks; then the model refits what it estimates from them."""
        from torch.utils.data import DataLoader

        from casdap.continual.benchmarks import clean_training_views

        # under torchrun the experience holds this rank's share already (benchmarks.shard)
        loader = DataLoader(self.experience.dataset.eval(), batch_size=self.eval_mb_size, shuffle=False,
                            num_workers=0)
        was_training = self.model.training
        self.model.eval()
        local = {n: tuple(torch.zeros_like(b) for b in bufs) for n, bufs in self.model.statistics_moments().items()}
        with clean_training_views():
            for batch in loader:
                x, y = batch[0].to(self.device), batch[1].to(self.device)
                for name, feats in self.model.statistics_features(x, self.current_task).items():
                    add_moments(*local[name], feats, y)
        sum_over_ranks([t for bufs in local.values() for t in bufs])
        self.model.add_statistics(local, [int(c) for c in self.experience.classes_in_this_experience],
                                  self.current_task)
        self.model.train(was_training)

    def oracle_task(self, true_task: torch.Tensor) -> torch.Tensor:
        """The true task of every image, for oracle selection; an image of a class no experience has
        trained has none, which is an error (one host sync, oracle evaluation only)."""
        if bool((true_task < 0).any()):
            raise CasdapError("oracle task selection: the batch holds images of classes no experience has trained "
                              "(they have no true task); evaluate only the tasks trained so far")
        return true_task

    def restrict(self, logits: torch.Tensor, key_idx: torch.Tensor) -> torch.Tensor:
        """Keep, per image, only the classes of the task its selected key stands for."""
        return restrict_logits(logits, key_idx, self.class_splits())

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
        if self.is_training and self._adapting:
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
        out, logits = self._predict(x, self.true_task(y))
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
                head = self.model.all_class_logits if self.prediction == "all" else self.model.head
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


class GradientFreeStrategy(CasdapStrategyMixin, SupervisedTemplate):
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

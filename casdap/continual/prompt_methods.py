"""L2P, DualPrompt and CODA-Prompt as Avalanche strategies, and the method base their modules share.

The model is the one prompted CAS-ViT of :mod:`casdap.models.prompt_pools` with the method's pool
(:mod:`casdap.models.prompt_sources`) in its source slot. Each strategy trains with the logits of classes
outside the current task masked (the papers' ``train_mask``), evaluates every image alone over the
classes trained so far (unless the labelled ``batch_majority`` option is chosen), keeps what a
resumed run needs (the class-to-task map) and keeps the rows of finished tasks bit-identical under
weight decay (:meth:`PromptStrategy.optimizer_step`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from casdap.continual.first_session import FirstSessionTraining
from casdap.continual.fusion import with_fusion
from casdap.continual.methods.base import Method, adapted_query_notes, fusion_notes, fusion_weight
from casdap.continual.prediction import prediction_mode
from casdap.continual.statistics_pass import StatisticsPassPlugin
from casdap.continual.strategy_mixin import CasdapStrategyMixin
from casdap.errors import CasdapError
from casdap.models.logit_mask import class_mask, mask_logits

__all__ = ["PROMPT_PREDICTIONS", "CODAPromptStrategy", "DualPromptStrategy", "L2PStrategy", "PromptMethod",
           "PromptStrategy"]

# the prediction modes a learned-prompt method has (casdap.continual.prediction): the trained head, or
# the head over every seen class on class statistics of the prompted features
PROMPT_PREDICTIONS: tuple[str | None, ...] = (None, "all")


class PromptStrategy(CasdapStrategyMixin, FirstSessionTraining, SupervisedTemplate):
    """The prompt-pool model (:class:`casdap.models.prompt_pools.PromptPoolModel`) as an Avalanche strategy.

    Loss in training: cross-entropy over the current task's classes (others masked), minus
    ``pull_lambda`` times the model's key pull, plus ``ortho_lambda`` times its orthogonality
    penalty. Evaluation: logits over the classes trained so far (others masked); ``selection``
    (``per_image``; ``batch_majority`` or ``oracle`` where the model has them) says how the model
    chooses its prompts. The training batches must hold the current task only (no replay).

    ``prediction``: None scores with the trained head; ``all`` with the head over every seen class
    that the model refits on class statistics of its prompted features (``prompted_statistics``),
    which one pass over each task's training images adds at the task's end
    (:mod:`casdap.continual.statistics_pass`). ``fusion_weight`` (None: unfused) fuses either with the
    query's class Gaussians (:mod:`casdap.continual.fusion`; a model built with ``fusion=True``).

    With an adapted query (the model's ``query_mode``) the first experience begins with the first
    session, as CAS-DAP's: ``train_epochs`` epochs of the query's backbone and a linear head on the
    task's labels (the optimizer's adaptation groups; the schedule restarted after), then that backbone
    is frozen for good and the method's own training of the task follows.
    """

    def __init__(self, *, model: nn.Module, optimizer: torch.optim.Optimizer, train_mb_size: int = 128,
                 train_epochs: int = 5, eval_mb_size: int | None = None, device: str | torch.device = "cpu",
                 plugins: Sequence | None = None, evaluator: EvaluationPlugin | None = None,
                 pull_lambda: float = 0.1, ortho_lambda: float = 0.0, selection: str = "per_image",
                 prediction: str | None = None, fusion_weight: float | None = None, eval_every: int = -1) -> None:
        selection = str(selection).lower()
        if selection not in model.selections:
            raise CasdapError(f"{type(self).__name__}: selection must be one of {', '.join(model.selections)}, "
                              f"got '{selection}'")
        mode = with_fusion(prediction_mode(prediction), fusion_weight)
        if mode.name not in PROMPT_PREDICTIONS:
            raise CasdapError(f"{type(self).__name__}: prediction must be None (the trained head) or all, "
                              f"got '{prediction}'")
        mode.check(model, selection, 1)
        kwargs = {} if evaluator is None else {"evaluator": evaluator}
        super().__init__(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
                         train_mb_size=train_mb_size, train_epochs=train_epochs,
                         eval_mb_size=eval_mb_size or train_mb_size, device=device, plugins=list(plugins or []),
                         eval_every=eval_every, **kwargs)
        self.pull_lambda, self.ortho_lambda, self.selection = float(pull_lambda), float(ortho_lambda), selection
        self.class_to_task: dict[int, int] = {}
        self.mb_dap = None  # the model's output of the last minibatch (key_idx: TaskSelectionAccuracy reads it)
        self.mb_true_task: torch.Tensor | None = None
        self.prediction_mode = mode  # casdap.continual.prediction: its head scores the prompted features
        self.plugins.insert(0, StatisticsPassPlugin())  # first: before every other plugin's callbacks

    @property
    def current_task(self) -> int:
        return int(self.experience.current_experience)

    def _before_training_exp(self, **kwargs):
        t = self.current_task
        if t >= self.model.num_tasks:
            raise CasdapError(f"experience {t}: the model was built for {self.model.num_tasks} tasks "
                              "(CONTINUAL.N_TASKS)")
        from avalanche.training.plugins import ReplayPlugin

        if self.find_plugin(ReplayPlugin) is not None:
            raise CasdapError(f"{type(self).__name__} trains each batch under the current task's classes (and "
                              "prompts): a ReplayPlugin's stored samples of earlier tasks would be trained as the "
                              "current task's")
        for c in self.experience.classes_in_this_experience:
            self.class_to_task[int(c)] = t
        self.model.start_task(t)
        super()._before_training_exp(**kwargs)

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        if getattr(self.model, "needs_adaptation", False):
            from casdap.continual.plugins import LRSchedulePlugin

            self.adapt_first_session(lambda: SupervisedTemplate._train_exp(self, experience, eval_streams, **kwargs))
            schedule = self.find_plugin(LRSchedulePlugin)
            if schedule is not None:
                schedule.before_training_exp(self)
        super()._train_exp(experience, eval_streams, **kwargs)

    def make_optimizer(self, reset_optimizer_state: bool = False, **kwargs):
        """Avalanche's, except with an adapted query: then the runner's groups are kept (the backbone's
        at its own rate; :meth:`keep_optimizer_groups`)."""
        if getattr(self.model, "query_mode", "frozen") != "adapted":
            return super().make_optimizer(reset_optimizer_state=reset_optimizer_state, **kwargs)
        self.keep_optimizer_groups(self.model.named_parameters(), reset_optimizer_state)

    # -- tables --------------------------------------------------------------------------------
    def _keep(self, classes, width: int, device) -> torch.Tensor:
        return class_mask(classes, width).to(device) if classes else torch.zeros(width, dtype=torch.bool, device=device)

    def true_task(self, y: torch.Tensor) -> torch.Tensor:
        size = max(self.class_to_task, default=0) + 1
        table = torch.full((size,), -1, dtype=torch.long)
        for c, t in self.class_to_task.items():
            table[c] = t
        table = table.to(y.device)
        return torch.where(y < size, table[y.clamp(max=size - 1)], -1)

    def seen_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits over the classes trained so far (others :data:`~casdap.models.logit_mask.MASKED_LOGIT`)."""
        return mask_logits(logits, self._keep(list(self.class_to_task), logits.shape[1], logits.device))

    @property
    def keeps_statistics(self) -> bool:
        return bool(getattr(self.model, "prompted_statistics", False) or getattr(self.model, "query_statistics",
                                                                                 False))

    def scores(self, out) -> torch.Tensor:
        """Class scores of a model output under the prediction mode: the trained head's logits, or the
        head over every seen class on the prompted features."""
        return out.logits if self.prediction_mode.name is None else self.prediction_mode.head(self.model)(out.feats)

    # -- forward and loss ----------------------------------------------------------------------
    def forward(self):
        if self.is_training and self.adapting:
            return self.model.adaptation_logits(self.mb_x)
        if self.is_training:
            out = self.model(self.mb_x, task=self.current_task)
            self.mb_dap = out
            keep = self._keep(self.experience.classes_in_this_experience, out.logits.shape[1], out.logits.device)
            return mask_logits(out.logits, keep)
        self.mb_true_task = self.true_task(self.mb_y)
        self.mb_dap = self._output(self.mb_x, self.mb_true_task)
        return self.prediction_mode.fuse(self, self.mb_x, self.mb_dap, self.seen_logits(self.scores(self.mb_dap)))

    def _output(self, x: torch.Tensor, true_task: torch.Tensor):
        if self.selection == "oracle":
            if bool((true_task < 0).any()):
                raise CasdapError("oracle task selection: the batch holds images of classes no experience has trained")
            return self.model(x, task=true_task)
        return self.model(x, selection=self.selection)

    def criterion(self):
        ce = F.cross_entropy(self.mb_output.float(), self.mb_y)
        if not self.is_training or self.adapting:
            return ce
        out = self.mb_dap
        return ce - self.pull_lambda * out.pull + self.ortho_lambda * out.penalty

    @torch.no_grad()
    def predict(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.model.eval()
        out = self._output(x, self.true_task(y))
        return self.prediction_mode.fuse(self, x, out, self.seen_logits(self.scores(out))), out.key_idx

    @torch.no_grad()
    def task_decomposition(self, logits: torch.Tensor, class_task: torch.Tensor,
                           true_task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A source with a task variable (DualPrompt's E-prompt): the selected task and the logits under
        the true task's prompts (an oracle pass for the images whose task was missed); a source without
        one: the task its predicted class implies (the mixin's)."""
        if not self.model.has_task:
            return super().task_decomposition(logits, class_task, true_task)
        out = self.mb_dap
        task = true_task.to(out.key_idx.device)
        within = self.scores(out).float().clone()
        missed = ((out.key_idx != task) & (task >= 0)).nonzero().squeeze(1)
        if len(missed):
            x = self.mb_x[missed.to(self.mb_x.device)]
            own = self.scores(self.model(x, task=task[missed]))
            within[missed.to(within.device)] = own.float().to(within.device)
        return out.key_idx, within

    # -- weight decay on what is frozen --------------------------------------------------------
    def optimizer_step(self):
        """The optimizer's step with the rows of finished tasks put back as they were (weight decay
        and the optimizer's moments from their own task would move them otherwise)."""
        frozen = self._frozen_rows()
        saved = [p.detach()[rows].clone() for p, rows in frozen]
        super().optimizer_step()
        with torch.no_grad():
            for (p, rows), value in zip(frozen, saved):
                p[rows] = value

    def _frozen_rows(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        earlier = sorted({t for t in self.class_to_task.values() if t < self.current_task})
        if not earlier:
            return []
        classes = sorted(c for c, t in self.class_to_task.items() if t < self.current_task)
        return [(p, r) for p, r in self.model.task_rows(earlier, classes) if p.requires_grad and len(r)]

    # -- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "class_to_task": dict(self.class_to_task)}

    def load_own_state(self, state: dict[str, Any], *, task_classes: Sequence, done: int) -> None:
        self.class_to_task = {int(c): int(t) for c, t in state["class_to_task"].items()}
        for t in sorted(set(self.class_to_task.values())):
            self.model.mark_trained(t)


class L2PStrategy(PromptStrategy):
    """L2P (Wang et al., CVPR 2022): a shared prompt pool, top-N by key. The pool, keys and gates
    after the first task are shared by every task, so only the head rows of finished tasks' classes
    are kept (nothing else is frozen, by design)."""


class CODAPromptStrategy(PromptStrategy):
    """CODA-Prompt (Smith et al., CVPR 2023): attention-weighted prompt components; the components,
    keys and attention vectors of finished tasks (and their classes' head rows) are kept."""


class DualPromptStrategy(PromptStrategy):
    """DualPrompt (Wang et al., ECCV 2022): G-prompts and one E-prompt per task. The E-prompt is the
    true task's in training and the inferred task's at test time; its task is the inferred task of the
    WTP/TII decomposition, and the E-prompts and keys of finished tasks are kept."""


class PromptMethod(Method):
    """What L2P, DualPrompt and CODA-Prompt share: the one prompted CAS-ViT
    (:class:`casdap.models.prompt_pools.PromptPoolModel`) with the method's prompt pool in its source
    slot (the ``prompt_source`` of its :data:`~casdap.continual.methods.METHODS` entry), the pool's
    options from ``MODEL.PROMPT`` (and the prompted stages, injection and selection of ``MODEL.DAP``),
    its trainable parameters at the base rate."""

    strategy_class: type[PromptStrategy] = PromptStrategy
    has_task = False  # a task per image (DualPrompt's E-prompt): its selection accuracy is recorded
    # the loss weights of MODEL.PROMPT the method has a term for (PULL_LAMBDA, ORTHO_LAMBDA); the
    # other weight multiplies a term that is 0 for this model, so it is not read
    loss_weights: tuple[str, ...] = ()

    def model_options(self, cfg) -> dict[str, Any]:
        """The method's own model arguments: its pool's options (``MODEL.PROMPT``), and DualPrompt's
        task inference."""
        raise NotImplementedError

    def build_model(self, cfg, num_classes):
        from casdap.continual.methods import prompt_source_of
        from casdap.dap_registry import normalize
        from casdap.models.build import build_backbone
        from casdap.models.prompt_pools import PromptPoolModel

        d = cfg.MODEL.DAP
        return PromptPoolModel(build_backbone(cfg, num_classes=0), int(num_classes),
                               num_tasks=int(cfg.CONTINUAL.N_TASKS), source=prompt_source_of(self.name),
                               stages=list(d.STAGES), injection=normalize(d.INJECTION),
                               prompt_last_block=d.PROMPT_LAST_BLOCK is not False,
                               **{**self.model_options(cfg), **self.pipeline_options(cfg)})

    def pipeline_options(self, cfg) -> dict[str, Any]:
        """The shared pipeline's settings the model takes (none at the defaults, so the model is built
        exactly as before): class statistics of the prompted features for prediction ``all``, and the
        adapted query (``MODEL.DAP.QUERY``, ``PROMPT_BACKBONE``). DualPrompt's task inference is its own
        (:meth:`model_options`)."""
        from casdap.dap_registry import normalize

        d = cfg.MODEL.DAP
        out: dict[str, Any] = {}
        if d.PREDICTION is not None and normalize(d.PREDICTION) == "all":
            out.update(prompted_statistics=True, all_class_head=normalize(d.ALL_CLASS_HEAD),
                       shrinkage=float(d.SHRINKAGE))
        if float(d.FUSION_WEIGHT) > 0:  # the query's class Gaussians, for fused prediction
            out.update(fusion=True, shrinkage=float(d.SHRINKAGE))
        if normalize(d.QUERY) != "frozen":
            out.update(query=normalize(d.QUERY), prompt_backbone=normalize(d.PROMPT_BACKBONE))
        return out

    def param_groups(self, cfg, model):
        lr = cfg.SOLVER.BASE_LR
        groups = [{"params": model.trainable_parameters(), "lr": lr}]
        backbone, head = model.adaptation_parameters()  # an adapted query: aper's first-session groups
        if backbone:
            groups += [{"params": backbone, "lr": lr * cfg.BASELINES.BACKBONE_LR_SCALE}, {"params": head, "lr": lr}]
        return groups

    def build_strategy(self, cfg, model, optimizer, plugins, **common):
        p = cfg.MODEL.PROMPT
        pull = p.PULL_LAMBDA if "PULL_LAMBDA" in self.loss_weights else 0.0
        ortho = p.ORTHO_LAMBDA if "ORTHO_LAMBDA" in self.loss_weights else 0.0
        return self.strategy_class(model=model, optimizer=optimizer, plugins=plugins, pull_lambda=pull,
                                   ortho_lambda=ortho, selection=cfg.MODEL.DAP.SELECTION.lower(),
                                   prediction=cfg.MODEL.DAP.PREDICTION, fusion_weight=fusion_weight(cfg), **common)

    def protocol_notes(self, cfg):
        selection = cfg.MODEL.DAP.SELECTION.lower()
        notes = []
        if selection == "batch_majority":
            what = "prompts" if not self.has_task else "E-prompt task"
            notes.append(f"Prompt selection: batch_majority (reference protocol: each test batch holds one task and "
                         f"votes on its {what})")
        elif selection == "oracle":
            notes.append("Prompt selection: oracle (the true task's E-prompt: a diagnostic, not a result)")
        notes += adapted_query_notes(cfg)
        if cfg.MODEL.DAP.PREDICTION == "all":
            notes.append(f"Prediction over every seen class ({cfg.MODEL.DAP.ALL_CLASS_HEAD} head on prompted-feature "
                         f"statistics, shrinkage {cfg.MODEL.DAP.SHRINKAGE})")
        notes += fusion_notes(cfg)
        return notes

    def run_fields(self, cfg):
        fields = {"selection": cfg.MODEL.DAP.SELECTION.lower()}
        if cfg.MODEL.DAP.PREDICTION:
            fields["prediction"] = cfg.MODEL.DAP.PREDICTION.lower()
        if fusion_weight(cfg) is not None:
            fields["fusion_weight"] = fusion_weight(cfg)
        return fields

    def eval_metrics(self):
        if not self.has_task:
            return []
        from casdap.continual.task_selection import TaskSelectionAccuracy

        return [TaskSelectionAccuracy()]

    def trainable_params(self, model):
        return sum(p.numel() for p in model.trainable_parameters())

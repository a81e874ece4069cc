"""The one prompted CAS-ViT of the prompt pools: L2P, DualPrompt and CODA-Prompt are its sources.

:class:`PromptPoolModel` runs the pipeline query -> task inference -> prompt source -> prediction
with one source slot, a pool of :data:`casdap.dap_registry.POOL_SOURCES` (``l2p``, ``dualprompt``,
``coda_prompt``; the contract is :class:`casdap.models.prompt_sources.pool.PoolSource`). Unlike DAP's
prompts (generated from each block's own input), a pool's prompts are learned parameters: a prompt
of length ``L`` for a block of ``C`` channels is ``L`` tokens of ``C``. The pool picks or composes
them per image from the query (the frozen, or adapted, backbone's pooled un-prompted features, as
CAS-DAP's query) by its own rule, and they enter the blocks of the prompted stages
(``MODEL.DAP.STAGES``) through the same injections as DAP's
(:class:`casdap.models.injection.PromptInjection`: ``kv``, ``attn``, ``pool``, behind
zero-initialised gates, so the untrained model is the frozen backbone). Stages before the first
prompted one are computed once for the query and the prompted pass. The gates are shared by all
tasks and train on the first task only (as DAP's).

The model owns the parts every pool shares: the query, the task inference of a pool with a task
variable (DualPrompt: its keys, or a task predictor on class statistics of the query), the
injections, the head, the kept class statistics and the head over every seen class. Checkpoints
from before the pools were sources (the pool's parameters at the model's top level, ``keys``,
``prompts.0``, ...) load into the source slot (``source.keys``, ...) unchanged.

Every forward returns :class:`PromptOutput`; the strategies are in :mod:`casdap.continual.prompt_methods`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from casdap import dap_defaults as D
from casdap.dap_registry import (
    INJECTION_NAMES,
    POOL_SOURCES,
    PROMPT_BACKBONE_NAMES,
    QUERY_NAMES,
    TASK_PREDICTORS,
    checked,
    load,
)
from casdap.errors import CasdapError
from casdap.models.casvit import CASViT
from casdap.models.class_statistics import ALL_CLASS_HEADS, check_shrinkage
from casdap.models.injection import PromptInjection, build_checked
from casdap.models.kept_statistics import KeptStatistics
from casdap.models.prompt_query import AdaptableQuery
from casdap.models.prompt_sources.pool import PoolSource
from casdap.models.prompt_state import check_layout, move_into_source
from casdap.models.task_inference import batch_majority, per_image

__all__ = ["PromptOutput", "PromptPoolModel"]


@dataclass
class PromptOutput:
    """One forward pass of a learned-prompt model."""

    logits: torch.Tensor  # [B, num_classes] over all classes; masking is the strategy's job
    key_idx: torch.Tensor | None  # [B] the selected task (DualPrompt's E-prompt), None for methods without one
    pull: torch.Tensor  # scalar: the key-pull term the loss subtracts (0 for CODA)
    penalty: torch.Tensor  # scalar: the orthogonality penalty the loss adds (CODA; 0 otherwise)
    selected: torch.Tensor | None = None  # [B, N] L2P's selected prompts
    feats: torch.Tensor | None = None  # [B, C] the prompted features the logits come from
    query: torch.Tensor | None = None  # [B, C] the query the prompts were chosen by (fused prediction reads it)


class PromptPoolModel(AdaptableQuery, KeptStatistics, nn.Module):
    """The frozen backbone, a prompt pool (``source``), one :class:`PromptInjection` per prompted block
    and a linear head.

    ``source``: a name of :data:`casdap.dap_registry.POOL_SOURCES`, built once as
    ``Pool(block_dims, num_features, num_tasks, **source_options)`` (``l2p``: ``pool_size``,
    ``top_n``, ``length``; ``dualprompt``: ``length``, ``g_length``, ``g_blocks``; ``coda_prompt``:
    ``components``, ``length``). ``task_predictor``: for a pool with a task variable, how the
    test-time task is inferred: ``keys`` (the pool's own) or a predictor of
    :data:`casdap.dap_registry.TASK_PREDICTORS` estimated from class statistics of the query
    (``gaussian``, ``lda``, ``head``; refitted after each task, ``shrinkage`` as the all-class head's),
    which then replaces the keys (no pull: they stay as built).
    ``prompted_statistics``: keep class statistics of the prompted features (each training image under
    the prompts the model chooses for it; with a task variable, its true task's) and refit the head
    over every seen class ``all_class_head`` on them (``shrinkage``), for prediction ``all``.
    ``fusion``: keep the query's class Gaussians (``shrinkage``) for fused prediction.
    ``fusion``: keep the query's class Gaussians (``shrinkage``) for fused prediction.
    ``query="adapted"``: the query comes from a backbone trained with a linear head on the first task,
    then frozen for good (:class:`~casdap.models.first_session.FirstSessionModel`, as CAS-DAP's); a
    copy of the backbone unless ``prompt_backbone="adapted"`` runs the prompted pass on it too.
    ``blocks``: the prompted blocks in order, as ``(stage, index in stage)``.
    """

    def __init__(self, backbone: CASViT, num_classes: int, *, num_tasks: int, source: str,
                 stages: Sequence[int] = D.STAGES, injection: str = D.INJECTION, prompt_last_block: bool = True,
                 task_predictor: str = D.TASK_PREDICTOR, prompted_statistics: bool = False,
                 all_class_head: str = "lda", shrinkage: float = 1.0, query: str = D.QUERY,
                 prompt_backbone: str = D.PROMPT_BACKBONE, fusion: bool = False, **source_options) -> None:
        super().__init__()
        stages = sorted(set(int(s) for s in stages))
        n_stages = len(backbone.layers)
        if not stages or stages[0] < 0 or stages[-1] >= n_stages:
            raise CasdapError(f"stages must name stages 0..{n_stages - 1} of the backbone, got {list(stages)}")
        if num_tasks < 1 or num_classes < 1:
            raise CasdapError(f"a prompt model needs num_tasks >= 1 and num_classes >= 1, got {num_tasks}, "
                              f"{num_classes}")
        injection = checked("injection", injection, INJECTION_NAMES)
        self.source_name = checked("prompt pool source", source, POOL_SOURCES)
        source_cls: type[PoolSource] = load("prompt pool source", POOL_SOURCES, source)
        predictor = checked("task_predictor", task_predictor, TASK_PREDICTORS)
        if predictor != "keys" and not source_cls.has_task:
            raise CasdapError(f"prompt source {self.source_name} has no task variable: task inference "
                              f"(task_predictor '{predictor}') is not one of its parts")
        self.backbone = backbone.requires_grad_(False)
        backbone.eval()
        self.num_classes, self.num_tasks, self.stages = int(num_classes), int(num_tasks), tuple(stages)
        self.num_features = backbone.num_features
        self.random_init = bool(getattr(backbone, "random_init", False))
        last = n_stages - 1
        self.blocks = [(s, i) for s in stages
                       for i in range(backbone.layers[s] - (s == last and not prompt_last_block))]
        if not self.blocks:
            raise CasdapError("no block is prompted (the stages hold only the unprompted last block)")
        self.block_dims = [backbone.embed_dims[s] for s, _ in self.blocks]
        self.injections = nn.ModuleList(PromptInjection(c, injection) for c in self.block_dims)
        self.head = nn.Linear(self.num_features, num_classes)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        # which tasks have started training (a buffer: saved with the model, so resumed runs have it)
        self.register_buffer("trained", torch.zeros(num_tasks, dtype=torch.bool))
        self.all_class_head = checked("all_class_head", all_class_head, ALL_CLASS_HEADS)
        query_layout = None if predictor == "keys" else load("task_predictor", TASK_PREDICTORS,
                                                                    predictor).second_moments
        self.keep_statistics(num_classes, self.num_features, query=query_layout,
                             prompted=bool(prompted_statistics), shrinkage=check_shrinkage(shrinkage), fusion=fusion)
        self.query_mode = checked("query", query, QUERY_NAMES)
        self.prompt_backbone = checked("prompt_backbone", prompt_backbone, PROMPT_BACKBONE_NAMES)
        if self.prompt_backbone == "adapted" and self.query_mode != "adapted":
            raise CasdapError("prompt_backbone 'adapted' runs the prompts on the query's adapted backbone: "
                              "it needs query 'adapted'")
        self.query_backbone: nn.Module | None = None
        self._adapting = False
        # the source slot, then the task predictor, then the adapted query: the random draws in this order
        self.source: PoolSource = build_checked(f"prompt source {self.source_name}", source_cls,
                                                (self.block_dims, self.num_features, self.num_tasks), source_options)
        self.task_predictor = None
        if predictor != "keys":
            self.task_predictor = load("task_predictor", TASK_PREDICTORS, predictor)(
                num_tasks, self.num_features, num_classes=self.num_classes, shrinkage=self.shrinkage)
            self.share_query_gaussians("task_predictor")
        self._init_query()
        self.register_load_state_dict_pre_hook(_checkpoint_filter)

    @property
    def selections(self) -> tuple[str, ...]:
        """The prompt selections the source accepts."""
        return self.source.selections

    @property
    def has_task(self) -> bool:
        """Whether the source has a task variable (DualPrompt's E-prompt): a task is inferred per image."""
        return self.source.has_task

    # -- task inference -------------------------------------------------------------------------
    def task_scores(self, query: torch.Tensor) -> torch.Tensor:
        """Each task's score for each query (keys: the source's, the cosine to each task's key); tasks
        not trained yet score below any other."""
        if self.task_predictor is not None:
            return self.task_predictor.selectable(self.task_predictor(query))
        return self.source.task_scores(query).masked_fill(~self.trained, -2.0)

    def fit_task_predictor(self, stats) -> None:
        self.task_predictor.fit(stats)

    def _task(self, query: torch.Tensor, task: int | torch.Tensor | None, selection: str) -> torch.Tensor:
        """The task of every image ``[B]``: the given one (training, oracle), else inferred by ``selection``."""
        if task is None:
            if selection == "oracle":
                raise CasdapError("oracle selection needs the true task of every image")
            scores = self.task_scores(query).detach()
            return batch_majority(scores) if selection == "batch_majority" else per_image(scores)
        if torch.is_tensor(task):
            return task.to(query.device).long()
        return torch.full((len(query),), int(task), dtype=torch.long, device=query.device)

    def block_tokens(self, query: torch.Tensor, task: int | torch.Tensor | None, selection: str) -> tuple[
            list[torch.Tensor], torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Raw tokens ``[B, N_b, C_b]`` of every prompted block, the selected task ``[B]`` (or None),
        the pull term, the penalty and the selected prompts (or None). ``task``: the task of every
        image (training, oracle), else chosen by ``selection``."""
        selection = checked("selection", selection, self.selections)
        idx = self._task(query, task, selection) if self.has_task else None
        out = self.source(query, idx, selection, self.trained)
        pull = out.pull if self.task_predictor is None else query.new_zeros(())
        return out.tokens, idx, pull, out.penalty, out.selected

    def task_rows(self, tasks: Sequence[int], classes: Sequence[int]) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, rows along its first axis) of finished ``tasks`` that must not change while
        later tasks train: the head rows of their ``classes`` and the source's own."""
        cls = torch.as_tensor(list(classes), dtype=torch.long, device=self.head.weight.device)
        return [(self.head.weight, cls), (self.head.bias, cls), *self.source.task_rows(tasks)]

    # -- tasks, modes, parameters -----------------------------------------------------------
    def mark_trained(self, task: int) -> None:
        self.trained[int(task)] = True
        if self.task_predictor is not None:
            self.task_predictor.mark_trained(task)

    def start_task(self, task: int) -> None:
        """Task ``task`` starts training: it can be selected from now on; after the first task the
        injection gates stop changing."""
        self.mark_trained(task)
        if task >= 1:
            for inj in self.injections:
                for g in inj.gates():
                    g.requires_grad_(False)
                    g.grad = None
        self.source.start_task(task)

    def train(self, mode: bool = True) -> PromptPoolModel:
        super().train(mode)
        self.backbone.eval()
        if self.query_backbone is not None:
            self.query_backbone.eval()
        if self._adapting:
            self.query_net.train(mode)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The method's own trainable parameters (never a backbone's, nor the first session's head)."""
        skip = ("backbone.", "query_backbone.", "adapt_head.")
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith(skip)]

    # -- passes -----------------------------------------------------------------------------
    def _prefix(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_to_stage(x, self.stages[0])

    def _query_from(self, h: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_from_stage(h, self.stages[0])

    def _prompted_from(self, h: torch.Tensor, tokens: list[torch.Tensor]) -> torch.Tensor:
        position = {where: j for j, where in enumerate(self.blocks)}

        def run_block(s: int, i: int, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
            j = position.get((s, i))
            return block(x) if j is None else self.injections[j].forward_tokens(block, x, tokens[j])

        return self.backbone.forward_from_stage(h, self.stages[0], run_block)

    def forward_query(self, x: torch.Tensor) -> torch.Tensor:
        """The query alone: pooled un-prompted features of the frozen (or adapted) backbone ``[B, C]``."""
        with torch.no_grad():
            return self.query_net.forward_pooled(x)

    def forward(self, x: torch.Tensor, task: int | torch.Tensor | None = None,
                selection: str = D.SELECTION) -> PromptOutput:
        if self.backbone.training or (self.query_backbone is not None and self.query_backbone.training):
            self.backbone.eval()  # its BatchNorm statistics must not move
            if self.query_backbone is not None:
                self.query_backbone.eval()
        with torch.no_grad():
            h = self._prefix(x)
            query = self._query(x, h)
        tokens, key_idx, pull, penalty, selected = self.block_tokens(query, task, selection)
        feats = self._prompted_from(h, tokens)
        return PromptOutput(self.head(feats), key_idx, pull, penalty, selected, feats, query)

    # -- class statistics (the rest: casdap.models.kept_statistics.KeptStatistics) ------------
    @torch.no_grad()
    def statistics_features(self, x: torch.Tensor, task: int) -> dict[str, torch.Tensor]:
        """The features each kept statistic is over, for training images ``x`` of task ``task``: the
        pooled features under the prompts the model chooses for them (per image; a method with a task
        variable takes the true task's)."""
        h = self._prefix(x)
        query = self._query(x, h)
        out = {"query": query} if self.query_statistics else {}
        if self.prompted_statistics:
            out["prompted"] = self._prompted_from(h, self.block_tokens(query, int(task), "per_image")[0])
        return out

    def forward_with_task(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Logits of every image under the prompts of a given task ``[B]`` (DualPrompt's oracle pass)."""
        return self(x, task=task).logits


    # -- checkpoints ----------------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """torch's, except that a checkpoint made with other parts of the pipeline (a strict load) is
        one clear error (:class:`casdap.models.prompt_state.LayoutMismatch`), not a list of missing keys."""
        if strict:
            check_layout(state_dict, "", self.state_dict())
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _checkpoint_filter(model: PromptPoolModel, state_dict: dict, prefix: str, *args) -> None:
    """Older layouts load: the pool's parameters at the model's top level move into the source slot."""
    move_into_source(state_dict, prefix, model.source.state_dict())

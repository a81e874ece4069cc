"""CAS-DAP: domain-adaptive prompts (DAP, Jung et al., ICCV 2023) generated inside CAS-ViT blocks.

A frozen CAS-ViT computes a query per image (its pooled, un-prompted final features). A task
predictor scores every task for the query (DAP's key pool: the cosine to the nearest of the
task's ``KEYS_PER_TASK`` keys; :mod:`casdap.models.task_inference`), a selection reduces the
scores to one task per image, and the task's index picks a task embedding. In every block of the
prompted stages a prompt source (DAP's :class:`PromptGenerator`; :mod:`casdap.models.prompt_sources`)
turns the block's own input map into ``NUM_DAP_TOKENS`` prompt tokens, and a :class:`PromptedBlock`
lets those tokens take part in the block's own additive token mixer. Every prompt contribution
passes through a zero-initialised gate, so the untrained model is exactly the frozen backbone. See
``docs/dap_on_casvit.md`` for the argument behind each choice.

Predictors, selections and prompt sources are looked up by name in :mod:`casdap.dap_registry`;
names are compared lower-case. Defaults are DAP's (:mod:`casdap.dap_defaults`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from casdap import dap_defaults as D
from casdap.dap_registry import (
    ALL_CLASS_HEAD_NAMES,
    PROMPT_BACKBONE_NAMES,
    PROMPT_SOURCES,
    QUERY_NAMES,
    SELECTION_NAMES,
    TASK_PREDICTORS,
    block_sources,
    checked,
    load,
    normalize,
    refuse_pool,
)
from casdap.dap_registry import SELECTIONS as SELECTION_REDUCERS
from casdap.errors import CasdapError
from casdap.models.casvit import CASViT
from casdap.models.class_statistics import ClassStatistics, check_shrinkage
from casdap.models.injection import INJECTIONS, PromptedBlock, PromptInjection, build_checked
from casdap.models.kept_statistics import KeptStatistics
from casdap.models.logit_mask import MASKED_LOGIT, mask_logits, task_class_masks
from casdap.models.prompt_query import AdaptableQuery
from casdap.models.prompt_sources import TOKEN_GRID, PromptGenerator
from casdap.models.prompt_sources.groups import TaskGroups
from casdap.models.task_inference import TaskPredictor, oracle, task_index

__all__ = [
    "INJECTIONS",
    "MASKED_LOGIT",
    "SELECTIONS",
    "TOKEN_GRID",
    "CASDAP",
    "DAPOutput",
    "PromptGenerator",
    "PromptInjection",
    "PromptedBlock",
    "restrict_logits",
]

SELECTIONS = SELECTION_NAMES


@dataclass
class DAPOutput:
    """What one CAS-DAP forward pass returns."""

    logits: torch.Tensor  # [B, num_classes] over all classes; masking is the strategy's job
    key_idx: torch.Tensor  # [B] long: the selected task (its keys' group = its task-embedding row) per image
    pull: torch.Tensor  # scalar: the task predictor's pull term (keys: mean cosine to the selected task's nearest key)
    feats: torch.Tensor | None = None  # [B, C] the prompted features the logits come from
    query: torch.Tensor | None = None  # [B, C] the query the task was inferred from (fused prediction reads it);
    # None from a training pass that skipped it (CASDAP.reads_query)


def restrict_logits(
    logits: torch.Tensor, key_idx: torch.Tensor, class_splits: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Keep, per image, only the classes of the task its key selected (DAP's ImageNet-R option).

    ``class_splits[t]`` lists task t's classes (empty for a task not trained yet). Other logits
    become :data:`MASKED_LOGIT`. The mask is built on the CPU and moved once; a ``key_idx`` past the
    splits fails in the indexing (no check here: reading it would wait for the device).
    """
    keep = task_class_masks(class_splits, logits.shape[1]).to(logits.device)
    return mask_logits(logits, keep[key_idx.to(logits.device)])


class CASDAP(AdaptableQuery, KeptStatistics, nn.Module):
    """Frozen CAS-ViT + task predictor, task embeddings, per-block prompt sources and a linear head.

    The backbone is frozen and always in eval mode (its BatchNorm statistics never change, even
    when this wrapper is in train mode). Stages before the first prompted stage are computed once
    and shared by the query pass and the prompted pass. Every argument but ``backbone`` and
    ``num_classes`` defaults to DAP's setting (:mod:`casdap.dap_defaults`); names (injection,
    prompt source, task predictor, selection) are compared lower-case.
    """

    def __init__(
        self,
        backbone: CASViT,
        num_classes: int,
        *,
        num_tasks: int = D.NUM_TASKS,
        num_tokens: int = D.NUM_TOKENS,
        task_emb_dim: int = D.TASK_EMB_DIM,
        stages: Sequence[int] = D.STAGES,
        injection: str = D.INJECTION,
        keys_per_task: int = D.KEYS_PER_TASK,
        num_task_embeddings: int | None = None,
        prompt_last_block: bool = D.PROMPT_LAST_BLOCK,
        channel_mix: bool = D.CHANNEL_MIX,
        task_generators: bool = D.TASK_GENERATORS,
        prompt_source: str = D.PROMPT_SOURCE,
        task_predictor: str = D.TASK_PREDICTOR,
        shrinkage: float | None = None,
        prompted_statistics: bool = False,
        query: str = D.QUERY,
        prompt_backbone: str = D.PROMPT_BACKBONE,
        all_class_head: str = D.ALL_CLASS_HEAD,
        fusion: bool = False,
    ) -> None:
        super().__init__()
        stages = sorted(set(int(s) for s in stages))
        n_stages = len(backbone.layers)
        if not stages or stages[0] < 0 or stages[-1] >= n_stages:
            raise CasdapError(f"stages must name stages 0..{n_stages - 1} of the backbone, got {list(stages)}")
        num_task_embeddings = num_tasks if num_task_embeddings is None else num_task_embeddings
        if num_tasks < 1 or num_task_embeddings < num_tasks:
            raise CasdapError(
                f"num_task_embeddings ({num_task_embeddings}) must be at least num_tasks ({num_tasks}) and "
                "num_tasks at least 1: every task indexes one task embedding"
            )
        if num_tokens < 0:
            raise CasdapError(f"num_tokens must be 0 (prompts off) or more, got {num_tokens}")
        if keys_per_task < 1:
            raise CasdapError(f"keys_per_task must be at least 1, got {keys_per_task}")
        if num_classes < 1:
            raise CasdapError(f"the DAP head needs num_classes >= 1, got {num_classes}")
        injection = checked("injection", injection, INJECTIONS)
        query = checked("query", query, QUERY_NAMES)
        self.all_class_head = checked("all_class_head", all_class_head, ALL_CLASS_HEAD_NAMES)
        prompt_backbone = checked("prompt_backbone", prompt_backbone, PROMPT_BACKBONE_NAMES)
        if prompt_backbone == "adapted" and query != "adapted":
            raise CasdapError("prompt_backbone 'adapted' runs the prompts on the query's adapted backbone: "
                              "it needs query 'adapted'")
        predictor_cls = load("task_predictor", TASK_PREDICTORS, task_predictor)
        # Reducers resolved once: the forward pass only looks them up (graph capture sees no import).
        self._selections = {name: load("selection", SELECTION_REDUCERS, name) for name in SELECTION_NAMES}
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(False)
        backbone.eval()
        self.num_classes = num_classes
        self.num_tasks = num_tasks
        self.stages = tuple(stages)
        self.injection = injection
        self.num_features = backbone.num_features
        self.random_init = bool(getattr(backbone, "random_init", False))  # for labelling run outputs

        # Without prompts in the very last block (DAP's reference for ImageNet-R), that block runs as is.
        # With no prompt tokens (the prompts-off ablation) no block is prompted: keys, task embeddings
        # and head train as usual, and the features are the frozen backbone's.
        last = n_stages - 1
        self.prompt_last_block = bool(prompt_last_block)
        # A source that makes no prompts (none) is the prompts-off ablation: no block is prompted.
        refuse_pool("prompt_source", prompt_source,
                    f"build casdap.models.prompt_pools.PromptPoolModel(..., source='{normalize(prompt_source)}')")
        self.prompt_source = checked("prompt_source", prompt_source, block_sources())
        makes_prompts = load("prompt_source", PROMPT_SOURCES, prompt_source).makes_prompts
        if not makes_prompts and (channel_mix or task_generators):
            raise CasdapError(f"prompt source {self.prompt_source} makes no prompts: channel_mix and "
                              "task_generators are options of a generator (prompt source dap)")
        num_tokens = num_tokens if makes_prompts else 0
        self.num_tokens = int(num_tokens)
        self.task_generators = bool(task_generators) and num_tokens > 0
        self.dap_blocks = nn.ModuleDict(
            {
                str(s): nn.ModuleList(
                    PromptedBlock(backbone.embed_dims[s], num_tokens, task_emb_dim, injection, channel_mix,
                                  task_maps=num_tasks if task_generators else 0, source=prompt_source,
                                  num_tasks=num_tasks)
                    for _ in range(backbone.layers[s] - (s == last and not self.prompt_last_block))
                )
                for s in self.stages
            }
            if num_tokens > 0 else {}
        )
        # The task predictor works in the query's space (DAP: the key pool; state before the task
        # embeddings and head, so the random draws come in DAP's order).
        options: dict[str, Any] = {} if keys_per_task == D.KEYS_PER_TASK else {"keys_per_task": int(keys_per_task)}
        takes = inspect.signature(predictor_cls).parameters
        if "num_classes" in takes:  # predictors estimated per class
            options["num_classes"] = int(num_classes)
        if shrinkage is not None and "shrinkage" in takes:  # else it is the all-class head's alone
            options["shrinkage"] = check_shrinkage(shrinkage)
        self.dap_task_predictor: TaskPredictor = build_checked(
            "task predictor", predictor_cls, (num_tasks, self.num_features), options)
        self.dap_task_emb = nn.Embedding(num_task_embeddings, task_emb_dim)
        self.head = nn.Linear(self.num_features, num_classes)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        # Class statistics of the query, for a predictor estimated from them, and of the true task's
        # prompted features, for the head over every seen class (prediction "all").
        needs = getattr(self.dap_task_predictor, "needs_statistics", False)
        self.keep_statistics(num_classes, self.num_features,
                             query=self.dap_task_predictor.second_moments if needs else None,
                             prompted=bool(prompted_statistics),
                             shrinkage=1.0 if shrinkage is None else check_shrinkage(shrinkage), fusion=fusion)
        self.share_query_gaussians("dap_task_predictor")
        # A prompted pass over images of several tasks runs each task's generator maps once per group
        # of its images (False: a gathered copy per image, the same prompts up to float rounding, slower).
        self.group_tasks = True
        # An adapted query (APER's first session): a backbone trained with a linear head on the first
        # task, then frozen for good; a copy when the prompted pass stays on the pretrained backbone.
        # Built last, so DAP's own random draws are the same with or without it.
        self.query_mode, self.prompt_backbone = query, prompt_backbone
        self.query_backbone: nn.Module | None = None
        self._adapting = False
        self._init_query()
        self.register_load_state_dict_pre_hook(_rename_old_keys)

    # -- task predictor ----------------------------------------------------------------------
    @property
    def dap_keys(self) -> nn.Parameter:
        """The key pool ``[num_tasks * keys_per_task, C]`` of the ``keys`` task predictor."""
        keys = getattr(self.dap_task_predictor, "keys", None)
        if not isinstance(keys, nn.Parameter):
            raise AttributeError(f"the task predictor {type(self.dap_task_predictor).__name__} has no key pool")
        return keys

    @property
    def keys_per_task(self) -> int:
        return int(getattr(self.dap_task_predictor, "keys_per_task", 1))

    def task_similarity(self, query: torch.Tensor) -> torch.Tensor:
        """``[B, num_tasks]``: the task predictor's score of every task for each query (keys: the
        cosine between the query and the nearest of the task's keys)."""
        return self.dap_task_predictor(query)

    def seed_keys(self, task: int, query: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Let the task predictor start task ``task`` from its first queries (keys: k-means++ seeding
        of the task's keys, see :meth:`KeyTaskPredictor.seed`)."""
        self.dap_task_predictor.seed(task, query, generator)

    def mark_trained(self, task: int) -> None:
        """Task ``task`` starts training: its task can now be selected (before, it never is)."""
        self.dap_task_predictor.mark_trained(task)

    def fit_task_predictor(self, stats: ClassStatistics) -> None:
        """Hand per-class query statistics to the task predictor (:meth:`TaskPredictor.fit`)."""
        self.dap_task_predictor.fit(stats)

    # -- class statistics (the rest: casdap.models.kept_statistics.KeptStatistics) ------------
    @torch.no_grad()
    def statistics_features(self, x: torch.Tensor, task: int) -> dict[str, torch.Tensor]:
        """The features each kept statistic is over, for images ``x`` of task ``task``: the query, and
        the pooled features under the true task's prompts."""
        h = self._prefix(x)
        out = {}
        if self.query_statistics:
            out["query"] = self._query(x, h)
        if self.prompted_statistics:
            idx = task_index(task, h.shape[0], self.num_tasks, h.device)
            out["prompted"] = self._prompted_from(h, idx, int(task))
        return out

    @torch.no_grad()
    def forward_top_tasks(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each image under the prompts of its ``k`` best-scored tasks: the task scores ``[B, T]``, the
        tasks ``[B, k]`` (best first) and the head's logits under each ``[B, k, num_classes]``; ``k``
        prompted passes share one stem and one query pass."""
        h = self._prefix(x)
        predictor = self.dap_task_predictor
        scores = predictor.selectable(predictor(self._query(x, h)))  # untrained tasks never chosen
        top = scores.topk(int(k), dim=1).indices
        logits = torch.stack([self.head(self._prompted_from(h, top[:, j])) for j in range(top.shape[1])], 1)
        return scores, top, logits

    # -- modes and parameter groups ---------------------------------------------------------
    def train(self, mode: bool = True) -> CASDAP:
        super().train(mode)
        self.backbone.eval()
        if self.query_backbone is not None:
            self.query_backbone.eval()
        if self._adapting:
            self.query_net.train(mode)
        return self

    def freeze_token_axis(self) -> None:
        """After the first task: the token-axis maps and injection gates stop changing."""
        for block in self._prompted_blocks():
            for p in block.structure_parameters():
                p.requires_grad_(False)
                p.grad = None

    def task_rows(self, tasks: Sequence[int], classes: Sequence[int]) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, rows along its first axis) that belong to ``tasks`` (with ``classes``, their
        classes) alone: head rows, task embeddings, the predictor's and the prompt sources' own."""
        device = self.head.weight.device
        cls = torch.as_tensor(list(classes), dtype=torch.long, device=device)
        rows = [(self.head.weight, cls), (self.head.bias, cls),
                (self.dap_task_emb.weight, torch.as_tensor(list(tasks), dtype=torch.long, device=device))]
        rows += self.dap_task_predictor.task_rows(tasks)
        for block in self._prompted_blocks():
            rows += block.generator.task_rows(tasks)
        return [(p, r) for p, r in rows if p.requires_grad and len(r)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """DAP's own trainable parameters (never a backbone's, nor the query adaptation's)."""
        skip = ("backbone.", "query_backbone.", "adapt_head.")
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith(skip)]

    def _prompted_blocks(self) -> list[PromptedBlock]:
        return [b for blocks in self.dap_blocks.values() for b in blocks]

    # -- passes -----------------------------------------------------------------------------
    def _prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and the stages (with embeddings) before the first prompted stage."""
        return self.backbone.forward_to_stage(x, self.stages[0])

    def _query_from(self, h: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_from_stage(h, self.stages[0])

    def _prompted_from(self, h: torch.Tensor, key_idx: torch.Tensor, task: int | None = None) -> torch.Tensor:
        """Prompted features for tasks ``key_idx`` ``[B]``; ``task``: the one task of the whole batch
        when the caller knows it (a Python int), so per-task sources need no look at ``key_idx``."""
        task_emb = self.dap_task_emb(key_idx)
        task_idx = self._task_arg(key_idx) if task is None else task

        def run_block(s: int, i: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
            prompted = self.dap_blocks[str(s)] if str(s) in self.dap_blocks else ()
            return prompted[i](block, h, task_emb, task_idx) if i < len(prompted) else block(h)

        return self.backbone.forward_from_stage(h, self.stages[0], run_block)

    def _task_arg(self, key_idx: torch.Tensor) -> int | torch.Tensor | TaskGroups:
        """What the prompt sources get as the tasks ``key_idx`` ``[B]``: for sources that group by task
        (per-task generator maps), the one task of a one-task batch as an int, else the images grouped
        by task (one read back from the device per pass; :attr:`group_tasks` False gathers each image's
        maps instead, the slower form kept for comparison); for the others ``key_idx`` itself."""
        blocks = self._prompted_blocks()
        if not blocks or not blocks[0].generator.groups_by_task:
            return key_idx
        if not self.group_tasks:
            tasks = key_idx.unique()
            return tasks[0] if len(tasks) == 1 else key_idx
        groups = TaskGroups.of(key_idx, self.num_tasks)
        return groups.tasks[0] if len(groups) == 1 else groups

    def forward_query(self, x: torch.Tensor) -> torch.Tensor:
        """The query alone: pooled un-prompted features of the frozen (or adapted) backbone ``[B, C]``."""
        with torch.no_grad():
            return self.query_net.forward_pooled(x)

    def forward_prompted(self, x: torch.Tensor, key_idx: int | torch.Tensor) -> torch.Tensor:
        """Pooled prompted features ``[B, C]`` for given task indices (an int: one for all), from the image."""
        with torch.no_grad():
            h = self._prefix(x)
        idx = task_index(key_idx, h.shape[0], self.num_tasks, h.device)
        return self._prompted_from(h, idx, None if torch.is_tensor(key_idx) else int(key_idx))

    def reads_query(self, task_id: int | torch.Tensor | None) -> bool:
        """Whether a forward pass under ``task_id`` needs the query pass and the task predictor's scores.

        They select the task when none is given, and evaluation keeps the query for what reads
        :attr:`DAPOutput.query` (fused prediction). In training under the given task (the oracle) the
        only reader is the predictor's pull term, which the loss subtracts: DAP's keys train on it
        (``SIM_LAMBDA``); a predictor estimated from statistics (gaussian, lda, head) has none, and its
        statistics come from their own pass. There the query pass over the prompted stages, about a
        sixth of the step, is skipped: the pull is exactly zero either way and the pass draws nothing
        random, so the training is bit-identical."""
        return task_id is None or not self.training or self.dap_task_predictor.has_pull

    def forward(
        self, x: torch.Tensor, task_id: int | torch.Tensor | None = None, selection: str = D.SELECTION
    ) -> DAPOutput:
        """Logits, selected task per image and pull term.

        ``task_id`` (training, oracle): the task of every image, an int for a one-task batch (the
        cheapest: nothing is read back from the device) or a ``[B]`` long tensor of ids in
        ``0..num_tasks-1``. Without it the task predictor's scores are reduced by ``selection``
        (``per_image``, ``batch_majority``; ``oracle`` needs ``task_id``).
        """
        reduce = self._selections[checked("selection", selection, SELECTION_NAMES)]
        if self.backbone.training or (self.query_backbone is not None and self.query_backbone.training):
            self.backbone.eval()  # someone called backbone.train(); its BN statistics must not move
            if self.query_backbone is not None:
                self.query_backbone.eval()
        with torch.no_grad():
            h = self._prefix(x)
            query = self._query(x, h) if self.reads_query(task_id) else None
        if query is None:  # trained under the given task, with no pull term: nothing is scored
            key_idx = task_index(task_id, h.shape[0], self.num_tasks, h.device)
            pull = torch.zeros((), device=h.device)
        else:
            scores = self.dap_task_predictor(query)
            key_idx = reduce(self.dap_task_predictor.selectable(scores)) if task_id is None else oracle(scores, task_id)
            pull = self.dap_task_predictor.pull(scores, key_idx)
        feats = self._prompted_from(h, key_idx, None if task_id is None or torch.is_tensor(task_id) else int(task_id))
        return DAPOutput(logits=self.head(feats), key_idx=key_idx, pull=pull, feats=feats, query=query)


def _rename_old_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """State dicts saved before the task-predictor registry held the key pool as ``dap_keys``."""
    old, new = prefix + "dap_keys", prefix + "dap_task_predictor.keys"
    if old in state_dict and new not in state_dict:
        state_dict[new] = state_dict.pop(old)

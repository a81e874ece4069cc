"""Learned-prompt continual methods on the frozen CAS-ViT: L2P, DualPrompt and CODA-Prompt.

Unlike DAP's prompts (generated from each image's own block input), these prompts are learned
parameters: a prompt of length ``L`` for a block of ``C`` channels is ``L`` tokens of ``C``. Each
method picks or composes them per image from the query (the frozen backbone's pooled, un-prompted
features, as CAS-DAP's query) by its own rule, and they enter the blocks of the prompted stages
(``MODEL.DAP.STAGES``) through the same injections as DAP's (:class:`casdap.models.injection.PromptInjection`:
``kv``, ``attn``, ``pool``, behind zero-initialised gates, so the untrained model is the frozen
backbone). Stages before the first prompted one are computed once for the query and the prompted
pass. The gates are shared by all tasks and train on the first task only (as DAP's).

- :class:`L2PPrompts` (Wang et al., CVPR 2022): a pool of ``pool_size`` prompts with keys; each
  image takes the ``top_n`` prompts whose keys are nearest (cosine) to its query, and their tokens,
  concatenated (``top_n * length``), enter every prompted block. Pull: the mean over images of the
  sum of the selected keys' cosines. The pool is shared by all tasks: nothing is frozen by design.
- :class:`DualPromptPrompts` (Wang et al., ECCV 2022): shared G-prompts (``g_length`` tokens) in the
  first ``g_blocks`` prompted blocks, and one E-prompt (``length`` tokens) per task with a key in the
  later ones; the E-prompt is the true task's in training and the nearest key's at test time. Pull:
  the mean cosine between each query and its task's key. E-prompts and keys of past tasks are frozen.
- :class:`CODAPrompts` (Smith et al., CVPR 2023): ``components`` prompt components ``P_m`` with
  keys ``K_m`` and attention vectors ``A_m``; each image's prompt is ``sum_m alpha_m P_m`` with
  ``alpha_m = cos(q * A_m, K_m)``. The components are split evenly over the tasks: task ``t`` uses
  the slices of tasks ``0..t`` and trains only its own (earlier slices enter detached), and an
  orthogonality penalty ``||X X^T - I||^2`` (mean) on the used rows of ``P`` (per block), ``K`` and ``A``
  keeps the new components apart from the old ones.

Every model returns :class:`PromptOutput`; the strategies are in :mod:`casdap.continual.prompt_methods`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from casdap import dap_defaults as D
from casdap.dap_registry import INJECTION_NAMES, PROMPT_BACKBONE_NAMES, QUERY_NAMES, TASK_PREDICTORS, checked, load
from casdap.errors import CasdapError
from casdap.models.casvit import CASViT
from casdap.models.class_statistics import ALL_CLASS_HEADS, KeptStatistics, check_shrinkage
from casdap.models.injection import PromptInjection
from casdap.models.prompt_query import AdaptableQuery
from casdap.models.task_inference import batch_majority, per_image

__all__ = ["CODAPrompts", "DualPromptPrompts", "L2PPrompts", "PromptOutput", "PromptPoolModel",
           "batch_majority_top_n"]


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


def batch_majority_top_n(top: torch.Tensor, pool_size: int) -> torch.Tensor:
    """L2P's batch-wise prompt (``batchwise_prompt``): the ``N`` prompts chosen most often in the
    batch's per-image top-``N`` (ties: the lower index), the same ``[B, N]`` for every image."""
    counts = torch.bincount(top.flatten(), minlength=pool_size)
    order = torch.sort(counts, descending=True, stable=True).indices[: top.shape[1]]
    return order.sort().values.unsqueeze(0).expand_as(top)


def _ortho(x: torch.Tensor) -> torch.Tensor:
    """``mean((X X^T - I)^2)`` over the rows of ``x`` flattened to ``[M, -1]``."""
    x = x.flatten(1)
    gram = x @ x.t()
    return ((gram - torch.eye(len(x), device=x.device, dtype=x.dtype)) ** 2).mean()


class PromptPoolModel(AdaptableQuery, KeptStatistics, nn.Module):
    """The frozen backbone, one :class:`PromptInjection` per prompted block and a linear head.

    ``prompted_statistics``: keep class statistics of the prompted features (each training image under
    the prompts the model chooses for it; DualPrompt: its true task's E-prompt) and refit the head
    over every seen class ``all_class_head`` on them (``shrinkage``), for prediction ``all``.
    ``fusion``: keep the query's class Gaussians (``shrinkage``) for fused prediction.
    ``query="adapted"``: the query comes from a backbone trained with a linear head on the first task,
    then frozen for good (:class:`~casdap.models.first_session.FirstSessionModel`, as CAS-DAP's); a
    copy of the backbone unless ``prompt_backbone="adapted"`` runs the prompted pass on it too.
    A subclass calls :meth:`_init_query` last in its ``__init__``.

    A subclass turns the query (and the task, where it has one) into raw prompt tokens ``[B, N, C]``
    for every prompted block (:meth:`block_tokens`) and says which of its rows belong to which task
    (:meth:`task_rows`). ``blocks``: the prompted blocks in order, as ``(stage, index in stage)``.
    """

    def __init__(self, backbone: CASViT, num_classes: int, *, num_tasks: int, stages: Sequence[int] = D.STAGES,
                 injection: str = D.INJECTION, prompt_last_block: bool = True, prompted_statistics: bool = False,
                 all_class_head: str = "lda", shrinkage: float = 1.0, query: str = D.QUERY,
                 prompt_backbone: str = D.PROMPT_BACKBONE, query_statistics: bool = False,
                 fusion: bool = False) -> None:
        super().__init__()
        stages = sorted(set(int(s) for s in stages))
        n_stages = len(backbone.layers)
        if not stages or stages[0] < 0 or stages[-1] >= n_stages:
            raise CasdapError(f"stages must name stages 0..{n_stages - 1} of the backbone, got {list(stages)}")
        if num_tasks < 1 or num_classes < 1:
            raise CasdapError(f"a prompt model needs num_tasks >= 1 and num_classes >= 1, got {num_tasks}, "
                              f"{num_classes}")
        injection = checked("injection", injection, INJECTION_NAMES)
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
        self.keep_statistics(num_classes, self.num_features, query=query_statistics, prompted=bool(prompted_statistics),
                             shrinkage=check_shrinkage(shrinkage), fusion=fusion)
        self.query_mode = checked("query", query, QUERY_NAMES)
        self.prompt_backbone = checked("prompt_backbone", prompt_backbone, PROMPT_BACKBONE_NAMES)
        if self.prompt_backbone == "adapted" and self.query_mode != "adapted":
            raise CasdapError("prompt_backbone 'adapted' runs the prompts on the query's adapted backbone: "
                              "it needs query 'adapted'")
        self.query_backbone: nn.Module | None = None
        self._adapting = False

    # -- what a subclass defines -------------------------------------------------------------
    def block_tokens(self, query: torch.Tensor, task: int | torch.Tensor | None, selection: str) -> tuple[
            list[torch.Tensor], torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Raw tokens ``[B, N_b, C_b]`` of every prompted block, the selected task ``[B]`` (or None),
        the pull term, the penalty and the selected prompts (or None). ``task``: the task of every
        image (training, oracle), else chosen by ``selection``."""
        raise NotImplementedError

    def task_rows(self, tasks: Sequence[int], classes: Sequence[int]) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, rows along its first axis) of finished ``tasks`` that must not change while
        later tasks train: the head rows of their ``classes`` (and the method's own)."""
        cls = torch.as_tensor(list(classes), dtype=torch.long, device=self.head.weight.device)
        return [(self.head.weight, cls), (self.head.bias, cls)]

    # -- tasks, modes, parameters -----------------------------------------------------------
    def mark_trained(self, task: int) -> None:
        self.trained[int(task)] = True

    def start_task(self, task: int) -> None:
        """Task ``task`` starts training: it can be selected from now on; after the first task the
        injection gates stop changing."""
        self.mark_trained(task)
        if task >= 1:
            for inj in self.injections:
                for g in inj.gates():
                    g.requires_grad_(False)
                    g.grad = None

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

    # -- class statistics (the rest: casdap.models.class_statistics.KeptStatistics) -----------
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


def _uniform(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-1.0, 1.0))


class L2PPrompts(PromptPoolModel):
    """L2P: top-``top_n`` prompts of a shared pool by cosine of key and query (see the module)."""

    selections = ("per_image", "batch_majority")

    def __init__(self, backbone: CASViT, num_classes: int, *, num_tasks: int, pool_size: int = 10, top_n: int = 5,
                 length: int = 5, **kwargs) -> None:
        if not 1 <= top_n <= pool_size:
            raise CasdapError(f"L2P needs 1 <= top_n <= pool_size, got top_n {top_n}, pool_size {pool_size}")
        if length < 1:
            raise CasdapError(f"the prompt length must be at least 1, got {length}")
        super().__init__(backbone, num_classes, num_tasks=num_tasks, **kwargs)
        self.pool_size, self.top_n, self.length = int(pool_size), int(top_n), int(length)
        self.keys = _uniform(pool_size, self.num_features)
        self.prompts = nn.ParameterList(_uniform(pool_size, length, c) for c in self.block_dims)
        self._init_query()

    def block_tokens(self, query, task, selection):
        sim = F.normalize(query, dim=1) @ F.normalize(self.keys, dim=1).t()  # [B, M]
        top = sim.topk(self.top_n, dim=1).indices  # [B, N]
        if checked("selection", selection, self.selections) == "batch_majority":
            top = batch_majority_top_n(top, self.pool_size)
        pull = sim.gather(1, top).sum(1).mean()
        b = len(query)
        tokens = [p[top].reshape(b, self.top_n * self.length, -1) for p in self.prompts]
        return tokens, None, pull, sim.new_zeros(()), top


class DualPromptPrompts(PromptPoolModel):
    """DualPrompt: shared G-prompts in the first ``g_blocks`` prompted blocks, the selected task's
    E-prompt in the others (see the module).

    ``task_predictor``: how the test-time task is inferred: ``keys`` (DualPrompt's, the nearest key)
    or a predictor of :data:`casdap.dap_registry.TASK_PREDICTORS` estimated from class statistics of
    the query (``gaussian``, ``lda``, ``head``; refitted after each task, ``shrinkage`` as the all-class
    head's), which then replaces the keys (no pull: they stay as built)."""

    selections = ("per_image", "batch_majority", "oracle")

    def __init__(self, backbone: CASViT, num_classes: int, *, num_tasks: int, length: int = 5, g_length: int = 5,
                 g_blocks: int = 2, task_predictor: str = D.TASK_PREDICTOR, **kwargs) -> None:
        if length < 1 or g_length < 1:
            raise CasdapError(f"the prompt lengths must be at least 1, got E {length}, G {g_length}")
        predictor = checked("task_predictor", task_predictor, TASK_PREDICTORS)
        super().__init__(backbone, num_classes, num_tasks=num_tasks, query_statistics=predictor != "keys", **kwargs)
        if not 0 <= g_blocks < len(self.blocks):
            raise CasdapError(f"g_blocks must leave at least one of the {len(self.blocks)} prompted blocks for the "
                              f"E-prompts (0..{len(self.blocks) - 1}), got {g_blocks}")
        self.g_blocks, self.length, self.g_length = int(g_blocks), int(length), int(g_length)
        self.g_prompts = nn.ParameterList(_uniform(g_length, c) for c in self.block_dims[:g_blocks])
        self.e_prompts = nn.ParameterList(_uniform(num_tasks, length, c) for c in self.block_dims[g_blocks:])
        self.keys = _uniform(num_tasks, self.num_features)
        self.task_predictor = None
        if predictor != "keys":
            self.task_predictor = load("task_predictor", TASK_PREDICTORS, predictor)(
                num_tasks, self.num_features, num_classes=self.num_classes, shrinkage=self.shrinkage)
            self.share_query_gaussians("task_predictor")
        self._init_query()

    def mark_trained(self, task: int) -> None:
        super().mark_trained(task)
        if self.task_predictor is not None:
            self.task_predictor.mark_trained(task)

    def fit_task_predictor(self, stats) -> None:
        self.task_predictor.fit(stats)

    def task_scores(self, query: torch.Tensor) -> torch.Tensor:
        """Each task's score for each query (keys: the cosine to its key); tasks not trained yet score
        below any other."""
        if self.task_predictor is not None:
            return self.task_predictor.selectable(self.task_predictor(query))
        sim = F.normalize(query, dim=1) @ F.normalize(self.keys, dim=1).t()
        return sim.masked_fill(~self.trained, -2.0)

    def block_tokens(self, query, task, selection):
        b = len(query)
        sim = F.normalize(query, dim=1) @ F.normalize(self.keys, dim=1).t()
        if task is None:
            selection = checked("selection", selection, self.selections)
            if selection == "oracle":
                raise CasdapError("oracle selection needs the true task of every image")
            if self.task_predictor is None:
                scores = sim.detach().masked_fill(~self.trained, -2.0)
            else:
                scores = self.task_scores(query)
            idx = batch_majority(scores) if selection == "batch_majority" else per_image(scores)
        elif torch.is_tensor(task):
            idx = task.to(query.device).long()
        else:
            idx = torch.full((b,), int(task), dtype=torch.long, device=query.device)
        pull = sim.gather(1, idx[:, None]).mean() if self.task_predictor is None else sim.new_zeros(())
        tokens = [g.expand(b, -1, -1) for g in self.g_prompts] + [e[idx] for e in self.e_prompts]
        return tokens, idx, pull, sim.new_zeros(()), None

    def task_rows(self, tasks, classes):
        rows = super().task_rows(tasks, classes)
        t = torch.as_tensor(list(tasks), dtype=torch.long, device=self.keys.device)
        return rows + [(self.keys, t)] + [(e, t) for e in self.e_prompts]


class CODAPrompts(PromptPoolModel):
    """CODA-Prompt: an attention-weighted sum of prompt components per image (see the module)."""

    selections = ("per_image",)

    def __init__(self, backbone: CASViT, num_classes: int, *, num_tasks: int, components: int = 20,
                 length: int = 8, **kwargs) -> None:
        if length < 1:
            raise CasdapError(f"the prompt length must be at least 1, got {length}")
        if components < num_tasks or components % num_tasks:
            raise CasdapError(f"CODA-Prompt splits its components evenly over the tasks: components ({components}) "
                              f"must be a multiple of the number of tasks ({num_tasks})")
        super().__init__(backbone, num_classes, num_tasks=num_tasks, **kwargs)
        self.components, self.length, self.per_task = int(components), int(length), components // num_tasks
        d = self.num_features
        self.keys = nn.Parameter(nn.init.orthogonal_(torch.empty(components, d)))
        self.attention = nn.Parameter(nn.init.orthogonal_(torch.empty(components, d)))
        self.prompts = nn.ParameterList(
            nn.Parameter(nn.init.orthogonal_(torch.empty(components, length * c)).reshape(components, length, c))
            for c in self.block_dims)
        self.current = -1  # the task being trained (its slice trains, earlier ones are detached)
        self._init_query()

    def start_task(self, task: int) -> None:
        super().start_task(task)
        self.current = int(task)

    def _rows(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """The used rows of ``x``: those of every task started so far, earlier tasks' detached in training."""
        n_tasks = int(self.trained.sum()) if not training else self.current + 1
        end, start = n_tasks * self.per_task, (n_tasks - 1) * self.per_task
        if not training:
            return x[:end]
        return torch.cat([x[:start].detach(), x[start:end]])

    def block_tokens(self, query, task, selection):
        checked("selection", selection, self.selections)
        training = self.training and torch.is_grad_enabled() and self.current >= 0
        if not training and not bool(self.trained.any()):
            raise CasdapError("CODA-Prompt has no trained components yet (train a task first)")
        keys, att = self._rows(self.keys, training), self._rows(self.attention, training)
        q = F.normalize(query[:, None, :] * att[None], dim=2)  # [B, M, D]
        alpha = (q * F.normalize(keys, dim=1)[None]).sum(2)  # [B, M]
        prompts = [self._rows(p, training) for p in self.prompts]
        tokens = [torch.einsum("bm,mlc->blc", alpha, p) for p in prompts]
        zero = query.new_zeros(())
        penalty = zero
        if training:
            penalty = _ortho(keys) + _ortho(att) + sum(_ortho(p) for p in prompts)
        return tokens, None, zero, penalty, None

    def task_rows(self, tasks, classes):
        rows = super().task_rows(tasks, classes)
        device = self.keys.device
        r = torch.as_tensor([t * self.per_task + j for t in tasks for j in range(self.per_task)], dtype=torch.long,
                            device=device)
        return rows + [(self.keys, r), (self.attention, r)] + [(p, r) for p in self.prompts]

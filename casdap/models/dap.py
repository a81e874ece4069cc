"""CAS-DAP: domain-adaptive prompts (DAP, Jung et al., ICCV 2023) generated inside CAS-ViT blocks.

A frozen CAS-ViT computes a query per image (its pooled, un-prompted final features). The query
picks one of ``PROMPT_POOL`` tasks by its nearest key (cosine; each task owns ``KEYS_PER_TASK``
keys, one in DAP), and the task's index picks a task embedding. In every
block of the prompted stages a :class:`PromptGenerator` turns the block's own input map into
``NUM_DAP_TOKENS`` prompt tokens (LayerNorm, a linear map across the token axis, FiLM by the task
embedding), and a :class:`PromptedBlock` lets those tokens take part in the block's additive token
mixer. Every prompt contribution passes through a zero-initialised gate, so the untrained model is
exactly the frozen backbone. See ``docs/dap_on_casvit.md`` for the argument behind each choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from casdap.config.validate import INJECTION_NAMES, SELECTION_NAMES
from casdap.errors import CasdapError
from casdap.models.casvit import AdditiveBlock, AdditiveTokenMixer, CASViT

__all__ = [
    "INJECTIONS",
    "MASKED_LOGIT",
    "SELECTIONS",
    "CASDAP",
    "DAPOutput",
    "PromptGenerator",
    "PromptedBlock",
    "restrict_logits",
]

INJECTIONS = INJECTION_NAMES
SELECTIONS = SELECTION_NAMES
# Logit given to excluded classes: far below any trained logit, yet finite even in float16, so the
# batch-mean loss over rows whose true class is excluded stays finite (-inf or the dtype's lowest
# value would make it inf or nan).
MASKED_LOGIT = -1e4
# Side of the fixed grid the token axis is pooled to before the learned token-axis map: the
# 7x7 map of the last stage at 224 px, so the prompted stages lose little layout at that size.
TOKEN_GRID = 7


@dataclass
class DAPOutput:
    """What one CAS-DAP forward pass returns."""

    logits: torch.Tensor  # [B, num_classes] over all classes; masking is the strategy's job
    key_idx: torch.Tensor  # [B] long: the selected task (its keys' group = its task-embedding row) per image
    pull: torch.Tensor  # scalar: mean cosine(query, nearest key of the selected task); loss subtracts SIM_LAMBDA * pull


class PromptGenerator(nn.Module):
    """Instance-level prompt tokens ``[B, C, N]`` from a block's input map ``[B, C, H, W]``.

    DAP's generator is a LayerNorm over channels followed by a linear map across the token axis
    (197 ViT tokens -> N prompts). Here the token-axis map is factorised into a fixed
    resolution-adapting average pool (any H x W -> ``grid`` x ``grid``) and a learned
    ``grid**2 -> N`` linear map (``token_map``). The composition is still linear in the normalised
    tokens and position-aware, as in DAP, but no parameter depends on the input size. The map is
    zero-initialised (raw prompts start at 0) and is trained on the first task only.
    FiLM: ``gamma, beta = film(task_embedding)``, each divided by its own detached L2 norm.

    With ``channel_mix`` a ``dim x dim`` linear map (identity-initialised, so it starts as DAP's
    generator) mixes the channels of every raw prompt. DAP's generator only re-weights positions of
    the normalised input, so its prompts are averages of features the block already sees; the
    channel map lets a prompt carry a direction the input does not (measured in docs/dap_on_casvit.md).
    It is trained on the first task and then frozen with the token-axis map.

    With ``task_maps`` (> 0) every task has its own token-axis map (and channel map): the selected
    task's maps generate the image's prompts, so each task's maps train on its own images only and
    no task's prompts drift when a later task trains (measured in docs/dap_on_casvit.md).
    """

    def __init__(
        self, dim: int, num_tokens: int, task_emb_dim: int, grid: int = TOKEN_GRID, channel_mix: bool = False,
        task_maps: int = 0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.grid = grid
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.film = nn.Linear(task_emb_dim, 2 * dim)
        self.token_map = self.channel_mix = None
        self.task_token_map = self.task_channel_mix = None
        if task_maps > 0:  # [task, out, in] weights and [task, out] biases, initialised as the shared maps
            self.task_token_map = nn.ParameterList([nn.Parameter(torch.zeros(task_maps, num_tokens, grid * grid)),
                                                    nn.Parameter(torch.zeros(task_maps, num_tokens))])
            if channel_mix:
                self.task_channel_mix = nn.ParameterList([nn.Parameter(torch.eye(dim).repeat(task_maps, 1, 1)),
                                                          nn.Parameter(torch.zeros(task_maps, dim))])
            return
        self.token_map = nn.Linear(grid * grid, num_tokens)
        nn.init.zeros_(self.token_map.weight)
        nn.init.zeros_(self.token_map.bias)
        if channel_mix:
            self.channel_mix = nn.Linear(dim, dim)
            nn.init.eye_(self.channel_mix.weight)
            nn.init.zeros_(self.channel_mix.bias)

    def forward(self, x: torch.Tensor, task_emb: torch.Tensor, task_idx: torch.Tensor | None = None) -> torch.Tensor:
        """``task_idx``: the selected task of each image ``[B]``, or one task for the whole batch (a
        0-d tensor); needed with per-task maps only."""
        tokens = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # LayerNorm per position
        tokens = F.adaptive_avg_pool2d(tokens, self.grid).flatten(2)  # [B, C, grid*grid]
        if self.task_token_map is not None:
            if task_idx is None:
                raise CasdapError("a generator with per-task maps needs the selected task of every image (task_idx)")
            raw = self._task_maps(tokens, task_idx)
        else:
            raw = self.token_map(tokens)  # [B, C, N]
            if self.channel_mix is not None:
                raw = self.channel_mix(raw.transpose(1, 2)).transpose(1, 2)
        gamma, beta = self.film(task_emb).chunk(2, dim=1)
        gamma = gamma / gamma.norm(dim=1, keepdim=True).detach().clamp_min(1e-12)
        beta = beta / beta.norm(dim=1, keepdim=True).detach().clamp_min(1e-12)
        return gamma.unsqueeze(-1) * raw + beta.unsqueeze(-1)

    def _task_maps(self, tokens: torch.Tensor, task_idx: torch.Tensor) -> torch.Tensor:
        """Raw prompts ``[B, C, N]`` through each image's own task maps. One task for the batch
        (a 0-d ``task_idx``) takes that task's maps once; otherwise each image gathers its own."""
        (tw, tb), mix = self.task_token_map, self.task_channel_mix
        if task_idx.dim() == 0:
            t = task_idx
            raw = tokens @ tw[t].t() + tb[t]
            return raw if mix is None else torch.einsum("bcn,dc->bdn", raw, mix[0][t]) + mix[1][t][:, None]
        raw = torch.einsum("bcg,bng->bcn", tokens, tw[task_idx]) + tb[task_idx][:, None, :]
        if mix is not None:
            raw = torch.einsum("bcn,bdc->bdn", raw, mix[0][task_idx]) + mix[1][task_idx][:, :, None]
        return raw


def _token_mean(maps: torch.Tensor, batch: int) -> torch.Tensor:
    """``[B*N, C, 1, 1]`` -> ``[B, C, 1, 1]``: mean over each image's prompt tokens."""
    return maps.reshape(batch, -1, maps.shape[1]).mean(1)[:, :, None, None]


class PromptedBlock(nn.Module):
    """Prompt generator and injection for one :class:`AdditiveBlock` of the frozen backbone.

    The backbone block is passed to :meth:`forward` rather than held, so its weights stay owned
    (and saved) by the backbone alone. The prompts are generated from the stream that enters the
    mixer's residual branch (after local integration), like DAP's prompts are generated from the
    tokens that enter attention. Each prompt is normalised like a ViT token (see
    :meth:`normalize_prompts`) and projected by the block's frozen ``qkv`` as a one-pixel map with
    no neighbours. Injections (``gate_*`` are zero-initialised per-channel gates):

    - ``kv`` (default): prompts act as extra keys and values. The prompt keys, processed by the
      block's own key operator as one-pixel maps, shift the additive attention map; the prompt
      values are added to every position's value, so each position reads them in proportion to
      its own attention map: ``proj(dwc(q' + k' + gk * mean k'_p) * (v + gv * mean v_p))``.
    - ``attn``: prompts are extra keys and values read through a softmax over the image's prompt
      tokens, as a ViT position reads DAP's prepended prompts: each position's query scores every
      prompt key, and the weighted sum of prompt values is added, gated, to the mixer's output,
      ``proj(dwc(q' + k') * v + gv * softmax_n(q . k_n / sqrt(C)) v_n)``. Every token counts
      (``kv`` and ``pool`` average them first).
    - ``pool``: prompts join the global context of the channel operator ``C`` of q and k (the
      mixer's only global interaction): the pooled context becomes
      ``ctx + g * (mean S(q_p) - ctx)``, i.e. a learned share ``g`` of the context comes from
      the prompt tokens instead of the image positions.
    """

    def __init__(
        self, dim: int, num_tokens: int, task_emb_dim: int, injection: str = "kv", channel_mix: bool = False,
        task_maps: int = 0,
    ) -> None:
        super().__init__()
        if injection not in INJECTIONS:
            raise CasdapError(f"MODEL.DAP.INJECTION must be one of {', '.join(INJECTIONS)}, got '{injection}'")
        self.injection = injection
        self.generator = PromptGenerator(dim, num_tokens, task_emb_dim, channel_mix=channel_mix, task_maps=task_maps)
        # kv: keys; pool: query context; attn reads prompts through one gate only
        self.gate_a = nn.Parameter(torch.zeros(dim, 1, 1)) if injection != "attn" else None
        self.gate_b = nn.Parameter(torch.zeros(dim, 1, 1))  # kv, attn: values; pool: key context

    def mixer(self, attn: AdditiveTokenMixer, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q, k, v = attn.qkv(x).chunk(3, dim=1)
        q_p, k_p, v_p = attn.qkv(prompts).chunk(3, dim=1)  # [B*N, C, 1, 1] each
        if self.injection == "kv":
            q_mix = attn.oper_q(q)
            k_mix = attn.oper_k(k) + self.gate_a * _token_mean(attn.oper_k(k_p), b)
            v = v + self.gate_b * _token_mean(v_p, b)
        elif self.injection == "attn":
            mixed = attn.dwc(attn.oper_q(q) + attn.oper_k(k)) * v
            return attn.proj_drop(attn.proj(mixed + self.gate_b * self._prompt_attention(q, k_p, v_p, b)))
        else:
            q_mix = self._pooled_gate(attn.oper_q, q, q_p, self.gate_a, b)
            k_mix = self._pooled_gate(attn.oper_k, k, k_p, self.gate_b, b)
        return attn.proj_drop(attn.proj(attn.dwc(q_mix + k_mix) * v))

    @staticmethod
    def _prompt_attention(q: torch.Tensor, k_p: torch.Tensor, v_p: torch.Tensor, b: int) -> torch.Tensor:
        """``[B, C, H, W]``: each position's softmax-weighted read of its image's prompt values."""
        c = q.shape[1]
        keys, values = k_p.reshape(b, -1, c), v_p.reshape(b, -1, c)  # [B, N, C]
        weights = torch.softmax(torch.einsum("bchw,bnc->bhwn", q, keys) / math.sqrt(c), dim=-1)
        return torch.einsum("bhwn,bnc->bchw", weights, values)

    @staticmethod
    def _pooled_gate(oper: nn.Sequential, t: torch.Tensor, t_p: torch.Tensor, gate: torch.Tensor, b: int):
        spatial, channel = oper[0], oper[1]
        s = spatial(t)
        pool, conv, sigmoid = channel.block
        ctx = pool(s)
        ctx = ctx + gate * (_token_mean(spatial(t_p), b) - ctx)
        return s * sigmoid(conv(ctx))

    @staticmethod
    def normalize_prompts(norm: nn.BatchNorm2d, prompts: torch.Tensor) -> torch.Tensor:
        """Prompt tokens ``[B, C, N]`` -> normalised one-pixel maps ``[B*N, C, 1, 1]`` for ``qkv``.

        In DAP the FiLM output (unit-norm gamma and beta, so tiny per element) is inserted before
        the block's LayerNorm, which brings each prompt to the scale of the other tokens. CAS-ViT's
        norm is a BatchNorm with fixed statistics that would leave the prompts tiny, so each prompt
        is standardised over channels here and then given the frozen norm's affine (weight, bias),
        the same ``LN(p) * w + b`` a ViT block applies to its prompts.
        """
        tokens = F.layer_norm(prompts.transpose(1, 2), prompts.shape[1:2], eps=1e-6)  # [B, N, C]
        tokens = tokens * norm.weight + norm.bias
        return tokens.reshape(-1, tokens.shape[-1], 1, 1)

    def forward(self, block: AdditiveBlock, x: torch.Tensor, task_emb: torch.Tensor,
                task_idx: torch.Tensor | None = None) -> torch.Tensor:
        x = x + block.local_perception(x)
        prompts = self.generator(x, task_emb, task_idx)  # [B, C, N]
        x = x + block.drop_path(self.mixer(block.attn, block.norm1(x), self.normalize_prompts(block.norm1, prompts)))
        x = x + block.drop_path(block.mlp(block.norm2(x)))
        return x

    def structure_parameters(self) -> list[nn.Parameter]:
        """Task-agnostic parameters trained on the first task only: the shared token-axis and channel
        maps (none with per-task maps), gates."""
        gen = self.generator
        maps = [m for m in (gen.token_map, gen.channel_mix) if m is not None]
        gates = [g for g in (self.gate_a, self.gate_b) if g is not None]
        return [*(p for m in maps for p in m.parameters()), *gates]


def restrict_logits(
    logits: torch.Tensor, key_idx: torch.Tensor, class_splits: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Keep, per image, only the classes of the task its key selected (DAP's ImageNet-R option).

    ``class_splits[t]`` lists task t's classes (empty for a task not trained yet). Other logits
    become :data:`MASKED_LOGIT`.
    """
    keep = torch.zeros(len(class_splits), logits.shape[1], dtype=torch.bool, device=logits.device)
    for t, classes in enumerate(class_splits):
        keep[t, torch.as_tensor(list(classes), dtype=torch.long, device=logits.device)] = True
    if int(key_idx.max()) >= len(class_splits):
        raise CasdapError(f"key index {int(key_idx.max())} has no class split (only {len(class_splits)} tasks)")
    return logits.masked_fill(~keep[key_idx.to(logits.device)], MASKED_LOGIT)


class CASDAP(nn.Module):
    """Frozen CAS-ViT + key pool, task embeddings, per-block prompt generators and a linear head.

    The backbone is frozen and always in eval mode (its BatchNorm statistics never change, even
    when this wrapper is in train mode). Stages before the first prompted stage are computed once
    and shared by the query pass and the prompted pass.
    """

    def __init__(
        self,
        backbone: CASViT,
        num_classes: int,
        *,
        num_tasks: int,
        num_tokens: int,
        task_emb_dim: int,
        stages: Sequence[int],
        injection: str,
        keys_per_task: int,
        num_task_embeddings: int | None = None,
        prompt_last_block: bool = True,
        channel_mix: bool = False,
        task_generators: bool = False,
    ) -> None:
        super().__init__()
        stages = sorted(set(int(s) for s in stages))
        n_stages = len(backbone.layers)
        if not stages or stages[0] < 0 or stages[-1] >= n_stages:
            raise CasdapError(f"MODEL.DAP.STAGES must name stages 0..{n_stages - 1}, got {list(stages)}")
        num_task_embeddings = num_tasks if num_task_embeddings is None else num_task_embeddings
        if num_tasks < 1 or num_task_embeddings < num_tasks:
            raise CasdapError(
                f"MODEL.DAP.NUM_TASKS_FOR_EMB ({num_task_embeddings}) must be at least MODEL.DAP.PROMPT_POOL "
                f"({num_tasks}) and PROMPT_POOL at least 1: every key indexes one task embedding"
            )
        if num_tokens < 0:
            raise CasdapError(f"MODEL.DAP.NUM_DAP_TOKENS must be 0 (prompts off) or more, got {num_tokens}")
        if keys_per_task < 1:
            raise CasdapError(f"MODEL.DAP.KEYS_PER_TASK must be at least 1, got {keys_per_task}")
        if num_classes < 1:
            raise CasdapError(f"the DAP head needs DATA.NUMBER_CLASSES >= 1, got {num_classes}")
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(False)
        backbone.eval()
        self.num_classes = num_classes
        self.num_tasks = num_tasks
        self.keys_per_task = int(keys_per_task)
        self.stages = tuple(stages)
        self.injection = injection
        self.num_features = backbone.num_features
        self.random_init = bool(getattr(backbone, "random_init", False))  # for labelling run outputs

        # Without prompts in the very last block (DAP's reference for ImageNet-R), that block runs as is.
        # With no prompt tokens (the prompts-off ablation) no block is prompted: keys, task embeddings
        # and head train as usual, and the features are the frozen backbone's.
        last = n_stages - 1
        self.prompt_last_block = bool(prompt_last_block)
        self.num_tokens = int(num_tokens)
        self.task_generators = bool(task_generators) and num_tokens > 0
        self.dap_blocks = nn.ModuleDict(
            {
                str(s): nn.ModuleList(
                    PromptedBlock(backbone.embed_dims[s], num_tokens, task_emb_dim, injection, channel_mix,
                                  task_maps=num_tasks if task_generators else 0)
                    for _ in range(backbone.layers[s] - (s == last and not self.prompt_last_block))
                )
                for s in self.stages
            }
            if num_tokens > 0 else {}
        )
        # Keys live in the query's space; DAP's uniform (Glorot-style) init, stem of 4x4 patches.
        # Row j belongs to task j // keys_per_task.
        bound = math.sqrt(6.0 / (3 * 4 * 4 + self.num_features))
        n_keys = num_tasks * self.keys_per_task
        self.dap_keys = nn.Parameter(torch.empty(n_keys, self.num_features).uniform_(-bound, bound))
        self.dap_task_emb = nn.Embedding(num_task_embeddings, task_emb_dim)
        self.head = nn.Linear(self.num_features, num_classes)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    # -- modes and parameter groups ---------------------------------------------------------
    def train(self, mode: bool = True) -> CASDAP:
        super().train(mode)
        self.backbone.eval()
        return self

    def freeze_token_axis(self) -> None:
        """After the first task: the token-axis maps and injection gates stop changing."""
        for block in self._prompted_blocks():
            for p in block.structure_parameters():
                p.requires_grad_(False)
                p.grad = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("backbone.")]

    def _prompted_blocks(self) -> list[PromptedBlock]:
        return [b for blocks in self.dap_blocks.values() for b in blocks]

    # -- passes -----------------------------------------------------------------------------
    def _prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and the stages (with embeddings) before the first prompted stage."""
        x = self.backbone.patch_embed(x)
        for module in self.backbone.network[: 2 * self.stages[0]]:
            x = module(x)
        return x

    def _query_from(self, h: torch.Tensor) -> torch.Tensor:
        for module in self.backbone.network[2 * self.stages[0]:]:
            h = module(h)
        return self.backbone.forward_head(self.backbone.norm(h), pre_logits=True)

    def _prompted_from(self, h: torch.Tensor, key_idx: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        task_emb = self.dap_task_emb(key_idx)
        task_idx = key_idx
        if self.task_generators:  # one check per pass: a batch of one task takes its maps once per block
            tasks = key_idx.unique()
            task_idx = tasks[0] if len(tasks) == 1 else key_idx
        for s in range(self.stages[0], len(bb.layers)):
            if str(s) in self.dap_blocks:
                prompted = self.dap_blocks[str(s)]
                for i, block in enumerate(bb.stages[s]):
                    h = prompted[i](block, h, task_emb, task_idx) if i < len(prompted) else block(h)
            else:
                h = bb.stages[s](h)
            down = bb.downsample(s)
            if down is not None:
                h = down(h)
        return bb.forward_head(bb.norm(h), pre_logits=True)

    def forward_query(self, x: torch.Tensor) -> torch.Tensor:
        """The query alone: pooled un-prompted features of the frozen backbone ``[B, C]``."""
        with torch.no_grad():
            return self.backbone.forward_pooled(x)

    def forward_prompted(self, x: torch.Tensor, key_idx: torch.Tensor) -> torch.Tensor:
        """Pooled prompted features ``[B, C]`` for given key indices, computed from the image."""
        with torch.no_grad():
            h = self._prefix(x)
        return self._prompted_from(h, key_idx)

    def task_similarity(self, query: torch.Tensor) -> torch.Tensor:
        """``[B, num_tasks]``: cosine between each query and the nearest of each task's keys.

        With several keys per task, each key covers one mode of the task's queries (the pull term
        moves only the nearest one, an online spherical k-means), so a task whose classes lie apart
        in the query space is still matched by one of its keys.
        """
        sim = F.normalize(query, dim=1) @ F.normalize(self.dap_keys, dim=1).t()
        return sim.view(query.shape[0], self.num_tasks, self.keys_per_task).amax(2)

    @torch.no_grad()
    def seed_keys(self, task: int, query: torch.Tensor, generator: torch.Generator | None = None) -> None:
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
        rows = self.dap_keys[task * m:(task + 1) * m]
        rows.copy_(q[picks].to(rows) * rows.norm(dim=1, keepdim=True))

    def select_keys(
        self,
        query: torch.Tensor,
        task_id: int | torch.Tensor | None = None,
        selection: str = "per_image",
        similarity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Task (key group) index per image: ``task_id`` when given (training, oracle), else by ``selection``."""
        b = query.shape[0]
        if task_id is not None:
            idx = torch.as_tensor(task_id, dtype=torch.long, device=query.device)
            idx = idx.expand(b).clone() if idx.dim() == 0 else idx
            if idx.shape != (b,):
                raise CasdapError(f"task_id must be an int or a [{b}] tensor, got shape {tuple(idx.shape)}")
            if int(idx.min()) < 0 or int(idx.max()) >= self.num_tasks:
                raise CasdapError(
                    f"task id {int(idx.max()) if int(idx.max()) >= self.num_tasks else int(idx.min())} is outside "
                    f"the key pool 0..{self.num_tasks - 1}; raise MODEL.DAP.PROMPT_POOL to at least CONTINUAL.N_TASKS"
                )
            return idx
        if selection not in SELECTIONS:
            raise CasdapError(f"key selection must be one of {', '.join(SELECTIONS)}, got '{selection}'")
        if selection == "oracle":
            raise CasdapError("oracle key selection needs the true task id (task_id=int or [B] tensor)")
        sim = self.task_similarity(query) if similarity is None else similarity
        idx = sim.argmax(dim=1)
        if selection == "batch_majority":
            idx = torch.bincount(idx, minlength=self.num_tasks).argmax().expand(b).clone()
        return idx

    def forward(
        self, x: torch.Tensor, task_id: int | torch.Tensor | None = None, selection: str = "per_image"
    ) -> DAPOutput:
        if self.backbone.training:  # someone called backbone.train(); its BN statistics must not move
            self.backbone.eval()
        with torch.no_grad():
            h = self._prefix(x)
            query = self._query_from(h)
        sim = self.task_similarity(query)
        key_idx = self.select_keys(query, task_id, selection, similarity=sim)
        pull = sim.gather(1, key_idx[:, None]).mean()
        feats = self._prompted_from(h, key_idx)
        return DAPOutput(logits=self.head(feats), key_idx=key_idx, pull=pull)

"""``dap``: DAP's instance-level prompt generator (:class:`PromptGenerator`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from casdap.errors import CasdapError
from casdap.models.prompt_sources.base import PromptSource, film, one_task
from casdap.models.prompt_sources.groups import TaskGroups

__all__ = ["TOKEN_GRID", "PromptGenerator"]

# Side of the fixed grid the token axis is pooled to before the learned token-axis map: the
# 7x7 map of the last stage at 224 px, so the prompted stages lose little layout at that size.
TOKEN_GRID = 7


class PromptGenerator(PromptSource):
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
    no task's prompts drift when a later task trains (measured in docs/dap_on_casvit.md). Such a
    generator takes a batch of several tasks as :class:`TaskGroups` (``groups_by_task``): each task's
    maps are applied once to its images, with no per-image copy of a ``dim x dim`` map.
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
        self.groups_by_task = task_maps > 0
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

    def forward(self, x: torch.Tensor, task_emb: torch.Tensor,
                task_idx: int | torch.Tensor | None = None) -> torch.Tensor:
        """``task_idx`` is needed with per-task maps only: one task for the whole batch (an int or a
        0-d tensor) takes that task's maps once, :class:`TaskGroups` each group's once, a ``[B]``
        tensor gathers each image's own."""
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
        return film(self.film, task_emb, raw)

    def _task_maps(self, tokens: torch.Tensor, task_idx: int | torch.Tensor | TaskGroups) -> torch.Tensor:
        """Raw prompts ``[B, C, N]`` through each image's own task maps: one task's maps once, each
        group's maps once (:class:`TaskGroups`), or (a ``[B]`` tensor) a gathered copy per image."""
        if isinstance(task_idx, TaskGroups):
            return task_idx.apply(tokens, self._group_maps)
        if one_task(task_idx):
            return self._one_task_maps(tokens, task_idx)
        (tw, tb), mix = self.task_token_map, self.task_channel_mix
        raw = torch.einsum("bcg,bng->bcn", tokens, tw[task_idx]) + tb[task_idx][:, None, :]
        if mix is not None:
            raw = torch.einsum("bcn,bdc->bdn", raw, mix[0][task_idx]) + mix[1][task_idx][:, :, None]
        return raw

    def _one_task_maps(self, tokens: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Raw prompts ``[B, C, N]`` of images of one task ``t`` (an int or a 0-d tensor)."""
        (tw, tb), mix = self.task_token_map, self.task_channel_mix
        raw = tokens @ tw[t].t() + tb[t]
        return raw if mix is None else torch.einsum("bcn,dc->bdn", raw, mix[0][t]) + mix[1][t][:, None]

    def _group_maps(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        """:meth:`_one_task_maps` for the images of one task in a batch of several: the channel map as
        one matrix product over all their prompts (``[k*N, C] x [C, D]``), cheaper than an ``einsum``
        on groups of a few images."""
        (tw, tb), mix = self.task_token_map, self.task_channel_mix
        raw = tokens @ tw[t].t() + tb[t]  # [k, C, N]
        if mix is None:
            return raw
        k, c, n = raw.shape
        out = torch.addmm(mix[1][t], raw.transpose(1, 2).reshape(k * n, c), mix[0][t].t())  # [k*N, D]
        return out.reshape(k, n, -1).transpose(1, 2)

    def task_rows(self, tasks: Sequence[int]) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """Each per-task map's rows of ``tasks``."""
        maps = [*(self.task_token_map or []), *(self.task_channel_mix or [])]
        return [(p, torch.as_tensor(list(tasks), dtype=torch.long, device=p.device)) for p in maps]

    def structure_parameters(self) -> list[nn.Parameter]:
        """The shared token-axis and channel maps (none with per-task maps)."""
        maps = [m for m in (self.token_map, self.channel_mix) if m is not None]
        return [p for m in maps for p in m.parameters()]

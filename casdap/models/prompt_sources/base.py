"""The contract every prompt source follows (:class:`PromptSource`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["PromptSource", "film", "one_task"]


class PromptSource(nn.Module):
    """The contract of a prompt source (subclass it and register the class by name).

    Built once per prompted block as ``Source(dim, num_tokens, task_emb_dim, **options)``: ``dim``
    is the block's channel count, ``num_tokens`` the prompts per image, ``task_emb_dim`` the width
    of a task embedding. ``options`` holds ``num_tasks`` (the model's task count) when the source's
    ``__init__`` takes it, and only the generator options a user set (``channel_mix``, ``task_maps``),
    so a source that does not take one fails when the model is built rather than ignoring it.

    ``forward(x, task_emb, task_idx)`` gets the block's input map ``x`` ``[B, C, H, W]`` (the stream
    that enters the token mixer, after the block's local integration), the selected task's
    embedding per image ``task_emb`` ``[B, task_emb_dim]`` and the selected task ``task_idx``: a
    Python int when the caller gave one task for the whole batch, else a ``[B]`` long tensor (or a
    0-d tensor). A source with ``groups_by_task`` True gets, for a batch of several tasks, the
    images grouped by task instead (:class:`~.groups.TaskGroups`), and one task of a batch of one task
    as a Python int: it applies each task's parameters once per group, never a per-image copy of
    them (DAP's per-task maps). It returns the prompt
    tokens ``[B, C, N]``; the block normalises them and lets them take part in its mixer (the
    injection), so a source never touches the backbone.

    :meth:`structure_parameters` lists the parameters that train on the first task only
    (``CASDAP.freeze_token_axis`` freezes them after it); :meth:`task_rows` the rows that belong to
    one task alone (kept as they are while later tasks train, weight decay included).

    ``makes_prompts`` False (the ``none`` source) builds no prompted block at all: the prompted
    pass is the backbone's own, and the source is never instantiated.

    ``per_block`` False marks a prompt pool (:class:`~.pool.PoolSource`): built once per model, it
    makes every prompted block's tokens from the query, and CAS-DAP's blocks refuse it.
    """

    makes_prompts: bool = True
    per_block: bool = True
    groups_by_task: bool = False

    def forward(self, x: torch.Tensor, task_emb: torch.Tensor,
                task_idx: int | torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def structure_parameters(self) -> list[nn.Parameter]:
        return []

    def task_rows(self, tasks: Sequence[int]) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, rows along its first axis) that belong to ``tasks`` alone (per-task maps);
        none by default. Rows of finished tasks are kept as they are while later tasks train."""
        return []


def one_task(task_idx: int | torch.Tensor | None) -> bool:
    """Whether ``task_idx`` names one task for the whole batch (an int or a 0-d tensor)."""
    return not torch.is_tensor(task_idx) or task_idx.dim() == 0


def film(linear: nn.Linear, task_emb: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """DAP's FiLM of raw prompts ``[B, C, N]`` by the task embedding: ``gamma * raw + beta`` with
    ``gamma, beta = linear(task_emb)``, each divided by its own detached L2 norm."""
    gamma, beta = linear(task_emb).chunk(2, dim=1)
    gamma = gamma / gamma.norm(dim=1, keepdim=True).detach().clamp_min(1e-12)
    beta = beta / beta.norm(dim=1, keepdim=True).detach().clamp_min(1e-12)
    return gamma.unsqueeze(-1) * raw + beta.unsqueeze(-1)

"""The contract of a prompt pool (:class:`PoolSource`): prompts chosen once per image from the query.

A pool is a prompt source whose tokens are learned parameters, not made from a block's input map:
for each image it picks or composes, from the query (the pooled features of the un-prompted pass),
the raw tokens ``[B, N_b, C_b]`` of every prompted block at once. The one model that runs a pool
(:class:`casdap.models.prompt_pools.PromptPoolModel`) owns everything else of the pipeline: the
query, the task inference of a pool with a task variable, the injections and the prediction. The
pools (``l2p``, ``dualprompt``, ``coda_prompt``) are registered in
:data:`casdap.dap_registry.POOL_SOURCES`, each run by the method of its name (``MODEL.TRANSFER_TYPE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from casdap.models.prompt_sources.base import PromptSource

__all__ = ["PoolPrompts", "PoolSource", "batch_majority_top_n", "orthogonality", "uniform"]


@dataclass
class PoolPrompts:
    """What a pool gives for one batch of queries."""

    tokens: list[torch.Tensor]  # raw tokens [B, N_b, C_b] of every prompted block, in order
    pull: torch.Tensor  # scalar: the key-pull term the loss subtracts (0 for a pool without one)
    penalty: torch.Tensor  # scalar: the orthogonality penalty the loss adds (0 for a pool without one)
    selected: torch.Tensor | None = None  # [B, N] the prompts each image took (L2P)


class PoolSource(PromptSource):
    """A prompt pool (subclass it and register the class by name in ``POOL_SOURCES``).

    Built once per model as ``Pool(block_dims, query_dim, num_tasks, **options)``: ``block_dims`` the
    channel count of every prompted block in order, ``query_dim`` the query's width; ``options`` are
    the pool's own settings (an option it does not take fails when the model is built).

    ``forward(query, task_idx, selection, trained)`` turns the queries ``[B, D]`` into
    :class:`PoolPrompts`. ``task_idx`` is the task of every image ``[B]`` for a pool with a task
    variable (``has_task``: the model infers it, or takes the true one in training), else None;
    ``selection`` is the model's prompt selection (one of ``selections``) and ``trained`` the tasks
    that have started training ``[num_tasks]`` bool. A pool with a task variable also gives its own
    task scores (:meth:`task_scores`, DualPrompt's keys), which the model uses unless a task
    predictor estimated from class statistics replaces them.

    :meth:`start_task` is called when a task starts training; :meth:`task_rows` lists the rows that
    belong to finished tasks alone (kept bit-identical while later tasks train).
    """

    per_block = False
    selections: tuple[str, ...] = ("per_image",)
    has_task = False

    def forward(self, query: torch.Tensor, task_idx: torch.Tensor | None, selection: str,  # type: ignore[override]
                trained: torch.Tensor) -> PoolPrompts:
        raise NotImplementedError

    def task_scores(self, query: torch.Tensor) -> torch.Tensor:
        """``[B, num_tasks]``: each task's score for each query (pools with a task variable)."""
        raise NotImplementedError

    def start_task(self, task: int) -> None:
        """Task ``task`` starts training (nothing by default)."""


def uniform(*shape: int) -> nn.Parameter:
    """A parameter drawn uniformly from ``[-1, 1]`` (the pools' prompts and keys)."""
    return nn.Parameter(torch.empty(*shape).uniform_(-1.0, 1.0))


def orthogonality(x: torch.Tensor) -> torch.Tensor:
    """``mean((X X^T - I)^2)`` over the rows of ``x`` flattened to ``[M, -1]``."""
    x = x.flatten(1)
    gram = x @ x.t()
    return ((gram - torch.eye(len(x), device=x.device, dtype=x.dtype)) ** 2).mean()


def batch_majority_top_n(top: torch.Tensor, pool_size: int) -> torch.Tensor:
    """L2P's batch-wise prompt (``batchwise_prompt``): the ``N`` prompts chosen most often in the
    batch's per-image top-``N`` (ties: the lower index), the same ``[B, N]`` for every image."""
    counts = torch.bincount(top.flatten(), minlength=pool_size)
    order = torch.sort(counts, descending=True, stable=True).indices[: top.shape[1]]
    return order.sort().values.unsqueeze(0).expand_as(top)


def task_tensor(tasks: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(list(tasks), dtype=torch.long, device=device)

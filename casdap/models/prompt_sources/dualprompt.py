"""``dualprompt``: DualPrompt's G- and E-prompts (Wang et al., ECCV 2022), run by
``MODEL.TRANSFER_TYPE dualprompt``.

Shared G-prompts (``g_length`` tokens) in the first ``g_blocks`` prompted blocks, and one E-prompt
(``length`` tokens) per task with a key in the later ones. The task is the pool's task variable: the
true task's E-prompt in training, the inferred task's at test time (the model infers it: the nearest
key, :meth:`DualPromptPool.task_scores`, or a task predictor on class statistics of the query).
Pull: the mean cosine between each query and its task's key. E-prompts and keys of finished tasks
are kept as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from casdap.errors import CasdapError
from casdap.models.prompt_sources.pool import PoolPrompts, PoolSource, task_tensor, uniform

__all__ = ["DualPromptPool"]


class DualPromptPool(PoolSource):
    """G-prompts shared by every task, one E-prompt and key per task (see the module)."""

    selections = ("per_image", "batch_majority", "oracle")
    has_task = True

    def __init__(self, block_dims: Sequence[int], query_dim: int, num_tasks: int, *, length: int = 5,
                 g_length: int = 5, g_blocks: int = 2) -> None:
        if length < 1 or g_length < 1:
            raise CasdapError(f"the prompt lengths must be at least 1, got E {length}, G {g_length}")
        if not 0 <= g_blocks < len(block_dims):
            raise CasdapError(f"g_blocks must leave at least one of the {len(block_dims)} prompted blocks for the "
                              f"E-prompts (0..{len(block_dims) - 1}), got {g_blocks}")
        super().__init__()
        self.g_blocks, self.length, self.g_length = int(g_blocks), int(length), int(g_length)
        self.g_prompts = nn.ParameterList(uniform(g_length, c) for c in block_dims[:g_blocks])
        self.e_prompts = nn.ParameterList(uniform(num_tasks, length, c) for c in block_dims[g_blocks:])
        self.keys = uniform(num_tasks, query_dim)

    def task_scores(self, query: torch.Tensor) -> torch.Tensor:
        """The cosine between each query and each task's key ``[B, num_tasks]``."""
        return F.normalize(query, dim=1) @ F.normalize(self.keys, dim=1).t()

    def forward(self, query, task_idx, selection, trained):
        b = len(query)
        pull = self.task_scores(query).gather(1, task_idx[:, None]).mean()
        tokens = [g.expand(b, -1, -1) for g in self.g_prompts] + [e[task_idx] for e in self.e_prompts]
        return PoolPrompts(tokens, pull, query.new_zeros(()))

    def task_rows(self, tasks):
        t = task_tensor(tasks, self.keys.device)
        return [(self.keys, t)] + [(e, t) for e in self.e_prompts]

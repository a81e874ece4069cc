"""``coda_prompt``: CODA-Prompt's prompt components (Smith et al., CVPR 2023), run by
``MODEL.TRANSFER_TYPE coda_prompt``.

``components`` prompt components ``P_m`` with keys ``K_m`` and attention vectors ``A_m``; each
image's prompt is ``sum_m alpha_m P_m`` with ``alpha_m = cos(q * A_m, K_m)``. The components are
split evenly over the tasks: task ``t`` uses the slices of tasks ``0..t`` and trains only its own
(earlier slices enter detached), and an orthogonality penalty ``||X X^T - I||^2`` (mean) on the used
rows of ``P`` (per block), ``K`` and ``A`` keeps the new components apart from the old ones. There is
no task variable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from casdap.errors import CasdapError
from casdap.models.prompt_sources.pool import PoolPrompts, PoolSource, orthogonality, task_tensor

__all__ = ["CODAPool"]


class CODAPool(PoolSource):
    """An attention-weighted sum of prompt components per image (see the module)."""

    def __init__(self, block_dims: Sequence[int], query_dim: int, num_tasks: int, *, components: int = 20,
                 length: int = 8) -> None:
        if length < 1:
            raise CasdapError(f"the prompt length must be at least 1, got {length}")
        if components < num_tasks or components % num_tasks:
            raise CasdapError(f"CODA-Prompt splits its components evenly over the tasks: components ({components}) "
                              f"must be a multiple of the number of tasks ({num_tasks})")
        super().__init__()
        self.components, self.length, self.per_task = int(components), int(length), components // num_tasks
        self.keys = nn.Parameter(nn.init.orthogonal_(torch.empty(components, query_dim)))
        self.attention = nn.Parameter(nn.init.orthogonal_(torch.empty(components, query_dim)))
        self.prompts = nn.ParameterList(
            nn.Parameter(nn.init.orthogonal_(torch.empty(components, length * c)).reshape(components, length, c))
            for c in block_dims)
        self.current = -1  # the task being trained (its slice trains, earlier ones are detached)

    def start_task(self, task: int) -> None:
        self.current = int(task)

    def _rows(self, x: torch.Tensor, training: bool, trained: torch.Tensor) -> torch.Tensor:
        """The used rows of ``x``: those of every task started so far, earlier tasks' detached in training."""
        n_tasks = int(trained.sum()) if not training else self.current + 1
        end, start = n_tasks * self.per_task, (n_tasks - 1) * self.per_task
        if not training:
            return x[:end]
        return torch.cat([x[:start].detach(), x[start:end]])

    def forward(self, query, task_idx, selection, trained):
        training = self.training and torch.is_grad_enabled() and self.current >= 0
        if not training and not bool(trained.any()):
            raise CasdapError("CODA-Prompt has no trained components yet (train a task first)")
        keys, att = self._rows(self.keys, training, trained), self._rows(self.attention, training, trained)
        q = F.normalize(query[:, None, :] * att[None], dim=2)  # [B, M, D]
        alpha = (q * F.normalize(keys, dim=1)[None]).sum(2)  # [B, M]
        prompts = [self._rows(p, training, trained) for p in self.prompts]
        tokens = [torch.einsum("bm,mlc->blc", alpha, p) for p in prompts]
        zero = query.new_zeros(())
        penalty = zero
        if training:
            penalty = orthogonality(keys) + orthogonality(att) + sum(orthogonality(p) for p in prompts)
        return PoolPrompts(tokens, zero, penalty)

    def task_rows(self, tasks):
        r = task_tensor([t * self.per_task + j for t in tasks for j in range(self.per_task)], self.keys.device)
        return [(self.keys, r), (self.attention, r)] + [(p, r) for p in self.prompts]

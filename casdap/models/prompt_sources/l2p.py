"""``l2p``: L2P's prompt pool (Wang et al., CVPR 2022), run by ``MODEL.TRANSFER_TYPE l2p``.

A pool of ``pool_size`` prompts with keys; each image takes the ``top_n`` prompts whose keys are
nearest (cosine) to its query, and their tokens, concatenated (``top_n * length``), enter every
prompted block. Pull: the mean over images of the sum of the selected keys' cosines. The pool is
shared by all tasks: nothing is frozen by design, and there is no task variable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
import torch.nn.functional as F

from casdap.errors import CasdapError
from casdap.models.prompt_sources.pool import PoolPrompts, PoolSource, batch_majority_top_n, uniform

__all__ = ["L2PPool"]


class L2PPool(PoolSource):
    """Top-``top_n`` prompts of a shared pool by cosine of key and query; ``selection``
    ``batch_majority`` gives every image of a batch the prompts chosen most often in it."""

    selections = ("per_image", "batch_majority")

    def __init__(self, block_dims: Sequence[int], query_dim: int, num_tasks: int, *, pool_size: int = 10,
                 top_n: int = 5, length: int = 5) -> None:
        if not 1 <= top_n <= pool_size:
            raise CasdapError(f"L2P needs 1 <= top_n <= pool_size, got top_n {top_n}, pool_size {pool_size}")
        if length < 1:
            raise CasdapError(f"the prompt length must be at least 1, got {length}")
        super().__init__()
        self.pool_size, self.top_n, self.length = int(pool_size), int(top_n), int(length)
        self.keys = uniform(pool_size, query_dim)
        self.prompts = nn.ParameterList(uniform(pool_size, length, c) for c in block_dims)

    def forward(self, query, task_idx, selection, trained):
        sim = F.normalize(query, dim=1) @ F.normalize(self.keys, dim=1).t()  # [B, M]
        top = sim.topk(self.top_n, dim=1).indices  # [B, N]
        if selection == "batch_majority":
            top = batch_majority_top_n(top, self.pool_size)
        pull = sim.gather(1, top).sum(1).mean()
        b = len(query)
        tokens = [p[top].reshape(b, self.top_n * self.length, -1) for p in self.prompts]
        return PoolPrompts(tokens, pull, sim.new_zeros(()), top)

    def task_rows(self, tasks):
        return []  # shared by every task

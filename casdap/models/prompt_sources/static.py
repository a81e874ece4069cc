"""``static``: learned prompt tokens per task, the same for every image of the task.

DAP's generator with its instance-level part removed: where :class:`~.dap.PromptGenerator` maps the
block's input map to raw prompts, this source holds the raw prompts of each task as parameters and
ignores the image. Everything after is DAP's: the same FiLM by the selected task's embedding, the
same normalisation, injection and zero-initialised gates, so a comparison of ``dap`` and ``static``
isolates what generating prompts per image adds (docs/dap_on_casvit.md, "Prompt sources").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from casdap.errors import CasdapError
from casdap.models.prompt_sources.base import PromptSource, film, one_task

__all__ = ["StaticPrompts"]


class StaticPrompts(PromptSource):
    """Raw prompts ``[C, N]`` per task (``tokens`` ``[num_tasks, C, N]``), FiLM-ed by the task embedding.

    The tokens start at zero, as DAP's generator's raw prompts do (its token-axis map is
    zero-initialised), so at the start both sources give every image the same prompts (the FiLM
    offset of its task) and the gates keep the model the frozen backbone. Each task's row trains on
    that task's images only and is one of the model's task rows, kept bit-identical once its task
    is done (weight decay included); the FiLM map is shared by every task, as in DAP. A batch of
    several tasks reads each image's tokens with one index (``groups_by_task`` False): that read is
    the ``[B, C, N]`` tokens themselves, which grouping by task would only copy once more.
    """

    def __init__(self, dim: int, num_tokens: int, task_emb_dim: int, num_tasks: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(num_tasks, dim, num_tokens))
        self.film = nn.Linear(task_emb_dim, 2 * dim)

    def forward(self, x: torch.Tensor, task_emb: torch.Tensor,
                task_idx: int | torch.Tensor | None = None) -> torch.Tensor:
        if task_idx is None:
            raise CasdapError("static prompts need the selected task of every image (task_idx)")
        raw = self.tokens[task_idx]  # one task: [C, N]; per image: [B, C, N]
        if one_task(task_idx):
            raw = raw.expand(len(x), -1, -1)
        return film(self.film, task_emb, raw)

    def task_rows(self, tasks: Sequence[int]) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """The tokens of ``tasks``."""
        return [(self.tokens, torch.as_tensor(list(tasks), dtype=torch.long, device=self.tokens.device))]

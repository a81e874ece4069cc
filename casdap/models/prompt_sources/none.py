"""``none``: no prompt. Everything else of CAS-DAP stays: the task inference, the task embeddings
and keys, the head trained on each task's classes and the prediction, on the backbone's own
features. The same run as DAP's prompts-off ablation (``MODEL.DAP.NUM_DAP_TOKENS 0``)."""

from __future__ import annotations

from casdap.models.prompt_sources.base import PromptSource

__all__ = ["NoPrompts"]


class NoPrompts(PromptSource):
    """A source that makes no prompts: the model builds no prompted block, so this class is only
    ever read, never built (``makes_prompts``)."""

    makes_prompts = False

"""Prompt sources: what turns a prompted block's input into prompt tokens, one module per source.

A source is registered by name in :data:`casdap.dap_registry.PROMPT_SOURCES`; every
:class:`~casdap.models.dap.PromptedBlock` builds its own from that name (``MODEL.DAP.PROMPT_SOURCE``).
The contract is :class:`~.base.PromptSource`. Sources: ``dap`` (DAP's instance-level generator,
:mod:`.dap`), ``static`` (learned tokens per task, :mod:`.static`), ``none`` (no prompt, :mod:`.none`).
"""

from casdap.models.prompt_sources.base import PromptSource
from casdap.models.prompt_sources.dap import TOKEN_GRID, PromptGenerator

__all__ = ["TOKEN_GRID", "PromptGenerator", "PromptSource"]

"""Prompt sources: what turns a prompted block's input into prompt tokens, one module per source.

A source is registered by name in :data:`casdap.dap_registry.PROMPT_SOURCES`; every
:class:`~casdap.models.injection.PromptedBlock` builds its own from that name (``MODEL.DAP.PROMPT_SOURCE``).
The contract is :class:`~.base.PromptSource`. Sources: ``dap`` (DAP's instance-level generator,
:mod:`.dap`), ``static`` (learned tokens per task, :mod:`.static`), ``none`` (no prompt, :mod:`.none`).

The prompt pools are sources of the same registry that a model builds once, not per block
(:class:`~.pool.PoolSource`, :class:`casdap.models.prompt_pools.PromptPoolModel`): ``l2p``
(:mod:`.l2p`), ``dualprompt`` (:mod:`.dualprompt`), ``coda_prompt`` (:mod:`.coda_prompt`).
"""

from casdap.models.prompt_sources.base import PromptSource
from casdap.models.prompt_sources.dap import TOKEN_GRID, PromptGenerator

__all__ = ["TOKEN_GRID", "PromptGenerator", "PromptSource"]

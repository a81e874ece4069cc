"""Names of CAS-DAP's pluggable parts, torch-free: each registry maps a name to ``"module:attr"``.

The config checks (:mod:`casdap.continual.methods.checks`) read the names before torch is imported; the
model imports an entry only when it is built (:func:`load`). A new part is one file plus one line
here (docs/architecture.md, "Registries"). Names are compared lower-case everywhere
(:func:`normalize`), so ``KV`` and ``kv`` are the same injection.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import Any

from casdap.errors import CasdapError

__all__ = [
    "ALL_CLASS_HEAD_NAMES",
    "INJECTION_NAMES",
    "PREDICTION_NAMES",
    "POOL_SOURCES",
    "PROMPT_BACKBONE_NAMES",
    "QUERY_NAMES",
    "PROMPT_SOURCES",
    "SELECTIONS",
    "SELECTION_NAMES",
    "TASK_PREDICTORS",
    "TASK_PREDICTOR_NAMES",
    "PROMPT_SOURCE_NAMES",
    "block_sources",
    "checked",
    "load",
    "normalize",
    "refuse_pool",
]

# Prompt pools: learned prompts chosen once per image from the query, for every prompted block at once.
# Contract: casdap.models.prompt_sources.pool.PoolSource; the model: casdap.models.prompt_pools.PromptPoolModel.
# Each is run by the method of its name (MODEL.TRANSFER_TYPE l2p | dualprompt | coda_prompt, which reads its
# MODEL.PROMPT settings); under MODEL.TRANSFER_TYPE dap, MODEL.DAP.PROMPT_SOURCE refuses them.
POOL_SOURCES: dict[str, str] = {
    "l2p": "casdap.models.prompt_sources.l2p:L2PPool",
    "dualprompt": "casdap.models.prompt_sources.dualprompt:DualPromptPool",
    "coda_prompt": "casdap.models.prompt_sources.coda_prompt:CODAPool",
}
# Prompt sources: one registry for every source. Block sources (MODEL.DAP.PROMPT_SOURCE, CAS-DAP): the
# block's input map and the task embedding (and index) -> prompt tokens [B, C, N]; contract:
# casdap.models.prompt_sources.PromptSource. dap: DAP's instance-level generator; static: learned tokens per
# task (DAP without the instance-level part); none: no prompt. Then the pools above.
PROMPT_SOURCES: dict[str, str] = {
    "dap": "casdap.models.prompt_sources.dap:PromptGenerator",
    "static": "casdap.models.prompt_sources.static:StaticPrompts",
    "none": "casdap.models.prompt_sources.none:NoPrompts",
    **POOL_SOURCES,
}

# Task predictors: the query [B, C] -> per-task scores [B, T]. Contract: casdap.models.task_inference.TaskPredictor.
TASK_PREDICTORS: dict[str, str] = {
    "keys": "casdap.models.task_inference:KeyTaskPredictor",
    "gaussian": "casdap.models.task_inference:GaussianTaskPredictor",
    "head": "casdap.models.task_inference:HeadTaskPredictor",
    "lda": "casdap.models.task_inference:LDATaskPredictor",
}

# Selections (reducers): per-task scores [B, T] (and the true task, for oracle) -> task index per image [B].
SELECTIONS: dict[str, str] = {
    "per_image": "casdap.models.task_inference:per_image",
    "batch_majority": "casdap.models.task_inference:batch_majority",
    "oracle": "casdap.models.task_inference:oracle",
}

# Task-adaptive prediction: how the class is predicted once the task is inferred (the DAP strategy).
# restrict: DAP's, only the inferred task's classes; all: a head over every seen class re-aligned on
# statistics of the prompted features; soft: the top-k tasks' prompts, p(task) * p(class | task).
PREDICTION_NAMES: tuple[str, ...] = ("restrict", "all", "soft")

# Where the query comes from: frozen (the pretrained backbone, DAP's) or adapted (a backbone trained with
# a linear head on the first task, then frozen: APER's and RanPAC's first session); and which backbone
# the prompted pass runs on: the pretrained one (DAP's) or that adapted one.
QUERY_NAMES: tuple[str, ...] = ("frozen", "adapted")
# The head over every seen class (prediction all) from the prompted features' class statistics: pseudo
# (HiDe-Prompt's: a softmax classifier trained on features drawn from the class Gaussians) or lda (one
# shared covariance, closed form).
ALL_CLASS_HEAD_NAMES: tuple[str, ...] = ("pseudo", "lda")
PROMPT_BACKBONE_NAMES: tuple[str, ...] = ("pretrained", "adapted")

# How prompt tokens take part in a block's token mixer (casdap.models.dap.PromptedBlock).
INJECTION_NAMES: tuple[str, ...] = ("kv", "pool", "attn")

PROMPT_SOURCE_NAMES: tuple[str, ...] = tuple(PROMPT_SOURCES)
TASK_PREDICTOR_NAMES: tuple[str, ...] = tuple(TASK_PREDICTORS)
SELECTION_NAMES: tuple[str, ...] = tuple(SELECTIONS)


def block_sources() -> tuple[str, ...]:
    """The block sources of :data:`PROMPT_SOURCES` (every entry but the pools), read when called, so
    an entry added at run time counts."""
    return tuple(n for n in PROMPT_SOURCES if n not in POOL_SOURCES)


def refuse_pool(key: str, name: str, instead: str) -> None:
    """One :class:`CasdapError` when ``name`` (the value of ``key``) is a prompt pool where a block
    source is wanted, ending with what to do ``instead``."""
    source = normalize(name)
    if source in POOL_SOURCES:
        raise CasdapError(f"{key} {source} is a prompt pool, chosen once per image from the query rather than made "
                          f"in each prompted block: {instead}")


def normalize(name: str) -> str:
    """The registry form of a user-given name: stripped, lower-case."""
    return str(name).strip().lower()


def checked(kind: str, name: str, allowed: tuple[str, ...] | Mapping[str, str]) -> str:
    """``name`` normalised, or one :class:`CasdapError` naming what ``kind`` accepts."""
    key = normalize(name)
    if key not in allowed:
        raise CasdapError(f"{kind} must be one of {', '.join(allowed)}, got '{name}'")
    return key


def load(kind: str, registry: Mapping[str, str], name: str) -> Any:
    """Import the entry ``name`` of ``registry`` (``kind`` names it in errors, e.g. ``"task_predictor"``)."""
    target = registry[checked(kind, name, registry)]
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)

"""Each method's own config checks, torch-free: one :class:`CasdapError` naming the first bad key.

The table in :mod:`casdap.continual.methods` names each method's check beside the keys it reads;
:func:`casdap.continual.methods.check_config` runs the settings every run reads first
(:mod:`casdap.config.validate`), then these. The names below are the ones the modules that use
them accept (tests keep the two in step).
"""

from __future__ import annotations

from yacs.config import CfgNode

from casdap.config.validate import at_least, one_of
from casdap.dap_registry import (
    ALL_CLASS_HEAD_NAMES,
    INJECTION_NAMES,
    PREDICTION_NAMES,
    PROMPT_BACKBONE_NAMES,
    PROMPT_SOURCES,
    QUERY_NAMES,
    SELECTION_NAMES,
    TASK_PREDICTOR_NAMES,
    block_sources,
    refuse_pool,
)
from casdap.errors import CasdapError

__all__ = ["PROMPT_METHOD_SELECTIONS", "check_coda_prompt", "check_dap", "check_dualprompt", "check_fecam",
           "check_first_session", "check_l2p", "check_replay", "check_slda"]

CASVIT_STAGES = 4
# the learned-prompt methods and the prompt selections each accepts (MODEL.DAP.SELECTION)
PROMPT_METHOD_SELECTIONS: dict[str, tuple[str, ...]] = {
    "l2p": ("per_image", "batch_majority"),
    "dualprompt": ("per_image", "batch_majority", "oracle"),
    "coda_prompt": ("per_image",),
}


def _stages(cfg: CfgNode) -> None:
    stages = list(cfg.MODEL.DAP.STAGES)
    if not stages or any(not 0 <= int(s) < CASVIT_STAGES for s in stages):
        raise CasdapError(f"MODEL.DAP.STAGES must name stages 0..{CASVIT_STAGES - 1}, got {stages}")


def check_replay(cfg: CfgNode) -> None:
    at_least("BASELINES.REPLAY_MEM_SIZE", cfg.BASELINES.REPLAY_MEM_SIZE, 1)


def check_first_session(cfg: CfgNode) -> None:
    """``BASELINES.FIRST_SESSION`` of a frozen-feature classifier (ncm, ranpac, slda, fecam)."""
    if not isinstance(cfg.BASELINES.FIRST_SESSION, bool):
        raise CasdapError(f"BASELINES.FIRST_SESSION must be True or False, got {cfg.BASELINES.FIRST_SESSION!r}")


def _shrinkage(cfg: CfgNode, key: str) -> None:
    check_first_session(cfg)
    value = cfg.BASELINES[key]
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0):
        raise CasdapError(f"BASELINES.{key} must be a number in [0, 1] (a fixed covariance shrinkage), or auto to "
                          f"choose it on held-out training images (None: the method's default), got {value!r}")


def check_slda(cfg: CfgNode) -> None:
    _shrinkage(cfg, "SLDA_SHRINKAGE")


def check_fecam(cfg: CfgNode) -> None:
    _shrinkage(cfg, "FECAM_SHRINKAGE")


def check_dap(cfg: CfgNode) -> None:
    d = cfg.MODEL.DAP
    one_of("MODEL.DAP.INJECTION", d.INJECTION, INJECTION_NAMES)
    one_of("MODEL.DAP.SELECTION", d.SELECTION, SELECTION_NAMES)
    _task_inference(cfg)
    at_least("MODEL.DAP.NUM_DAP_TOKENS", d.NUM_DAP_TOKENS, 0)
    _prompt_source(cfg)
    at_least("MODEL.DAP.KEYS_PER_TASK", d.KEYS_PER_TASK, 1)
    at_least("MODEL.DAP.PROMPT_POOL", d.PROMPT_POOL, 1)
    at_least("MODEL.DAP.TASK_EMB", d.TASK_EMB, 1)
    if d.REPLAY_MEM_SIZE < 0:
        raise CasdapError(f"MODEL.DAP.REPLAY_MEM_SIZE must be 0 (no replay) or positive, got {d.REPLAY_MEM_SIZE}")
    if d.NUM_TASKS_FOR_EMB < d.PROMPT_POOL:
        raise CasdapError(f"MODEL.DAP.NUM_TASKS_FOR_EMB ({d.NUM_TASKS_FOR_EMB}) must be at least "
                          f"MODEL.DAP.PROMPT_POOL ({d.PROMPT_POOL}): every key indexes one task embedding")
    if cfg.CONTINUAL.N_TASKS > d.PROMPT_POOL:
        raise CasdapError(f"MODEL.DAP.PROMPT_POOL ({d.PROMPT_POOL}) is smaller than CONTINUAL.N_TASKS "
                          f"({cfg.CONTINUAL.N_TASKS}): DAP needs one key per task")
    _stages(cfg)


def _prompt_source(cfg: CfgNode) -> None:
    """``MODEL.DAP.PROMPT_SOURCE`` and the settings that only some sources read."""
    d = cfg.MODEL.DAP
    source = str(d.PROMPT_SOURCE).strip().lower()
    # a pool is a source of the registry too, but its own method runs it (its TRANSFER_TYPE is its name)
    refuse_pool("MODEL.DAP.PROMPT_SOURCE", source, f"run it as MODEL.TRANSFER_TYPE {source} (its settings are "
                f"MODEL.PROMPT's), not as a PROMPT_SOURCE of TRANSFER_TYPE dap")
    if source not in PROMPT_SOURCES:  # the registry itself: a source added there is accepted here
        raise CasdapError(f"unknown MODEL.DAP.PROMPT_SOURCE '{d.PROMPT_SOURCE}' "
                          f"(use one of {', '.join(block_sources())})")
    if source not in ("static", "none"):  # dap, and a source of one's own: the model checks its options
        return
    for key in ("CHANNEL_MIX", "TASK_GENERATORS"):
        if d[key]:
            raise CasdapError(f"MODEL.DAP.{key} is an option of DAP's generator (MODEL.DAP.PROMPT_SOURCE dap), "
                              f"not of PROMPT_SOURCE {source}: set it False")
    if source == "static" and int(d.NUM_DAP_TOKENS) == 0:
        raise CasdapError(f"MODEL.DAP.NUM_DAP_TOKENS 0 makes no prompt: with MODEL.DAP.PROMPT_SOURCE {source} set "
                          "it to 1 or more, or set PROMPT_SOURCE none for no prompt")


def _task_inference(cfg: CfgNode) -> None:
    d = cfg.MODEL.DAP
    one_of("MODEL.DAP.TASK_INFERENCE", d.TASK_INFERENCE, TASK_PREDICTOR_NAMES)
    if d.PREDICTION is not None:
        one_of("MODEL.DAP.PREDICTION", d.PREDICTION, PREDICTION_NAMES)
    if not float(d.SHRINKAGE) > 0:
        raise CasdapError(f"MODEL.DAP.SHRINKAGE must be above 0 (it keeps every class covariance invertible), "
                          f"got {d.SHRINKAGE}")
    prediction = str(d.PREDICTION or "").strip().lower()
    if prediction == "soft" and not 1 <= int(d.TOP_K) <= int(cfg.CONTINUAL.N_TASKS):
        raise CasdapError(f"MODEL.DAP.TOP_K must be 1..{cfg.CONTINUAL.N_TASKS} (CONTINUAL.N_TASKS), got {d.TOP_K}")
    if prediction == "soft" and str(d.SELECTION).strip().lower() != "per_image":
        raise CasdapError(f"MODEL.DAP.PREDICTION soft takes each image's own top tasks: MODEL.DAP.SELECTION must be "
                          f"per_image, got '{d.SELECTION}'")
    one_of("MODEL.DAP.QUERY", d.QUERY, QUERY_NAMES)
    _fusion(cfg)
    one_of("MODEL.DAP.ALL_CLASS_HEAD", d.ALL_CLASS_HEAD, ALL_CLASS_HEAD_NAMES)
    one_of("MODEL.DAP.PROMPT_BACKBONE", d.PROMPT_BACKBONE, PROMPT_BACKBONE_NAMES)
    if str(d.PROMPT_BACKBONE).strip().lower() == "adapted" and str(d.QUERY).strip().lower() != "adapted":
        raise CasdapError("MODEL.DAP.PROMPT_BACKBONE adapted runs the prompts on the query's adapted backbone: "
                          "set MODEL.DAP.QUERY adapted too")
    if str(d.TASK_INFERENCE).strip().lower() != "keys" and int(d.KEYS_PER_TASK) != 1:
        raise CasdapError(f"MODEL.DAP.KEYS_PER_TASK ({d.KEYS_PER_TASK}) applies to TASK_INFERENCE keys only: "
                          f"set it to 1 with TASK_INFERENCE {d.TASK_INFERENCE}")


def _prompt_method(cfg: CfgNode, method: str) -> None:
    """``MODEL.PROMPT`` and the ``MODEL.DAP`` keys a learned-prompt method reads (stages, injection, selection)."""
    p, d = cfg.MODEL.PROMPT, cfg.MODEL.DAP
    allowed = PROMPT_METHOD_SELECTIONS[method]
    if str(d.SELECTION).strip().lower() not in allowed:
        raise CasdapError(f"unknown prompt selection MODEL.DAP.SELECTION '{d.SELECTION}' for {method} "
                          f"(use one of {', '.join(allowed)})")
    one_of("MODEL.DAP.INJECTION", d.INJECTION, INJECTION_NAMES)
    _stages(cfg)
    _prompt_prediction(cfg, method)
    if p.LENGTH < 1:
        raise CasdapError(f"MODEL.PROMPT.LENGTH (prompt length) must be at least 1, got {p.LENGTH}")


def _prompt_prediction(cfg: CfgNode, method: str) -> None:
    """``MODEL.DAP.PREDICTION`` of a learned-prompt method: unset (its trained head) or ``all``; and
    its query (``QUERY``, ``PROMPT_BACKBONE``) as CAS-DAP's."""
    d = cfg.MODEL.DAP
    one_of("MODEL.DAP.QUERY", d.QUERY, QUERY_NAMES)
    one_of("MODEL.DAP.PROMPT_BACKBONE", d.PROMPT_BACKBONE, PROMPT_BACKBONE_NAMES)
    if str(d.PROMPT_BACKBONE).strip().lower() == "adapted" and str(d.QUERY).strip().lower() != "adapted":
        raise CasdapError("MODEL.DAP.PROMPT_BACKBONE adapted runs the prompts on the query's adapted backbone: "
                          "set MODEL.DAP.QUERY adapted too")
    _fusion(cfg)
    if d.PREDICTION is None:
        return
    if str(d.PREDICTION).strip().lower() != "all":
        raise CasdapError(f"MODEL.DAP.PREDICTION '{d.PREDICTION}' is not available for {method} (use all, or leave "
                          "it unset for the trained head over the classes seen so far)")
    one_of("MODEL.DAP.ALL_CLASS_HEAD", d.ALL_CLASS_HEAD, ALL_CLASS_HEAD_NAMES)
    if not float(d.SHRINKAGE) > 0:
        raise CasdapError(f"MODEL.DAP.SHRINKAGE must be above 0 (it keeps every class covariance invertible), "
                          f"got {d.SHRINKAGE}")


def _fusion(cfg: CfgNode) -> None:
    """``MODEL.DAP.FUSION_WEIGHT``: 0 (unfused) or more; above 0 the query's class Gaussians are fitted
    with ``MODEL.DAP.SHRINKAGE``."""
    d = cfg.MODEL.DAP
    w = d.FUSION_WEIGHT
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
        raise CasdapError(f"MODEL.DAP.FUSION_WEIGHT must be 0 (unfused) or a positive number (the weight of the "
                          f"query's class Gaussians, log p_prompted + w log p_query), got {w!r}")
    if w > 0 and not float(d.SHRINKAGE) > 0:
        raise CasdapError(f"MODEL.DAP.SHRINKAGE must be above 0 (it keeps every class covariance of the fused "
                          f"prediction invertible), got {d.SHRINKAGE}")


def _weight(cfg: CfgNode, key: str) -> None:
    if not cfg.MODEL.PROMPT[key] >= 0:
        raise CasdapError(f"MODEL.PROMPT.{key} must be 0 or more, got {cfg.MODEL.PROMPT[key]}")


def check_l2p(cfg: CfgNode) -> None:
    _prompt_method(cfg, "l2p")
    _weight(cfg, "PULL_LAMBDA")
    p = cfg.MODEL.PROMPT
    if p.TOP_N < 1:
        raise CasdapError(f"MODEL.PROMPT.TOP_N must be at least 1 (prompts each image takes), got {p.TOP_N}")
    if p.POOL_SIZE < p.TOP_N:
        raise CasdapError(f"MODEL.PROMPT.POOL_SIZE ({p.POOL_SIZE}) is smaller than MODEL.PROMPT.TOP_N ({p.TOP_N}): "
                          "the pool must hold the prompts each image takes")


def check_dualprompt(cfg: CfgNode) -> None:
    _prompt_method(cfg, "dualprompt")
    d = cfg.MODEL.DAP
    one_of("MODEL.DAP.TASK_INFERENCE", d.TASK_INFERENCE, TASK_PREDICTOR_NAMES)
    if str(d.TASK_INFERENCE).strip().lower() != "keys" and not float(d.SHRINKAGE) > 0:
        raise CasdapError(f"MODEL.DAP.SHRINKAGE must be above 0 (it keeps every class covariance invertible), "
                          f"got {d.SHRINKAGE}")
    _weight(cfg, "PULL_LAMBDA")
    p = cfg.MODEL.PROMPT
    if p.G_LENGTH < 1:
        raise CasdapError(f"MODEL.PROMPT.G_LENGTH (G-prompt length) must be at least 1, got {p.G_LENGTH}")
    if p.G_BLOCKS < 0:
        raise CasdapError(f"MODEL.PROMPT.G_BLOCKS must be 0 or more, got {p.G_BLOCKS}")


def check_coda_prompt(cfg: CfgNode) -> None:
    _prompt_method(cfg, "coda_prompt")
    _weight(cfg, "ORTHO_LAMBDA")
    p, n = cfg.MODEL.PROMPT, int(cfg.CONTINUAL.N_TASKS)
    if p.COMPONENTS < 1 or p.COMPONENTS % n:
        raise CasdapError(f"MODEL.PROMPT.COMPONENTS ({p.COMPONENTS}) must divide evenly over the "
                          f"{n} tasks (CONTINUAL.N_TASKS): a positive multiple of {n}")

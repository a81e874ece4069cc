"""Every check a config can fail without data or a model, in one place and before any heavy import.

``casdap cl`` runs it right after loading, so a bad value is one line within a fraction of a
second; the runner runs it again for configs built in Python. The names below are the ones the
modules that use them accept (tests keep the two in step).
"""

from __future__ import annotations

from yacs.config import CfgNode

from casdap.continual.methods import FIRST_SESSION_METHODS, METHOD_MODULES, METHOD_NAMES, PROMPT_METHOD_SELECTIONS
from casdap.dap_registry import (
    ALL_CLASS_HEAD_NAMES,
    INJECTION_NAMES,
    PREDICTION_NAMES,
    PROMPT_BACKBONE_NAMES,
    PROMPT_SOURCES,
    QUERY_NAMES,
    SELECTION_NAMES,
    TASK_PREDICTOR_NAMES,
)
from casdap.errors import CasdapError

__all__ = ["validate", "METHOD_NAMES"]

DATASET_NAMES = ("digits", "embedded_shift", "cifar100", "cifar10", "imagenet_r", "imagenetr", "folder")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("linear", "linear_decay", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
CASVIT_STAGES = 4


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value.lower() not in allowed:
        raise CasdapError(f"unknown {key} '{value}' (use one of {', '.join(allowed)})")


def _at_least(key: str, value, low) -> None:
    if value is None or value < low:
        raise CasdapError(f"{key} must be at least {low}, got {value}")


def check_data_shares(cfg: CfgNode) -> None:
    """``DATA.PERCENTAGE`` and ``DATA.VALIDATION`` (also checked where a benchmark is built)."""
    if not 0.0 < cfg.DATA.PERCENTAGE <= 1.0:
        raise CasdapError(f"DATA.PERCENTAGE must be in (0, 1], got {cfg.DATA.PERCENTAGE}")
    if not 0.0 <= cfg.DATA.VALIDATION < 1.0:
        raise CasdapError(
            f"DATA.VALIDATION must be in [0, 1) (share of training images held out), got {cfg.DATA.VALIDATION}")


def validate(cfg: CfgNode) -> None:
    """Raise one :class:`CasdapError` naming the first bad key and what it accepts."""
    method = cfg.MODEL.TRANSFER_TYPE.lower()
    if method not in METHOD_MODULES:
        raise CasdapError(f"unknown method MODEL.TRANSFER_TYPE '{cfg.MODEL.TRANSFER_TYPE}' (use one of "
                          f"{', '.join(METHOD_MODULES)})")
    if cfg.DATA.NAME:
        _one_of("DATA.NAME", cfg.DATA.NAME.replace("-", "_"), DATASET_NAMES)
    _one_of("SOLVER.OPTIMIZER", cfg.SOLVER.OPTIMIZER, OPTIMIZERS)
    _one_of("SOLVER.SCHEDULER", cfg.SOLVER.SCHEDULER, SCHEDULERS)
    device = cfg.DEVICE.lower()
    if device.split(":")[0] not in DEVICES:
        raise CasdapError(f"unknown DEVICE '{cfg.DEVICE}' (use auto, cpu or cuda)")
    _at_least("SOLVER.TOTAL_EPOCH", cfg.SOLVER.TOTAL_EPOCH, 1)
    _at_least("DATA.BATCH_SIZE", cfg.DATA.BATCH_SIZE, 1)
    if cfg.DATA.EVAL_BATCH_SIZE < 0:
        raise CasdapError(f"DATA.EVAL_BATCH_SIZE must be 0 (use DATA.BATCH_SIZE) or positive, "
                          f"got {cfg.DATA.EVAL_BATCH_SIZE}")
    _at_least("DATA.CROPSIZE", cfg.DATA.CROPSIZE, 1)
    check_data_shares(cfg)
    if method == "replay":
        _at_least("BASELINES.REPLAY_MEM_SIZE", cfg.BASELINES.REPLAY_MEM_SIZE, 1)
    if method == "dap":
        _validate_dap(cfg)
    if method in PROMPT_METHOD_SELECTIONS:
        _validate_prompt_method(cfg, method)
    _validate_statistics_baselines(cfg, method)


def _validate_statistics_baselines(cfg: CfgNode, method: str) -> None:
    b = cfg.BASELINES
    if not isinstance(b.FIRST_SESSION, bool):
        raise CasdapError(f"BASELINES.FIRST_SESSION must be True or False, got {b.FIRST_SESSION!r}")
    if b.FIRST_SESSION and method not in FIRST_SESSION_METHODS:
        raise CasdapError(f"BASELINES.FIRST_SESSION True applies to {', '.join(FIRST_SESSION_METHODS)} only, not "
                          f"MODEL.TRANSFER_TYPE {method} (aper always adapts on the first task)")
    for name in ("slda", "fecam"):
        key = f"{name.upper()}_SHRINKAGE"
        value = b[key]
        if method != name or value is None or (isinstance(value, str) and value.lower() == "auto"):
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
        if not ok:
            raise CasdapError(f"BASELINES.{key} must be a number in [0, 1] (a fixed covariance shrinkage), or auto to "
                              f"choose it on held-out training images (None: the method's default), got {value!r}")


def _validate_dap(cfg: CfgNode) -> None:
    d = cfg.MODEL.DAP
    _one_of("MODEL.DAP.INJECTION", d.INJECTION, INJECTION_NAMES)
    _one_of("MODEL.DAP.SELECTION", d.SELECTION, SELECTION_NAMES)
    _validate_task_inference(cfg)
    _at_least("MODEL.DAP.NUM_DAP_TOKENS", d.NUM_DAP_TOKENS, 0)
    _validate_prompt_source(cfg)
    _at_least("MODEL.DAP.KEYS_PER_TASK", d.KEYS_PER_TASK, 1)
    _at_least("MODEL.DAP.PROMPT_POOL", d.PROMPT_POOL, 1)
    _at_least("MODEL.DAP.TASK_EMB", d.TASK_EMB, 1)
    if d.REPLAY_MEM_SIZE < 0:
        raise CasdapError(f"MODEL.DAP.REPLAY_MEM_SIZE must be 0 (no replay) or positive, got {d.REPLAY_MEM_SIZE}")
    if d.NUM_TASKS_FOR_EMB < d.PROMPT_POOL:
        raise CasdapError(f"MODEL.DAP.NUM_TASKS_FOR_EMB ({d.NUM_TASKS_FOR_EMB}) must be at least "
                          f"MODEL.DAP.PROMPT_POOL ({d.PROMPT_POOL}): every key indexes one task embedding")
    if cfg.CONTINUAL.N_TASKS > d.PROMPT_POOL:
        raise CasdapError(f"MODEL.DAP.PROMPT_POOL ({d.PROMPT_POOL}) is smaller than CONTINUAL.N_TASKS "
                          f"({cfg.CONTINUAL.N_TASKS}): DAP needs one key per task")
    stages = list(d.STAGES)
    if not stages or any(not 0 <= int(s) < CASVIT_STAGES for s in stages):
        raise CasdapError(f"MODEL.DAP.STAGES must name stages 0..{CASVIT_STAGES - 1}, got {stages}")


def _validate_prompt_source(cfg: CfgNode) -> None:
    """``MODEL.DAP.PROMPT_SOURCE`` and the settings that only some sources read."""
    d = cfg.MODEL.DAP
    source = str(d.PROMPT_SOURCE).strip().lower()
    if source not in PROMPT_SOURCES:  # the registry itself: a source added there is accepted here
        raise CasdapError(f"unknown MODEL.DAP.PROMPT_SOURCE '{d.PROMPT_SOURCE}' "
                          f"(use one of {', '.join(PROMPT_SOURCES)})")
    if source not in ("static", "none"):  # dap, and a source of one's own: the model checks its options
        return
    for key in ("CHANNEL_MIX", "TASK_GENERATORS"):
        if d[key]:
            raise CasdapError(f"MODEL.DAP.{key} is an option of DAP's generator (MODEL.DAP.PROMPT_SOURCE dap), "
                              f"not of PROMPT_SOURCE {source}: set it False")
    if source == "static" and int(d.NUM_DAP_TOKENS) == 0:
        raise CasdapError(f"MODEL.DAP.NUM_DAP_TOKENS 0 makes no prompt: with MODEL.DAP.PROMPT_SOURCE {source} set "
                          "it to 1 or more, or set PROMPT_SOURCE none for no prompt")


def _validate_prompt_method(cfg: CfgNode, method: str) -> None:
    """``MODEL.PROMPT`` and the ``MODEL.DAP`` keys a learned-prompt method reads (stages, injection, selection)."""
    p, d = cfg.MODEL.PROMPT, cfg.MODEL.DAP
    allowed = PROMPT_METHOD_SELECTIONS[method]
    if str(d.SELECTION).strip().lower() not in allowed:
        raise CasdapError(f"unknown prompt selection MODEL.DAP.SELECTION '{d.SELECTION}' for {method} "
                          f"(use one of {', '.join(allowed)})")
    _one_of("MODEL.DAP.INJECTION", d.INJECTION, INJECTION_NAMES)
    stages = list(d.STAGES)
    if not stages or any(not 0 <= int(s) < CASVIT_STAGES for s in stages):
        raise CasdapError(f"MODEL.DAP.STAGES must name stages 0..{CASVIT_STAGES - 1}, got {stages}")
    if p.LENGTH < 1:
        raise CasdapError(f"MODEL.PROMPT.LENGTH (prompt length) must be at least 1, got {p.LENGTH}")
    for key in ("PULL_LAMBDA", "ORTHO_LAMBDA"):
        if not p[key] >= 0:
            raise CasdapError(f"MODEL.PROMPT.{key} must be 0 or more, got {p[key]}")
    if method == "l2p":
        if p.TOP_N < 1:
            raise CasdapError(f"MODEL.PROMPT.TOP_N must be at least 1 (prompts each image takes), got {p.TOP_N}")
        if p.POOL_SIZE < p.TOP_N:
            raise CasdapError(f"MODEL.PROMPT.POOL_SIZE ({p.POOL_SIZE}) is smaller than MODEL.PROMPT.TOP_N ({p.TOP_N}): "
                              "the pool must hold the prompts each image takes")
    if method == "dualprompt":
        if p.G_LENGTH < 1:
            raise CasdapError(f"MODEL.PROMPT.G_LENGTH (G-prompt length) must be at least 1, got {p.G_LENGTH}")
        if p.G_BLOCKS < 0:
            raise CasdapError(f"MODEL.PROMPT.G_BLOCKS must be 0 or more, got {p.G_BLOCKS}")
    if method == "coda_prompt":
        n = int(cfg.CONTINUAL.N_TASKS)
        if p.COMPONENTS < 1 or p.COMPONENTS % n:
            raise CasdapError(f"MODEL.PROMPT.COMPONENTS ({p.COMPONENTS}) must divide evenly over the "
                              f"{n} tasks (CONTINUAL.N_TASKS): a positive multiple of {n}")


def _validate_task_inference(cfg: CfgNode) -> None:
    d = cfg.MODEL.DAP
    _one_of("MODEL.DAP.TASK_INFERENCE", d.TASK_INFERENCE, TASK_PREDICTOR_NAMES)
    if d.PREDICTION is not None:
        _one_of("MODEL.DAP.PREDICTION", d.PREDICTION, PREDICTION_NAMES)
    if not float(d.SHRINKAGE) > 0:
        raise CasdapError(f"MODEL.DAP.SHRINKAGE must be above 0 (it keeps every class covariance invertible), "
                          f"got {d.SHRINKAGE}")
    prediction = str(d.PREDICTION or "").strip().lower()
    if prediction == "soft" and not 1 <= int(d.TOP_K) <= int(cfg.CONTINUAL.N_TASKS):
        raise CasdapError(f"MODEL.DAP.TOP_K must be 1..{cfg.CONTINUAL.N_TASKS} (CONTINUAL.N_TASKS), got {d.TOP_K}")
    if prediction == "soft" and str(d.SELECTION).strip().lower() != "per_image":
        raise CasdapError(f"MODEL.DAP.PREDICTION soft takes each image's own top tasks: MODEL.DAP.SELECTION must be "
                          f"per_image, got '{d.SELECTION}'")
    _one_of("MODEL.DAP.QUERY", d.QUERY, QUERY_NAMES)
    _one_of("MODEL.DAP.ALL_CLASS_HEAD", d.ALL_CLASS_HEAD, ALL_CLASS_HEAD_NAMES)
    _one_of("MODEL.DAP.PROMPT_BACKBONE", d.PROMPT_BACKBONE, PROMPT_BACKBONE_NAMES)
    if str(d.PROMPT_BACKBONE).strip().lower() == "adapted" and str(d.QUERY).strip().lower() != "adapted":
        raise CasdapError("MODEL.DAP.PROMPT_BACKBONE adapted runs the prompts on the query's adapted backbone: "
                          "set MODEL.DAP.QUERY adapted too")
    if str(d.TASK_INFERENCE).strip().lower() != "keys" and int(d.KEYS_PER_TASK) != 1:
        raise CasdapError(f"MODEL.DAP.KEYS_PER_TASK ({d.KEYS_PER_TASK}) applies to TASK_INFERENCE keys only: "
                          f"set it to 1 with TASK_INFERENCE {d.TASK_INFERENCE}")

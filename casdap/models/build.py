"""Models from a config: the pretrained backbone (weight-file lookup) and CAS-DAP with ``MODEL.DAP.*``.

The model modules (``casvit.py``, ``dap.py``) know nothing of configs or files; this one reads both.
"""

from __future__ import annotations

import logging
from pathlib import Path

from casdap import dap_defaults as D
from casdap.dap_registry import INJECTION_NAMES, SELECTION_NAMES, block_sources, normalize, refuse_pool
from casdap.errors import CasdapError
from casdap.models.casvit import VARIANTS, CASViT
from casdap.models.dap import CASDAP

__all__ = ["build_backbone", "build_dap_model", "check_dap_settings", "dap_settings"]

_logger = logging.getLogger(__name__)


def _pretrained_path(cfg) -> Path | None:
    """``MODEL.WEIGHT_PATH`` if set, else ``MODEL.MODEL_ROOT/<BACKBONE>.pth``; None for an allowed random init.

    An explicitly set ``WEIGHT_PATH`` that does not exist is always an error (a typo must never
    fall back to other weights or to a random backbone).
    """
    weight_path = str(cfg.MODEL.WEIGHT_PATH or "")
    root_path = Path(cfg.MODEL.MODEL_ROOT or ".") / f"{cfg.MODEL.BACKBONE}.pth"
    if weight_path:
        if Path(weight_path).is_file():
            return Path(weight_path)
        raise CasdapError(
            f"MODEL.WEIGHT_PATH '{weight_path}' does not exist. Fix the path, or clear MODEL.WEIGHT_PATH "
            f"to load MODEL.MODEL_ROOT/<MODEL.BACKBONE>.pth ('{root_path}')"
        )
    if root_path.is_file():
        return root_path
    if cfg.MODEL.RANDOM_INIT:
        return None
    raise CasdapError(
        f"no pretrained {cfg.MODEL.BACKBONE} backbone: MODEL.WEIGHT_PATH is not set and MODEL.MODEL_ROOT has no "
        f"'{root_path}'. Give the Model Zoo file (or a supervised-path checkpoint) as MODEL.WEIGHT_PATH or put it "
        "at that place, or set MODEL.RANDOM_INIT True to run on a randomly initialised backbone"
    )


def build_backbone(cfg, num_classes: int | None = None) -> CASViT:
    """``MODEL.BACKBONE`` with pretrained weights (``WEIGHT_PATH``, else ``MODEL_ROOT/<BACKBONE>.pth``).

    ``num_classes`` defaults to ``DATA.NUMBER_CLASSES`` (0: no head). One head, no distillation
    head: a new class count starts a fresh classifier. Loaded with ``finetune=True`` so a
    pretrained head of another class count is dropped.
    """
    from casdap.models import create_model

    if num_classes is None:
        num_classes = max(int(cfg.DATA.NUMBER_CLASSES), 0)
    path = _pretrained_path(cfg)
    backbone = create_model(cfg.MODEL.BACKBONE, num_classes=num_classes, distillation=False)
    if path is None:
        _logger.warning(
            "MODEL.RANDOM_INIT is True: %s is RANDOMLY INITIALISED, not pretrained; results are not "
            "comparable with pretrained runs",
            cfg.MODEL.BACKBONE,
        )
        backbone.random_init = True
        return backbone
    from casdap.checkpoint import load_checkpoint

    report = load_checkpoint(backbone, path, finetune=True)
    _logger.info("backbone %s: %s", cfg.MODEL.BACKBONE, report.summary())
    backbone.random_init = False
    return backbone


def dap_settings(cfg) -> dict:
    """The :class:`CASDAP` keyword arguments that ``MODEL.DAP`` sets (names lower-cased)."""
    dap = cfg.MODEL.DAP
    return dict(
        num_tasks=int(dap.PROMPT_POOL),
        num_task_embeddings=int(dap.NUM_TASKS_FOR_EMB),
        num_tokens=int(dap.NUM_DAP_TOKENS),
        task_emb_dim=int(dap.TASK_EMB),
        stages=list(dap.STAGES),
        injection=normalize(dap.INJECTION),
        keys_per_task=int(dap.KEYS_PER_TASK),
        prompt_last_block=dap.PROMPT_LAST_BLOCK is not False,
        channel_mix=bool(dap.CHANNEL_MIX),
        task_generators=bool(dap.TASK_GENERATORS),
        prompt_source=normalize(dap.PROMPT_SOURCE),
        **task_inference_settings(cfg),
    )


def task_inference_settings(cfg) -> dict:
    """The task predictor, what it and the prediction keep statistics with (fused prediction: the
    query's class Gaussians), and where the query comes from; nothing for DAP's reference (keys, no
    all-class head, frozen query, no fusion), so its model is built exactly as before."""
    dap = cfg.MODEL.DAP
    predictor = normalize(dap.TASK_INFERENCE)
    all_classes = normalize(dap.PREDICTION or "") == "all"
    out: dict = {}
    if predictor != D.TASK_PREDICTOR:
        out["task_predictor"] = predictor
    fused = float(dap.FUSION_WEIGHT) > 0  # the query's class Gaussians, for fused prediction
    if predictor != D.TASK_PREDICTOR or all_classes or fused:
        out["shrinkage"] = float(dap.SHRINKAGE)
    if fused:
        out["fusion"] = True
    if all_classes:
        out["prompted_statistics"] = True
        if normalize(dap.ALL_CLASS_HEAD) != D.ALL_CLASS_HEAD:
            out["all_class_head"] = normalize(dap.ALL_CLASS_HEAD)
    if normalize(dap.QUERY) != D.QUERY:
        out["query"] = normalize(dap.QUERY)
    if normalize(dap.PROMPT_BACKBONE) != D.PROMPT_BACKBONE:
        out["prompt_backbone"] = normalize(dap.PROMPT_BACKBONE)
    return out


def check_dap_settings(cfg) -> None:
    """Every ``MODEL.DAP`` value :class:`CASDAP` would refuse, as one error naming the config key
    (the model's own errors name its arguments)."""
    dap = cfg.MODEL.DAP
    if normalize(dap.INJECTION) not in INJECTION_NAMES:
        raise CasdapError(f"MODEL.DAP.INJECTION must be one of {', '.join(INJECTION_NAMES)}, got '{dap.INJECTION}'")
    refuse_pool("MODEL.DAP.PROMPT_SOURCE", dap.PROMPT_SOURCE, f"run it as MODEL.TRANSFER_TYPE "
                f"{normalize(dap.PROMPT_SOURCE)}, not as a PROMPT_SOURCE of CAS-DAP")
    if normalize(dap.PROMPT_SOURCE) not in block_sources():
        raise CasdapError(f"MODEL.DAP.PROMPT_SOURCE must be one of {', '.join(block_sources())}, "
                          f"got '{dap.PROMPT_SOURCE}'")
    if normalize(dap.SELECTION) not in SELECTION_NAMES:
        raise CasdapError(f"MODEL.DAP.SELECTION must be one of {', '.join(SELECTION_NAMES)}, got '{dap.SELECTION}'")
    if int(cfg.DATA.NUMBER_CLASSES) < 1:
        raise CasdapError(f"DATA.NUMBER_CLASSES must be set (>= 1) for the DAP head, got {cfg.DATA.NUMBER_CLASSES}")
    if dap.PROMPT_POOL < 1:
        raise CasdapError(f"MODEL.DAP.PROMPT_POOL must be at least 1, got {dap.PROMPT_POOL}")
    if cfg.CONTINUAL.N_TASKS > dap.PROMPT_POOL:
        raise CasdapError(
            f"MODEL.DAP.PROMPT_POOL ({dap.PROMPT_POOL}) is smaller than CONTINUAL.N_TASKS ({cfg.CONTINUAL.N_TASKS}): "
            "DAP needs one key per task"
        )
    if dap.NUM_TASKS_FOR_EMB < dap.PROMPT_POOL:
        raise CasdapError(f"MODEL.DAP.NUM_TASKS_FOR_EMB ({dap.NUM_TASKS_FOR_EMB}) must be at least "
                          f"MODEL.DAP.PROMPT_POOL ({dap.PROMPT_POOL}): every key indexes one task embedding")
    if dap.NUM_DAP_TOKENS < 0:
        raise CasdapError(f"MODEL.DAP.NUM_DAP_TOKENS must be 0 (prompts off) or more, got {dap.NUM_DAP_TOKENS}")
    if dap.KEYS_PER_TASK < 1:
        raise CasdapError(f"MODEL.DAP.KEYS_PER_TASK must be at least 1, got {dap.KEYS_PER_TASK}")
    if dap.TASK_EMB < 1:
        raise CasdapError(f"MODEL.DAP.TASK_EMB must be at least 1, got {dap.TASK_EMB}")
    n_stages = len(VARIANTS[cfg.MODEL.BACKBONE][0]) if cfg.MODEL.BACKBONE in VARIANTS else None
    stages = list(dap.STAGES)
    if n_stages is not None and (not stages or any(not 0 <= int(s) < n_stages for s in stages)):
        raise CasdapError(f"MODEL.DAP.STAGES must name stages 0..{n_stages - 1} of {cfg.MODEL.BACKBONE}, got {stages}")


def build_dap_model(cfg) -> CASDAP:
    """CAS-DAP from a config: pretrained frozen backbone and ``MODEL.DAP.*`` settings."""
    check_dap_settings(cfg)
    return CASDAP(build_backbone(cfg, num_classes=0), num_classes=int(cfg.DATA.NUMBER_CLASSES), **dap_settings(cfg))

"""The checks of the settings every run reads, in one place and before any heavy import.

``casdap cl`` runs them right after loading, through :func:`casdap.continual.methods.check_config`,
which adds the checks of the method that runs (declared beside it); the runner runs them again for
configs built in Python. So a bad value is one line within a fraction of a second. The names below
are the ones the modules that use them accept (tests keep the two in step).
"""

from __future__ import annotations

from yacs.config import CfgNode

from casdap.errors import CasdapError

__all__ = ["validate", "at_least", "check_data_shares", "one_of"]

DATASET_NAMES = ("digits", "embedded_shift", "embedded_domains", "cifar100", "cifar10", "imagenet_r", "imagenetr",
                 "folder", "oxford_iiit_pet", "eurosat/rgb", "resisc45", "cropdisease", "isic", "chestx",
                 "domainnet/real")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("linear", "linear_decay", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")


def one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    """One error unless ``value`` (any case) is one of ``allowed``."""
    if value.lower() not in allowed:
        raise CasdapError(f"unknown {key} '{value}' (use one of {', '.join(allowed)})")


def at_least(key: str, value, low) -> None:
    """One error unless ``value`` is at least ``low``."""
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
    """Raise one :class:`CasdapError` naming the first bad key of the settings every run reads."""
    if cfg.DATA.NAME:
        one_of("DATA.NAME", cfg.DATA.NAME.replace("-", "_"), DATASET_NAMES)
    one_of("SOLVER.OPTIMIZER", cfg.SOLVER.OPTIMIZER, OPTIMIZERS)
    one_of("SOLVER.SCHEDULER", cfg.SOLVER.SCHEDULER, SCHEDULERS)
    device = cfg.DEVICE.lower()
    if device.split(":")[0] not in DEVICES:
        raise CasdapError(f"unknown DEVICE '{cfg.DEVICE}' (use auto, cpu or cuda)")
    at_least("SOLVER.TOTAL_EPOCH", cfg.SOLVER.TOTAL_EPOCH, 1)
    at_least("DATA.BATCH_SIZE", cfg.DATA.BATCH_SIZE, 1)
    if cfg.DATA.EVAL_BATCH_SIZE < 0:
        raise CasdapError(f"DATA.EVAL_BATCH_SIZE must be 0 (use DATA.BATCH_SIZE) or positive, "
                          f"got {cfg.DATA.EVAL_BATCH_SIZE}")
    at_least("DATA.CROPSIZE", cfg.DATA.CROPSIZE, 1)
    check_data_shares(cfg)

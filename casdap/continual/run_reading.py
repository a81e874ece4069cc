"""A continual run's directory read back: the newest usable checkpoint to resume from, a finished
run's metrics, and whether the settings of a resumption match the run's.

The directory is written by :class:`casdap.continual.run_directory.RunDirectoryPlugin`; its layout
(the checkpoint folder and format) is named here, where it is read.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

from yacs.config import CfgNode

from casdap.checkpoint import TASK_CHECKPOINT, numbered_checkpoints, read_checkpoint
from casdap.errors import CasdapError

__all__ = ["CHECKPOINT_DIR", "CHECKPOINT_FORMAT", "RESULT_NEUTRAL_KEYS", "check_compatible", "finished_metrics",
           "read_resume_checkpoint", "settings_changed", "task_checkpoints"]

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FORMAT = "casdap-continual/1"


def task_checkpoints(out: Path) -> list[Path]:
    """The run's per-task checkpoints, newest first."""
    return [path for _, path in reversed(numbered_checkpoints(out / CHECKPOINT_DIR, TASK_CHECKPOINT))]


def read_resume_checkpoint(out: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of the run; an unreadable newer one is skipped with a warning."""
    for path in task_checkpoints(out):
        try:
            ckpt = read_checkpoint(path)
            if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
                raise CasdapError(f"'{path}' is not a continual-learning checkpoint of this version")
        except CasdapError as e:
            warnings.warn(f"skipping {path.name}, which cannot be used ({e}); trying the one before it", stacklevel=2)
            continue
        return path, ckpt
    return None


def finished_metrics(out: Path) -> dict[str, Any] | None:
    """The metrics of a finished run in ``out``, or None."""
    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(metrics, dict) and metrics.get("finished") and (out / "config.yaml").is_file():
        return metrics
    return None


# Settings that cannot change a run's results: they may differ between a run and its resumption.
# DATA.NUM_WORKERS is not one: loader workers draw the training augmentations from their own seeds,
# so the number of workers changes the images a run trains on.
RESULT_NEUTRAL_KEYS = frozenset({
    "OUTPUT_DIR", "DEVICE", "CUDNN_BENCHMARK", "NUM_GPUS", "NUM_SHARDS", "DIST_BACKEND", "DIST_INIT_PATH",
    "DIST_INIT_FILE", "DBG", "RUN_N_TIMES", "SOLVER.AUTO_RESUME", "SOLVER.LOG_EVERY_N", "SOLVER.DBG_TRAINABLE",
    "MODEL.SAVE_CKPT", "CONTINUAL.KEEP_TASK_CHECKPOINTS", "DATA.PIN_MEMORY", "DATA.DATAPATH",
})
# Paths compared by the file they name, not by their spelling.
_PATH_KEYS = frozenset({"MODEL.WEIGHT_PATH", "MODEL.MODEL_ROOT"})


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def settings_changed(saved_cfg: str, cfg: CfgNode, reads: Collection[str] | None = None) -> list[str]:
    """``KEY: old -> new`` for every setting that changes results and differs from the saved run.
    ``reads``: the keys the run's method reads (a saved ``config.yaml`` states only these; an older
    one may state more, which took no effect); None compares every key."""
    from casdap.config import get_defaults

    defaults = _flat(get_defaults())
    saved, now = _flat(CfgNode.load_cfg(saved_cfg)), _flat(cfg)
    changed = []
    for key in sorted(set(saved) | set(now)):
        if key in RESULT_NEUTRAL_KEYS or (reads is not None and key not in reads):
            continue
        old, new = saved.get(key, defaults.get(key)), now.get(key, defaults.get(key))
        if key in _PATH_KEYS and old and new:
            old_path, new_path = Path(str(old)).resolve(), Path(str(new)).resolve()
            if old_path == new_path:
                continue
        if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
            old, new = list(old), list(new)
        if old != new:
            changed.append(f"{key}: {old!r} -> {new!r}")
    return changed


def check_compatible(saved_cfg: str, cfg: CfgNode, out: Path, reads: Collection[str] | None = None) -> None:
    """Refuse to resume ``out`` under settings that would relabel its results (``reads``: as
    :func:`settings_changed`)."""
    changed = settings_changed(saved_cfg, cfg, reads)
    if changed:
        raise CasdapError(
            f"cannot resume '{out}': it was made with other settings, and resuming would label its results "
            f"with these ({'; '.join(changed)}). Use the run's own settings (casdap cl --config-file "
            f"{out / 'config.yaml'} --auto_resume True), or another OUTPUT_DIR for a new run"
        )

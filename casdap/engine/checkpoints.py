"""Training checkpoints: atomic writes, the last ``--save_ckpt_num`` kept plus the best, exact resume.

A checkpoint holds everything that decides the rest of a run: weights, optimizer, AMP grad
scaler, EMA weights, best accuracies, the epoch, and the random-number-generator states of every
rank (torch, CUDA, numpy, Python), so a run killed after epoch k and resumed ends exactly where
the uninterrupted run ends. The lr/weight-decay schedules and the samplers are functions of the
flags and the epoch (samplers reseed from ``seed + epoch``), so the epoch positions them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from casdap.checkpoint import read_checkpoint, save_checkpoint
from casdap.errors import CasdapError

_NUMBERED = re.compile(r"^checkpoint-(\d+)\.pth$")  # supervised: one per epoch
TASK_CHECKPOINT = re.compile(r"^task_(\d+)\.pth$")  # continual: one per finished task


def numbered_checkpoints(output_dir: str | Path, pattern: re.Pattern = _NUMBERED) -> list[tuple[int, Path]]:
    """``(number, path)`` of the files in ``output_dir`` whose name ``pattern`` matches (its group 1 is
    the number), oldest first: ``checkpoint-<epoch>.pth`` by default, a continual run's
    ``task_<t>.pth`` with :data:`TASK_CHECKPOINT`."""
    d = Path(output_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := pattern.match(p.name))]
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = numbered_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` numbered checkpoints (best checkpoints are separate files)."""
    found = numbered_checkpoints(output_dir)
    for _, path in found[: max(len(found) - max(keep, 1), 0)]:
        path.unlink(missing_ok=True)


def training_state(*, model, optimizer, scaler, model_ema, epoch: int, args: dict,
                   max_accuracy: float, max_accuracy_ema: float, rng_states: list[dict]) -> dict[str, Any]:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "args": args,
        "max_accuracy": max_accuracy,
        "max_accuracy_ema": max_accuracy_ema,
        "rng_states": rng_states,
    }
    if model_ema is not None:
        state["model_ema"] = model_ema.module.state_dict()
    return state


def write(state: dict[str, Any], path: str | Path) -> Path:
    """Atomic write: a kill mid-write leaves the previous file intact."""
    return save_checkpoint(state, path)


def read_training_state(path: str | Path) -> dict[str, Any]:
    obj = read_checkpoint(path)
    if not isinstance(obj, dict):
        raise CasdapError(f"checkpoint '{path}' holds a {type(obj).__name__}, not a training checkpoint")
    return obj

"""Training checkpoints: atomic writes, the last ``--save_ckpt_num`` kept plus the best, exact resume.

A checkpoint holds everything that decides the rest of a run: weights, optimizer, AMP grad
scaler, EMA weights, best accuracies, the epoch, and the random-number-generator states of every
rank (torch, CUDA, numpy, Python), so a run killed after epoch k and resumed ends exactly where
the uninterrupted run ends. The lr/weight-decay schedules and the samplers are functions of the
flags and the epoch (samplers reseed from ``seed + epoch``), so the epoch positions them.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from casdap.checkpoint import read_checkpoint, save_checkpoint
from casdap.errors import CasdapError

_NUMBERED = re.compile(r"^checkpoint-(\d+)\.pth$")


def capture_rng_state() -> dict[str, Any]:
    """This process's generator states, as tensors and plain containers (``weights_only``-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def numbered_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``checkpoint-<epoch>.pth`` files, oldest first."""
    d = Path(output_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NUMBERED.match(p.name))]
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

"""Seeding and the random state a resumed run restores: one definition for supervised training,
continual runs and pretraining."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "seed_everything"]


def seed_everything(seed: int, rank: int = 0) -> None:
    """Python, NumPy and torch generators from ``seed + rank`` (timm's ``random_seed``)."""
    from timm.utils import random_seed

    random_seed(int(seed), rank)


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


def _from_flat(state: dict[str, Any]) -> dict[str, Any]:
    """The flat layout continual-run checkpoints were first written with, in today's layout."""
    has_gauss, gauss = state["numpy_gauss"]
    out = {
        "torch": state["torch"],
        "numpy": {"keys": state["numpy"], "pos": state["numpy_pos"], "has_gauss": has_gauss, "gauss": gauss},
        "python": {"version": state["python_version"], "state": state["python"], "gauss": state["python_gauss"]},
    }
    if "cuda" in state:
        out["cuda"] = state["cuda"]
    return out


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` saved (either checkpoint layout)."""
    if "python_version" in state:
        state = _from_flat(state)
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

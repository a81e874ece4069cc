"""Reading, writing and finding checkpoints safely.

A checkpoint is untrusted input: it is always read with ``torch.load(weights_only=True)``, so a
crafted file cannot run code, and every failure becomes one :class:`CasdapError` naming the file.
Writes go to a temporary file that is renamed into place, so a kill mid-write never corrupts the
previous checkpoint.

Numbered checkpoints of a run folder (``checkpoint-<epoch>.pth`` of the supervised path, a continual
run's ``task_<t>.pth``) are found with :func:`numbered_checkpoints`. A supervised training checkpoint
(:func:`training_state`) holds everything that decides the rest of a run: weights, optimizer, AMP
grad scaler, EMA weights, best accuracies, the epoch, and the random-number-generator states of every
rank (torch, CUDA, numpy, Python), so a run killed after epoch k and resumed ends exactly where
the uninterrupted run ends. The lr/weight-decay schedules and the samplers are functions of the
flags and the epoch (samplers reseed from ``seed + epoch``), so the epoch positions them.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from casdap.errors import CasdapError

__all__ = [
    "LoadReport", "TASK_CHECKPOINT", "checkpoint_head", "drop_dense_only", "extract_state_dict", "latest_checkpoint",
    "load_checkpoint", "numbered_checkpoints", "prune_checkpoints", "read_checkpoint", "read_training_state",
    "save_checkpoint", "training_state",
]

# Containers used by the official CAS-ViT / ConvNeXt / DeiT training scripts and common tools.
_NESTED_KEYS = ("model", "state_dict", "module")
# Plain data classes that training scripts store beside the weights (``args``); safe to rebuild.
_SAFE_GLOBALS = [argparse.Namespace]
# Layers that exist only in the dense-prediction (``fork_feat``) variant of the official code.
_DENSE_ONLY_PREFIXES = ("norm0.", "norm2.", "norm4.", "norm6.")
_HEAD_PREFIXES = ("head.", "dist_head.")


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did, for logs."""

    path: str
    source_key: str | None
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {self.path}" + (f" ['{self.source_key}']" if self.source_key else "")]
        if self.dropped:
            parts.append(f"dropped {len(self.dropped)} tensors ({_short(self.dropped)})")
        if self.missing:
            parts.append(f"missing {len(self.missing)} ({_short(self.missing)})")
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)} ({_short(self.unexpected)})")
        return "; ".join(parts)


def _short(keys: list[str], n: int = 6) -> str:
    head = ", ".join(keys[:n])
    return head + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and one readable error for every failure."""
    p = Path(path)
    if not p.is_file():
        raise CasdapError(f"checkpoint '{p}' does not exist (or is not a file)")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only" in str(e).lower() or "unsupported global" in str(e).lower():
            raise CasdapError(
                f"checkpoint '{p}' holds pickled Python objects beyond tensors and plain "
                f"containers; refusing to load it because unpickling them could run code "
                f"({first}). Re-save only the state dict: torch.save({{'model': model.state_dict()}}, path)"
            ) from None
        raise CasdapError(f"checkpoint '{p}' is not a readable PyTorch file ({first})") from None
    except Exception as e:  # torch's readers fail in many ways on a damaged or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CasdapError(
            f"checkpoint '{p}' is truncated or not a PyTorch checkpoint ({type(e).__name__}: {first})"
        ) from None


def extract_state_dict(obj: Any, key: str | None = None, path: str = "<checkpoint>") -> tuple[dict, str | None]:
    """Find the state dict inside ``obj`` (bare, or under ``model``/``state_dict``/...).

    ``key`` selects a specific entry, e.g. ``"model_ema"``. Returns ``(state_dict, key_used)``
    with any ``module.`` prefix removed.
    """
    if not isinstance(obj, Mapping):
        raise CasdapError(f"checkpoint '{path}' holds a {type(obj).__name__}, not a state dict")
    used = None
    if key is not None:
        if key not in obj:
            have = ", ".join(sorted(map(str, obj.keys()))[:10])
            raise CasdapError(f"checkpoint '{path}' has no entry '{key}' (it has: {have})")
        obj, used = obj[key], key
    else:
        for k in _NESTED_KEYS:
            if k in obj and isinstance(obj[k], Mapping):
                obj, used = obj[k], k
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CasdapError(f"checkpoint '{path}' contains no tensors to load")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CasdapError(
            f"checkpoint '{path}' is not a state dict: entries {_short([str(b) for b in bad], 4)} "
            "are not tensors"
        )
    sd = OrderedDict()
    for k, v in obj.items():
        sd[k[len("module."):] if k.startswith("module.") else k] = v
    return sd, used


def drop_dense_only(sd: dict, target: Mapping[str, Any]) -> list[str]:
    """Remove from ``sd`` (in place) the norms that only the official dense-prediction variant has,
    where ``target`` (the model's state dict) lacks them; return the removed keys."""
    dropped = [k for k in sd if k.startswith(_DENSE_ONLY_PREFIXES) and k not in target]
    for k in dropped:
        del sd[k]
    return dropped


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    key: str | None = None,
    strict: bool = True,
    finetune: bool = False,
    map_location: str | torch.device = "cpu",
) -> LoadReport:
    """Load weights into ``model`` from an official CAS-ViT file or any common layout.

    Accepts ``{"model": sd}``, ``{"state_dict": sd}``, ``{key: sd}`` for an explicit ``key``
    (e.g. ``"model_ema"``), or a bare state dict; a ``module.`` prefix is stripped.

    ``strict`` (default) refuses any missing key, unexpected key or shape mismatch and lists
    them. ``finetune`` drops ``head``/``dist_head`` tensors whose shape differs from the model
    (a new class count) and reports what it dropped; the head keeps its fresh initialisation.
    """
    obj = read_checkpoint(path, map_location)
    sd, used = extract_state_dict(obj, key, str(path))
    report = LoadReport(str(path), used)

    upgrade = getattr(model, "upgrade_state_dict", None)
    if callable(upgrade):  # a model's older layouts (a run's checkpoint written by an earlier version)
        upgrade(sd)
    target = model.state_dict()
    report.dropped.extend(drop_dense_only(sd, target))
    if finetune:
        for k in list(sd):
            if k.startswith(_HEAD_PREFIXES) and (k not in target or sd[k].shape != target[k].shape):
                report.dropped.append(k)
                del sd[k]

    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in sd.items()
        if k in target and v.shape != target[k].shape
    ]
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    if finetune:
        missing_ok = [k for k in missing if k.startswith(_HEAD_PREFIXES)]
        missing = [k for k in missing if k not in missing_ok]
    else:
        missing_ok = []
    if mismatched or (strict and (missing or unexpected)):
        lines = [f"checkpoint '{path}' does not fit the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {_short(mismatched, 4)}")
        if any(m.startswith(_HEAD_PREFIXES) for m in mismatched):
            lines.append("  (a different class count: load in fine-tuning mode to drop the head)")
        raise CasdapError("\n".join(lines))
    for k in unexpected:
        del sd[k]
    model.load_state_dict(sd, strict=False)
    report.missing = missing + missing_ok
    report.unexpected = unexpected
    return report


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` with ``torch.save`` atomically: temp file in the same folder, then rename."""
    from casdap.files import atomic_path

    with atomic_path(path) as tmp, tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def checkpoint_head(path: str | os.PathLike, key: str | None = None) -> tuple[bool, int | None]:
    """Whether the checkpoint at ``path`` has a distillation head, and its head's class count
    (None without a classification head)."""
    sd, _ = extract_state_dict(read_checkpoint(path), key, path)
    head = sd.get("head.weight")
    return "dist_head.weight" in sd, (int(head.shape[0]) if head is not None and head.ndim == 2 else None)


# -- numbered checkpoints of a run folder, and the supervised path's training state -------------

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


def read_training_state(path: str | Path) -> dict[str, Any]:
    obj = read_checkpoint(path)
    if not isinstance(obj, dict):
        raise CasdapError(f"checkpoint '{path}' holds a {type(obj).__name__}, not a training checkpoint")
    return obj

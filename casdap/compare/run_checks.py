"""Checks every reader of :mod:`casdap.compare` shares: an accuracy matrix of fractions, a nested
config flattened to dotted keys, a JSON file read with the reason it cannot be."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from casdap.compare.records import RunError
from casdap.run_metrics import Matrix

__all__ = ["check_matrix", "flatten", "read_json"]



def check_matrix(a: Any, n_tasks: int, where: str, full: bool = False) -> Matrix:
    """Validate a lower-triangular accuracy matrix of fractions; entries above the diagonal become
    None unless ``full`` (every task evaluated in every row)."""
    if not isinstance(a, list) or not all(isinstance(row, list) for row in a):
        raise RunError(f"{where}: acc_matrix must be a list of rows (lists)")
    out: Matrix = []
    for i, row in enumerate(a):
        if len(row) != n_tasks:
            raise RunError(
                f"{where}: mismatched task counts: row {i} of acc_matrix has {len(row)} entries "
                f"but n_tasks is {n_tasks}"
            )
        clean: list[float | None] = []
        for j, v in enumerate(row):
            if j > i and not full:
                clean.append(None)
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise RunError(f"{where}: acc_matrix[{i}][{j}] is {v!r}; tasks seen so far need a number")
            if not 0.0 <= v <= 1.0:
                raise RunError(
                    f"{where}: acc_matrix[{i}][{j}] = {v} is outside [0, 1]; accuracies must be fractions, not percent"
                )
            clean.append(float(v))
        out.append(clean)
    return out


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {}
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: malformed JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: cannot be read ({e})") from None

"""The continual-learning metrics of an accuracy matrix, and the fields of a run's ``metrics.json``.

``A[i][j]`` is the accuracy (a fraction) on task ``j``'s test set after training task ``i``;
``None`` where ``j > i`` (not seen yet). Joint training has a single row, after training on every
task at once, with every task evaluated: it has no per-task history.

Nothing here imports torch or numpy: ``casdap compare`` reads finished runs with these definitions
(``casdap.continual.results``, the writer, re-exports them).
"""

from __future__ import annotations

from statistics import mean
from typing import Any

__all__ = [
    "METRICS_FIELDS",
    "Matrix",
    "average_accuracy_curve",
    "backward_transfer",
    "final_accuracy",
    "forgetting",
    "forgetting_per_task",
    "learning_accuracy",
    "metrics_value",
    "summarize",
]

Matrix = list[list[float | None]]

# The fields of metrics.json, as ``casdap.continual.runner`` writes it after every task, and the
# type of each value; null where a run does not measure it (e.g. task selection but for DAP).
# CIL = final_acc is bounded by WTP (the true task given) and TII (the task inferred): a prompt
# method's inferred task is the one whose prompts it used, another method's the task of its
# predicted class.
METRICS_FIELDS: dict[str, type] = {
    "method": str,
    "backbone": str,
    "dataset": str,
    "seed": int,
    "n_tasks": int,
    "tasks_done": int,
    "finished": bool,
    "acc_matrix": list,
    "wtp_matrix": list,  # rows like acc_matrix's: within-task prediction (true task given, its classes only)
    "tii_matrix": list,  # rows like acc_matrix's: share of the task's test images whose inferred task is right
    "final_acc": float,  # class-incremental accuracy (CIL)
    "forgetting": float,
    "learning_acc": float,
    "bwt": float,
    "wtp": float,  # mean of wtp_matrix's last row
    "tii": float,  # mean of tii_matrix's last row
    "task_selection_acc": float,
    "mixed_stream_acc": float,
    "selection": str,
    "random_init_backbone": bool,
    "wall_time_s": float,
    "trainable_params": int,
    "total_params": int,
    "train_images_per_s": float,
}


def metrics_value(metrics: dict[str, Any], name: str) -> Any:
    """Field ``name`` of a metrics.json object in its declared type; None when absent or null.

    A number field holding something else raises ValueError (its message names the field); a text
    field holding something else reads as None.
    """
    kind = METRICS_FIELDS[name]
    v = metrics.get(name)
    if v is None:
        return None
    if kind in (int, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"'{name}' should be a number, got {v!r}")
        return kind(v)
    if kind is str:
        return v if isinstance(v, str) else None
    if kind is bool:
        return bool(v)
    return v


def _last_row(a: Matrix) -> list[float] | None:
    if not a or a[-1] is None or any(v is None for v in a[-1]):
        return None
    return a[-1]


def final_accuracy(a: Matrix) -> float | None:
    """Mean accuracy over all tasks after the last one."""
    last = _last_row(a)
    return mean(last) if last else None


def forgetting_per_task(a: Matrix) -> list[float] | None:
    """For every task but the last: the best accuracy ever reached on it minus the final one.

    None without a per-task history (no full last row, or a task never evaluated right after it
    was learned, as in joint training)."""
    last = _last_row(a)
    if last is None or any(a[j][j] is None for j in range(len(a) - 1)):
        return None
    return [max(row[j] for row in a if row[j] is not None) - last[j] for j in range(len(a) - 1)]


def forgetting(a: Matrix) -> float | None:
    """DAP's definition: mean over ``j < T-1`` of ``max_i A[i][j] - A[T-1][j]``."""
    drops = forgetting_per_task(a)
    return mean(drops) if drops else None  # a single task has nothing to forget


def learning_accuracy(a: Matrix) -> float | None:
    """Mean of the diagonal: each task's accuracy right after learning it."""
    diag = [a[i][i] for i in range(len(a))]
    return None if any(v is None for v in diag) or not diag else mean(diag)


def backward_transfer(a: Matrix) -> float | None:
    """Mean over ``j < T-1`` of ``A[T-1][j] - A[j][j]`` (negative: forgetting)."""
    last = _last_row(a)
    if last is None or len(a) < 2 or any(a[j][j] is None for j in range(len(a) - 1)):
        return None
    return mean(last[j] - a[j][j] for j in range(len(a) - 1))


def average_accuracy_curve(a: Matrix) -> list[float]:
    """Mean accuracy over the tasks seen so far, after each task."""
    return [mean(v for v in row[: i + 1] if v is not None) for i, row in enumerate(a)]


def summarize(a: Matrix, joint: bool = False) -> dict[str, float | None]:
    """Final accuracy, forgetting, learning accuracy (LA) and backward transfer (BWT).

    ``joint``: ``a`` is the single row of joint training; only its final accuracy has a meaning."""
    if joint:
        return {"final_acc": final_accuracy(a), "forgetting": None, "learning_acc": None, "bwt": None}
    return {
        "final_acc": final_accuracy(a),
        "forgetting": forgetting(a),
        "learning_acc": learning_accuracy(a),
        "bwt": backward_transfer(a),
    }

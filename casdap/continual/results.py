"""Continual-learning metrics from the accuracy matrix, and the files of a run directory.

``A[i][j]`` is the accuracy (a fraction) on task ``j``'s test set after training task ``i``;
``None`` where ``j > i`` (not seen yet) or where a method reports no row (joint training).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np

__all__ = [
    "final_accuracy",
    "forgetting",
    "learning_accuracy",
    "backward_transfer",
    "summarize",
    "write_json",
    "write_acc_matrix_csv",
    "write_final_results",
    "format_summary_table",
]

Matrix = list[list[float | None]]


def _last_row(a: Matrix) -> list[float] | None:
    if not a or a[-1] is None or any(v is None for v in a[-1]):
        return None
    return a[-1]


def final_accuracy(a: Matrix) -> float | None:
    """Mean accuracy over all tasks after the last one."""
    last = _last_row(a)
    return mean(last) if last else None


def forgetting(a: Matrix) -> float | None:
    """DAP's definition: mean over ``j < T-1`` of ``max_i A[i][j] - A[T-1][j]``."""
    last = _last_row(a)
    if last is None or len(a) < 2 or any(a[j][j] is None for j in range(len(a) - 1)):
        return None  # no history to forget from (e.g. joint training)
    drops = []
    for j in range(len(a) - 1):
        seen = [row[j] for row in a if row[j] is not None]
        drops.append(max(seen) - last[j])
    return mean(drops)


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


def summarize(a: Matrix) -> dict[str, float | None]:
    return {
        "final_acc": final_accuracy(a),
        "forgetting": forgetting(a),
        "learning_acc": learning_accuracy(a),
        "bwt": backward_transfer(a),
    }


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_acc_matrix_csv(path: Path, a: Matrix, n_tasks: int) -> None:
    """Header ``after_task,task_0,...``; one row per finished task; empty cells for unseen tasks
    (joint training: one row, after the last task)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["after_task", *[f"task_{j}" for j in range(n_tasks)]])
    offset = n_tasks - len(a) if len(a) == 1 and all(v is not None for v in a[0]) else 0
    for i, row in enumerate(a, start=offset):
        w.writerow([i, *["" if v is None else f"{v:.6f}" for v in row]])
    write_text(path, buf.getvalue())


def write_final_results(path: Path, cfg_text: str, a: Matrix, n_tasks: int, notes: list[str] = ()) -> None:
    """DAP's ``final_results.txt``: the config, the matrix (row = evaluated task, column = after
    training task, 0 where not evaluated, as DAP prints it), then final accuracy, forgetting, LA.

    ``notes`` (e.g. a non-default evaluation protocol) are appended after DAP's lines.
    """
    dap = np.zeros((n_tasks, n_tasks))
    offset = n_tasks - len(a) if len(a) == 1 and all(v is not None for v in a[0]) else 0  # joint: last column
    for i, row in enumerate(a, start=offset):
        for j, v in enumerate(row):
            if v is not None:
                dap[j, i] = v
    s = summarize(a)
    if offset:
        s["forgetting"] = s["learning_acc"] = None

    def fmt(v: float | None) -> str:
        return "nan" if v is None else f"{v:.5f}"

    lines = [
        cfg_text.rstrip("\n"),
        "\n\n",
        str(np.round(dap, 5)),
        f"\nFinal test Accuracy: {fmt(s['final_acc'])}",
        f"\nFinal test Forget: {fmt(s['forgetting'])}",
        f"\nFinal test LA: {fmt(s['learning_acc'])}",
    ]
    lines += [f"\n{n}" for n in notes]
    write_text(path, "\n".join(lines) + "\n")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def format_summary_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of run summaries (accuracies in percent)."""
    header = ["method", "dataset", "selection", "final acc", "forgetting", "LA", "BWT", "task sel", "mixed",
              "wall s"]
    body = [
        [
            str(r["method"]), str(r["dataset"]), str(r.get("selection") or "-"), _pct(r["final_acc"]),
            _pct(r["forgetting"]), _pct(r["learning_acc"]), _pct(r["bwt"]), _pct(r["task_selection_acc"]),
            _pct(r["mixed_stream_acc"]), f"{r['wall_time_s']:.1f}",
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    return "\n".join(out)

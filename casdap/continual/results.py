"""The files of a run directory, and the continual-learning metrics of its accuracy matrix.

``A[i][j]`` is the accuracy (a fraction) on task ``j``'s test set after training task ``i``;
``None`` where ``j > i`` (not seen yet) or where a method reports no row (joint training).
The metrics and the fields of ``metrics.json`` are defined once, in :mod:`casdap.run_metrics`
(free of torch, for ``casdap compare``), and re-exported here.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from casdap.files import write_json, write_text
from casdap.run_metrics import (
    METRICS_FIELDS,
    Matrix,
    backward_transfer,
    final_accuracy,
    forgetting,
    forgetting_per_task,
    learning_accuracy,
    summarize,
)

__all__ = [
    "METRICS_FIELDS",
    "final_accuracy",
    "forgetting",
    "learning_accuracy",
    "backward_transfer",
    "forgetting_per_task",
    "summarize",
    "write_json",
    "write_acc_matrix_csv",
    "write_final_results",
    "format_summary_table",
]


def _joint_offset(a: Matrix, n_tasks: int) -> int:
    """Index of the first row: joint training writes its single, complete row after the last task."""
    return n_tasks - len(a) if len(a) == 1 and all(v is not None for v in a[0]) else 0


def write_acc_matrix_csv(path: Path, a: Matrix, n_tasks: int) -> None:
    """Header ``after_task,task_0,...``; one row per finished task; empty cells for unseen tasks
    (joint training: one row, after the last task)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["after_task", *[f"task_{j}" for j in range(n_tasks)]])
    for i, row in enumerate(a, start=_joint_offset(a, n_tasks)):
        w.writerow([i, *["" if v is None else f"{v:.6f}" for v in row]])
    write_text(path, buf.getvalue())


def write_final_results(path: Path, cfg_text: str, a: Matrix, n_tasks: int, notes: list[str] = ()) -> None:
    """DAP's ``final_results.txt``: the config, the matrix (row = evaluated task, column = after
    training task, 0 where not evaluated, as DAP prints it), then final accuracy, forgetting, LA.

    ``notes`` (e.g. a non-default evaluation protocol) are appended after DAP's lines.
    """
    dap = np.zeros((n_tasks, n_tasks))
    offset = _joint_offset(a, n_tasks)  # joint: the last column
    for i, row in enumerate(a, start=offset):
        for j, v in enumerate(row):
            if v is not None:
                dap[j, i] = v
    s = summarize(a, joint=offset > 0)

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

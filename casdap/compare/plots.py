"""The plots of a comparison: matplotlib Figure objects on the Agg canvas (no display, no global
pyplot state). matplotlib and numpy are imported only when a plot is drawn."""

from __future__ import annotations

import re
from pathlib import Path

from casdap.compare.records import Comparison, RunRecord

# Plot sizes in inches at PLOT_DPI: every PNG has a fixed pixel size, whatever the number of runs.
PLOT_DPI = 100
CURVE_SIZE = (10.0, 5.0)  # wide enough for the legend beside the axes
HEATMAP_SIZE = (6.0, 5.0)

# Runs without a matrix (supervised, joint) are horizontal reference lines; more than ten curves
# reuse the ten default colours with another line style.
_REFERENCE_STYLES = ["--", ":", "-."]
_CURVE_STYLES = ["-", "--", ":"]


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# Tasks are numbered from 0 everywhere a run writes them (acc_matrix.csv, checkpoints/task_000.pth).
TASK_AXIS = "after training task (0 = the first, as in acc_matrix.csv)"


def _task_axis(ax, n_tasks: int) -> None:
    ax.set_xticks(range(n_tasks))
    ax.set_xlabel(TASK_AXIS)
    ax.grid(alpha=0.3)


def _legend_outside(ax) -> None:
    """The legend right of the axes, so it never covers a curve or a bar; a long one makes the
    figure taller instead of squeezing the axes."""
    labels = ax.get_legend_handles_labels()[1]
    fig = ax.figure
    width, height = fig.get_size_inches()
    longest = max((len(label) for label in labels), default=0)
    fig.set_size_inches(max(width, 6.0 + 0.065 * longest), max(height, 0.16 * len(labels) + 1.0))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _save_accuracy_curves(fig, ax, n_tasks: int, title: str, path: Path) -> None:
    _task_axis(ax, n_tasks)
    ax.set_ylabel("average accuracy over seen tasks (%)")
    ax.set_title(title)
    _legend_outside(ax)
    fig.savefig(path)


def plot_avg_accuracy(comp: Comparison, path: Path) -> None:
    fig = _figure(CURVE_SIZE)
    ax = fig.add_subplot()
    continual = [r for r in comp.runs if r.acc_matrix]
    n = continual[0].n_tasks
    for k, r in enumerate(continual):
        ax.plot(range(n), [100 * v for v in r.avg_acc_curve()], marker="o", label=f"{r.name}: {r.label}",
                linestyle=_CURVE_STYLES[k // 10 % 3])
    for k, r in enumerate(r for r in comp.runs if not r.acc_matrix):
        ax.axhline(100 * r.final_acc, linestyle=_REFERENCE_STYLES[k % 3], color="black", alpha=0.7,
                   label=f"{r.name}: {r.label}")
    _save_accuracy_curves(fig, ax, n, "Average accuracy after each task", path)


def plot_avg_accuracy_seeds(comp: Comparison, path: Path) -> None:
    fig = _figure(CURVE_SIZE)
    ax = fig.add_subplot()
    groups = [g for g in comp.groups if g.first.acc_matrix]
    n = groups[0].first.n_tasks
    x = list(range(n))
    for g in groups:
        mean, std = g.curve_stats()
        (line,) = ax.plot(x, [100 * m for m in mean], marker="o", label=f"{g.label} (n={len(g.runs)})",
                          linestyle=_CURVE_STYLES[groups.index(g) // 10 % 3])
        if len(g.runs) > 1:
            ax.fill_between(x, [100 * (m - s) for m, s in zip(mean, std)], [100 * (m + s) for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.2)
    for k, g in enumerate(g for g in comp.groups if not g.first.acc_matrix):
        mean, _ = g.stats("final_acc")
        ax.axhline(100 * mean, linestyle=_REFERENCE_STYLES[k % 3], color="black", alpha=0.7,
                   label=f"{g.label} (n={len(g.runs)})")
    _save_accuracy_curves(fig, ax, n, "Average accuracy after each task: mean ± std over seeds", path)


def plot_forgetting(comp: Comparison, path: Path) -> None:
    fig = _figure(CURVE_SIZE)
    ax = fig.add_subplot()
    continual = [r for r in comp.runs if r.acc_matrix]
    n = continual[0].n_tasks
    width = 0.8 / len(continual)
    for k, r in enumerate(continual):
        xs = [j - 0.4 + width * (k + 0.5) for j in range(n - 1)]
        ax.bar(xs, [100 * f for f in r.forgetting_per_task()], width=width, label=f"{r.name}: {r.label}")
    ax.set_xticks(range(n - 1))
    ax.set_xlabel("task (0 = the first, as in acc_matrix.csv)")
    ax.set_ylabel("forgetting (%): best accuracy minus final")
    ax.set_title("Forgetting per task at the end of the stream")
    ax.grid(alpha=0.3, axis="y")
    _legend_outside(ax)
    fig.savefig(path)


def plot_heatmap(run: RunRecord, path: Path) -> None:
    import numpy as np

    a = np.array([[np.nan if v is None else 100 * v for v in row] for row in run.acc_matrix], dtype=float)
    n = a.shape[0]
    fig = _figure(HEATMAP_SIZE)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(a), vmin=0, vmax=100, cmap="viridis")
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    ticks = range(n)
    ax.set_xticks(ticks, [str(j) for j in ticks])
    ax.set_yticks(ticks, [str(i) for i in ticks])
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training task")
    ax.set_title(f"{run.name}: {run.label}", fontsize=9)
    if n <= 12:
        for i in range(n):
            for j in range(i + 1):
                ax.text(j, i, f"{a[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="black" if a[i, j] > 60 else "white")
    fig.savefig(path)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"




def write_plots(comp: Comparison, out: Path) -> list[Path]:
    """The PNG plots into ``out`` (none when no run has a per-task history); returns the files written."""
    written: list[Path] = []
    if not any(r.acc_matrix for r in comp.runs):
        return written
    plots = [("avg_accuracy.png", plot_avg_accuracy)]
    if any(len(g.runs) > 1 and g.first.acc_matrix for g in comp.groups):
        plots.append(("avg_accuracy_seeds.png", plot_avg_accuracy_seeds))
    if next(r.n_tasks for r in comp.runs if r.acc_matrix) > 1:
        plots.append(("forgetting_per_task.png", plot_forgetting))
    for name, plot in plots:
        plot(comp, out / name)
        written.append(out / name)
    (out / "heatmaps").mkdir(exist_ok=True)
    for r in comp.runs:
        if r.acc_matrix:
            path = out / "heatmaps" / f"{_slug(r.name)}.png"
            plot_heatmap(r, path)
            written.append(path)
    return written

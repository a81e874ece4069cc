"""Set continual-learning runs, supervised runs and DAP reference results side by side.

Three kinds of input are normalised into one :class:`RunRecord` (:mod:`.readers`):

- a continual-learning run directory (``metrics.json``, ``acc_matrix.csv``, ``config.yaml``);
- a supervised CAS-ViT run directory (``log.txt`` with one JSON object per epoch, optional
  ``args.json``, ``checkpoint-*.pth``): its final test accuracy on all classes is the joint
  reference;
- a ``final_results.txt`` written by the DAP reference code (naver-ai/dap-cl), alone or in its
  folder, so a published-protocol run can sit beside ours.

Accuracy matrices follow one convention everywhere: ``A[i][j]`` is the accuracy (a fraction) on
task j's test set after training task i, ``None`` for ``j > i``. DAP's own file stores the
transpose (row = evaluated task, column = training step, zeros for unseen tasks); the reader
turns it around. The metrics (final accuracy, forgetting, LA, BWT) and the fields of
``metrics.json`` are those of :mod:`casdap.run_metrics`.

Runs that differ only by seed are grouped (:mod:`.records`), shown as tables (:mod:`.tables`)
and plots (:mod:`.plots`; matplotlib is imported only when a plot is drawn), and written by
:func:`write_outputs`.
"""

from casdap.compare.dap_results import load_dap_results, parse_cfg_dump
from casdap.compare.outputs import report, write_outputs
from casdap.compare.plots import (
    CURVE_SIZE,
    HEATMAP_SIZE,
    PLOT_DPI,
    plot_avg_accuracy,
    plot_avg_accuracy_seeds,
    plot_forgetting,
    plot_heatmap,
    write_plots,
)
from casdap.compare.readers import load_continual_run, load_run, load_runs, load_supervised_run, read_acc_matrix_csv
from casdap.compare.records import TAG_MEANINGS, Comparison, RunError, RunGroup, RunRecord, group_runs
from casdap.compare.tables import group_table, markdown_table, run_table, tag_notes, text_table

__all__ = [
    "CURVE_SIZE",
    "HEATMAP_SIZE",
    "PLOT_DPI",
    "TAG_MEANINGS",
    "Comparison",
    "RunError",
    "RunGroup",
    "RunRecord",
    "group_runs",
    "group_table",
    "load_continual_run",
    "load_dap_results",
    "load_run",
    "load_runs",
    "load_supervised_run",
    "markdown_table",
    "parse_cfg_dump",
    "plot_avg_accuracy",
    "plot_avg_accuracy_seeds",
    "plot_forgetting",
    "plot_heatmap",
    "read_acc_matrix_csv",
    "run_table",
    "tag_notes",
    "text_table",
    "report",
    "write_outputs",
    "write_plots",
]

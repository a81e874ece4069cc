"""The comparison as tables: fixed-width text for the console, Markdown and CSV for the files."""

from __future__ import annotations

import csv
import io
import math

from casdap.compare.paired import CONFIDENCE, PAIRED_METRICS, PairedDifference
from casdap.compare.records import TAG_MEANINGS, Comparison, RunGroup, RunRecord

_METRICS = [  # (attribute, column title, kind); the two parameter counts share one column in tables
    ("final_acc", "Final acc (%)", "pct"),
    ("wtp", "WTP (%)", "pct"),
    ("tii", "TII (%)", "pct"),
    ("forgetting", "Forgetting (%)", "pct"),
    ("learning_acc", "LA (%)", "pct"),
    ("bwt", "BWT (%)", "pct"),
    ("task_selection_acc", "Task sel. (%)", "pct"),
    ("mixed_stream_acc", "Mixed stream (%)", "pct"),
    ("trainable_params", "Trainable", "count"),
    ("total_params", "Total params", "count"),
    ("wall_time_s", "Wall time", "time"),
    ("train_images_per_s", "Train img/s", "rate"),
]
# Printed on the console; the files carry every column.
_CONSOLE_SKIP = {"mixed_stream_acc"}


def _fmt(value: float | None, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "pct":
        return f"{100 * value:.2f}"
    if kind == "count":
        for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
            if abs(value) >= div:
                return f"{value / div:.2f}{unit}"
        return f"{value:.0f}"
    if kind == "time":
        if value < 120:
            return f"{value:.1f} s"
        return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.2f} h"
    return f"{value:.0f}"


def _fmt_stats(mean: float | None, std: float | None, kind: str) -> str:
    text = _fmt(mean, kind)
    if std is None or mean is None:
        return text
    return f"{text} ± {_fmt(std, kind).split()[0]}"


def _columns(console: bool) -> list[tuple[str, str, str]]:
    cols = [m for m in _METRICS if not (console and m[0] in _CONSOLE_SKIP)]
    return [c for c in cols if c[0] != "total_params"]


def _params(trainable: float | None, total: float | None) -> str:
    if trainable is None and total is None:
        return "-"
    return f"{_fmt(trainable, 'count')} / {_fmt(total, 'count')}"


def _title(attr: str, title: str) -> str:
    return "Params (trainable / total)" if attr == "trainable_params" else title


def run_table(runs: list[RunRecord], console: bool = False) -> tuple[list[str], list[list[str]]]:
    cols = _columns(console)
    header = ["Run", "Method", "Backbone", "Dataset", "Tasks", "Seed"] + [_title(a, t) for a, t, _ in cols]
    rows = []
    for r in runs:
        cells = []
        for a, _, k in cols:
            cells.append(_params(r.trainable_params, r.total_params) if a == "trainable_params"
                         else _fmt(getattr(r, a), k))
        rows.append([r.name, r.label, r.backbone or "-", r.dataset or "-", str(r.n_tasks or "-"),
                     "-" if r.seed is None else str(r.seed), *cells])
    return header, rows


def group_table(groups: list[RunGroup], console: bool = False) -> tuple[list[str], list[list[str]]]:
    cols = _columns(console)
    header = ["Method", "Backbone", "Dataset", "Tasks", "Seeds"] + [_title(a, t) for a, t, _ in cols]
    rows = []
    for g in groups:
        f = g.first
        seeds = ",".join("?" if r.seed is None else str(r.seed) for r in g.runs)
        cells = []
        for a, _, k in cols:
            if a == "trainable_params":  # fixed by the method: the mean, no spread
                cells.append(_params(g.stats(a)[0], g.stats("total_params")[0]))
            else:
                cells.append(_fmt_stats(*g.stats(a), k))
        rows.append([g.label, f.backbone or "-", f.dataset or "-", str(f.n_tasks or "-"), f"{len(g.runs)} ({seeds})",
                     *cells])
    return header, rows


def _pts(value: float) -> str:
    return f"{100 * value:+.2f}"


def _seed_list(seeds: list[int]) -> str:
    return ",".join(map(str, seeds))


def paired_table(diffs: list[PairedDifference]) -> tuple[list[str], list[list[str]]]:
    """One row per pair of groups and metric: the mean paired difference in points and its interval."""
    titles = dict(PAIRED_METRICS)
    header = ["A", "B", "Metric", "Seeds paired", "A - B (pts)", f"{CONFIDENCE:.0%} CI (pts)", "Verdict",
              "Unpaired seeds"]
    rows = []
    for d in diffs:
        ci = d.interval
        unpaired = "; ".join(f"{which} only: {_seed_list(s)}" for which, s in (("A", d.only_a), ("B", d.only_b)) if s)
        rows.append([d.a.label, d.b.label, titles[d.metric], f"{d.n} ({_seed_list(d.seeds)})", _pts(d.mean),
                     "-" if ci is None else f"[{_pts(ci[0])}, {_pts(ci[1])}]", d.verdict, unpaired or "-"])
    return header, rows


def paired_csv(diffs: list[PairedDifference]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["a", "b", "metric", "n_paired", "seeds", "mean_diff", "ci_low", "ci_high", "confidence",
                "diffs", "only_a", "only_b"])
    for d in diffs:
        ci = d.interval
        w.writerow([d.a.label, d.b.label, d.metric, d.n, " ".join(map(str, d.seeds)), d.mean,
                    "" if ci is None else ci[0], "" if ci is None else ci[1], CONFIDENCE,
                    " ".join(repr(x) for x in d.diffs), " ".join(map(str, d.only_a)), " ".join(map(str, d.only_b))])
    return buf.getvalue()


PAIRED_NOTE = ("A - B is the mean over the seeds both groups ran of the per-seed difference, in points; the interval "
               "is the two-sided {conf:.0%} paired t-interval over those differences (n - 1 degrees of freedom, none "
               "with one seed). Verdict: the interval excludes 0 (a > b or a < b) or holds it (n.s.).")


def tag_notes(runs: list[RunRecord]) -> list[str]:
    """One line per protocol tag in use, saying what it means."""
    used = {t for r in runs for t in r.tags}
    return [f"[{t}] {meaning}" for t, meaning in TAG_MEANINGS.items() if t in used]


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(out)


def runs_csv(runs: list[RunRecord]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    attrs = [a for a, _, _ in _METRICS]
    w.writerow(["run", "path", "kind", "method", "protocol", "backbone", "dataset", "n_tasks", "seed",
                "selection", "random_init_backbone", *attrs])
    for r in runs:
        w.writerow([r.name, str(r.path), r.kind, r.method, "; ".join(r.tags), r.backbone or "", r.dataset or "",
                    r.n_tasks or "", "" if r.seed is None else r.seed, r.selection or "", r.random_init_backbone,
                    *["" if getattr(r, a) is None else getattr(r, a) for a in attrs]])
    return buf.getvalue()


def groups_csv(groups: list[RunGroup]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    attrs = [a for a, _, _ in _METRICS]
    w.writerow(["group", "method", "backbone", "dataset", "n_tasks", "n_seeds", "seeds", "runs",
                *[f"{a}_{s}" for a in attrs for s in ("mean", "std")]])
    for g in groups:
        f = g.first
        cells = []
        for a in attrs:
            mean, std = g.stats(a)
            cells += ["" if mean is None else mean, "" if std is None else std]
        w.writerow([g.label, f.method, f.backbone or "", f.dataset or "", f.n_tasks or "", len(g.runs),
                    " ".join("" if r.seed is None else str(r.seed) for r in g.runs),
                    " ".join(r.name for r in g.runs), *cells])
    return buf.getvalue()



def summary_markdown(comp: Comparison) -> str:
    """summary.md: the method table, the run table, what the tags mean and the runs not compared."""
    md = ["# Run comparison", "", "Accuracies in percent; groups show mean ± sample std over seeds.", "",
          "## Methods", "", markdown_table(*group_table(comp.groups)), "", "## Runs", "",
          markdown_table(*run_table(comp.runs)), ""]
    md += [f"- {note}" for note in tag_notes(comp.runs)] + [""] * bool(tag_notes(comp.runs))
    if comp.paired:
        md += ["## Paired differences", "", PAIRED_NOTE.format(conf=CONFIDENCE), "",
               markdown_table(*paired_table(comp.paired)), ""]
    flat = [r.name for r in comp.runs if not r.acc_matrix]
    if flat and any(r.acc_matrix for r in comp.runs):
        md += ["## Plots", "", "Runs drawn as a horizontal line, with no heatmap and no forgetting bars (no per-task "
               "history: joint or supervised training, one evaluation after seeing every class): "
               + ", ".join(f"`{n}`" for n in flat) + ".", "Tasks are numbered from 0 in the plots, as in "
               "`acc_matrix.csv`.", ""]
    if comp.skipped:
        md += ["## Not compared", ""] + [f"- `{p}`: {reason}" for p, reason in comp.skipped] + [""]
    return "\n".join(md)

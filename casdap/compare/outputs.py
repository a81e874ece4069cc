"""The files of a comparison (summary.md, summary.csv, runs.csv, the plots) and the console report."""

from __future__ import annotations

import sys
from pathlib import Path

from casdap.compare.paired import CONFIDENCE, paired_differences
from casdap.compare.plots import write_plots
from casdap.compare.readers import load_runs
from casdap.compare.records import Comparison
from casdap.compare.tables import (
    PAIRED_NOTE,
    group_table,
    groups_csv,
    paired_csv,
    paired_table,
    run_table,
    runs_csv,
    summary_markdown,
    tag_notes,
    text_table,
)
from casdap.errors import CasdapError
from casdap.files import write_text


def write_outputs(comp: Comparison, out: Path) -> list[Path]:
    """Tables (Markdown, CSV) and PNG plots into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(name: str, text: str) -> None:
        written.append(write_text(out / name, text))

    put("summary.md", summary_markdown(comp))
    put("summary.csv", groups_csv(comp.groups))
    put("runs.csv", runs_csv(comp.runs))
    if comp.paired:
        put("paired.csv", paired_csv(comp.paired))
    else:  # a paired.csv left by an earlier comparison in the same folder would describe other runs
        (out / "paired.csv").unlink(missing_ok=True)
    return written + write_plots(comp, out)


def report(runs: list, out: Path, skipped_prefix: str = "casdap compare: ", reference: str | None = None) -> list[Path]:
    """Compare ``runs``: print the tables, write Markdown, CSV and plots into ``out``. Groups that share
    seeds are also compared seed by seed (each against ``reference`` when given, else every pair)."""
    comp = load_runs(runs)
    comp.paired = paired_differences(comp.groups, reference)
    for _, reason in comp.skipped:
        print(f"{skipped_prefix}skipped {reason}", file=sys.stderr)
    if not comp.runs:
        n = len(runs)
        raise CasdapError("nothing to compare: " + (f"none of the {n} given runs could be read" if n > 1
                                                     else "the given run could not be read"))

    print(text_table(*run_table(comp.runs, console=True)))
    if any(len(g.runs) > 1 for g in comp.groups):
        print("\nGrouped over seeds (mean ± sample std):")
        print(text_table(*group_table(comp.groups, console=True)))
    if comp.paired:
        print(f"\nPaired over shared seeds (A - B, {CONFIDENCE:.0%} t-interval):")
        print(text_table(*paired_table(comp.paired)))
        print(PAIRED_NOTE.format(conf=CONFIDENCE))
    elif reference is not None:
        print(f"\nno group shares a seed with '{reference}' on its data set and split: nothing paired")
    notes = tag_notes(comp.runs)
    if notes:
        print("\n" + "\n".join(notes))
    return write_outputs(comp, out)

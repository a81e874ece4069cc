"""The files of a comparison: summary.md, summary.csv, runs.csv and the plots."""

from __future__ import annotations

from pathlib import Path

from casdap.compare.plots import write_plots
from casdap.compare.records import Comparison
from casdap.compare.tables import groups_csv, runs_csv, summary_markdown
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
    return written + write_plots(comp, out)

"""``casdap compare``: continual-learning, supervised and DAP reference runs side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from casdap.errors import CasdapError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare run directories: tables (Markdown, CSV) and plots",
        description="Compare continual-learning run directories (metrics.json), supervised runs (log.txt) "
        "and DAP final_results.txt files. Runs that differ only by seed are grouped (mean ± std).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directory, metrics.json, log.txt or final_results.txt")
    p.add_argument("--out", default="compare", type=Path, metavar="DIR",
                   help="folder for tables and plots (default: ./compare)")
    p.set_defaults(func=run)


def report(runs: list, out: Path, skipped_prefix: str = "casdap compare: ") -> list[Path]:
    """Compare ``runs``: print the tables, write Markdown, CSV and plots into ``out``."""
    from casdap.compare import group_table, load_runs, run_table, tag_notes, text_table, write_outputs

    comp = load_runs(runs)
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
    notes = tag_notes(comp.runs)
    if notes:
        print("\n" + "\n".join(notes))
    return write_outputs(comp, out)


def run(args: argparse.Namespace) -> int:
    written = report(args.runs, args.out)
    plots = [p for p in written if p.suffix == ".png"]
    print(f"\nwrote {args.out / 'summary.md'}, {args.out / 'summary.csv'}, {args.out / 'runs.csv'}"
          + (f" and {len(plots)} plots under {args.out}" if plots else ""))
    return 0

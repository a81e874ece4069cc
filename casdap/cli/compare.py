"""``casdap compare``: continual-learning, supervised and DAP reference runs side by side."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare run directories: tables (Markdown, CSV) and plots",
        description="Compare continual-learning run directories (metrics.json), supervised runs (log.txt) "
        "and DAP final_results.txt files. Runs that differ only by seed are grouped (mean ± std); "
        "groups that share seeds are compared seed by seed (paired differences with 95% t-intervals).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directory, metrics.json, log.txt or final_results.txt")
    p.add_argument("--out", default="compare", type=Path, metavar="DIR",
                   help="folder for tables and plots (default: ./compare)")
    p.add_argument("--reference", default=None, metavar="GROUP",
                   help="pair every other group with this one: a method name, a group label as printed, or the "
                   "folder that holds the group's runs (ROW of OUT/ROW/seedK); "
                   "default: every pair of groups on the same data set and split that share seeds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from casdap.compare import report

    written = report(args.runs, args.out, reference=args.reference)
    plots = [p for p in written if p.suffix == ".png"]
    paired = " and paired.csv" if any(p.name == "paired.csv" for p in written) else ""
    print(f"\nwrote {args.out / 'summary.md'}, {args.out / 'summary.csv'}, {args.out / 'runs.csv'}{paired}"
          + (f" and {len(plots)} plots under {args.out}" if plots else ""))
    return 0

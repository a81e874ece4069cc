"""Paired differences between two groups of runs over the seeds they share, with confidence intervals.

Two methods run on the same seeds see the same class order, the same initial heads and the same
data shuffles, so most of the seed-to-seed spread is shared. The difference of their means with
the two standard deviations beside it hides that; the mean of the per-seed differences with a
Student-t interval over those differences (a paired t-interval) does not. Only seeds both groups
ran are paired; the seeds only one of them ran are named, never silently dropped or mixed in.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from casdap.compare.records import RunGroup
from casdap.errors import CasdapError

__all__ = ["PAIRED_METRICS", "PairedDifference", "paired_differences", "t_quantile"]

# (attribute, title) of the metrics compared seed by seed
PAIRED_METRICS: tuple[tuple[str, str], ...] = (("final_acc", "Final acc"), ("wtp", "WTP"), ("tii", "TII"))
CONFIDENCE = 0.95


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(p, df))


@dataclass
class PairedDifference:
    """``a - b`` of one metric over the seeds both groups ran."""

    a: RunGroup
    b: RunGroup
    metric: str
    seeds: list[int]  # paired seeds, ascending
    diffs: list[float]  # a - b per paired seed (fractions)
    only_a: list[int] = field(default_factory=list)  # seeds only group a ran
    only_b: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.diffs) if self.diffs else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The two-sided ``CONFIDENCE`` paired t-interval of the mean difference (needs two seeds)."""
        if self.n < 2:
            return None
        half = t_quantile(0.5 + CONFIDENCE / 2, self.n - 1) * statistics.stdev(self.diffs) / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def verdict(self) -> str:
        """``a > b`` / ``a < b`` when the interval excludes 0, ``n.s.`` when it holds it, ``-`` without one."""
        ci = self.interval
        if ci is None:
            return "-"
        return "a > b" if ci[0] > 0 else "a < b" if ci[1] < 0 else "n.s."


def _by_seed(group: RunGroup, metric: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in group.runs:
        value = getattr(r, metric)
        if r.seed is None or value is None:
            continue
        if r.seed in out:
            raise CasdapError(f"group '{group.label}' holds two runs of seed {r.seed}; a seed counts once: "
                              "compare one run folder per seed")
        out[r.seed] = value
    return out


def pair(a: RunGroup, b: RunGroup, metric: str) -> PairedDifference:
    """``a - b`` of ``metric`` over the seeds both ran (runs without a seed or the metric are left out)."""
    va, vb = _by_seed(a, metric), _by_seed(b, metric)
    shared = sorted(set(va) & set(vb))
    return PairedDifference(a=a, b=b, metric=metric, seeds=shared, diffs=[va[s] - vb[s] for s in shared],
                            only_a=sorted(set(va) - set(vb)), only_b=sorted(set(vb) - set(va)))


def _comparable(a: RunGroup, b: RunGroup) -> bool:
    fa, fb = a.first, b.first
    return (fa.kind == fb.kind == "continual" and fa.dataset == fb.dataset and fa.n_tasks == fb.n_tasks)


def _held_by(group: RunGroup, folder: str) -> bool:
    """Every run of ``group`` lies in a folder named ``folder``."""
    return all(r.folder is not None and r.folder.parent.name == folder for r in group.runs)


def paired_differences(groups: list[RunGroup], reference: str | None = None) -> list[PairedDifference]:
    """Every pair of continual groups on the same data set and split (each against ``reference``, when
    given) that share at least one seed, for each metric both have.

    ``reference`` names a group by its label, its method, or the folder that holds its runs (the
    ``<row>`` of ``<out>/<row>/seed<k>``, as the benchmark scripts lay them out, which tells apart
    groups of one method under other settings). One that names no group is one error naming the
    labels there are."""
    cands = [g for g in groups if g.first.kind == "continual"]
    if reference is not None:
        refs = ([g for g in cands if g.label == reference] or [g for g in cands if g.first.method == reference]
                or [g for g in cands if _held_by(g, reference)])
        if not refs:
            labels = ", ".join(sorted({g.label for g in cands})) or "none"
            raise CasdapError(f"--reference '{reference}' names no group of continual runs (groups: {labels}; "
                              "or the folder that holds a group's seed folders)")
        pairs = [(g, ref) for ref in refs for g in cands if g is not ref]
    else:
        pairs = [(cands[i], cands[j]) for i in range(len(cands)) for j in range(i + 1, len(cands))]
    out = []
    for a, b in pairs:
        if not _comparable(a, b):
            continue
        for metric, _ in PAIRED_METRICS:
            d = pair(a, b, metric)
            if d.seeds:
                out.append(d)
    return out

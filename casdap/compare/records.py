"""One run in the units of the comparison, runs grouped over seeds, and the whole comparison."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from casdap.errors import CasdapError
from casdap.run_metrics import Matrix, average_accuracy_curve, forgetting_per_task

# Keys that differ between seeds or machines of one experiment, ignored when grouping runs.
_RUN_SPECIFIC_KEYS = {
    "seed", "output_dir", "log_dir", "resume", "auto_resume", "start_epoch", "device", "world_size",
    "rank", "gpu", "local_rank", "dist_url", "dist_backend", "dist_init_path", "dist_init_file",
    "distributed", "num_workers", "pin_mem", "pin_memory", "data_path", "datapath", "eval_data_path",
    "num_gpus", "num_shards", "run_n_times", "dbg", "save_ckpt", "keep_task_checkpoints",
}

# The protocol tags of RunRecord.tags and what each one means.
TAG_MEANINGS = {
    "joint reference": "supervised training on all classes at once; its final test accuracy is the upper reference",
    "DAP code": "final_results.txt of the DAP reference implementation",
    "batch-majority": "prompt key voted over each single-task test batch (uses task identity at test time; "
    "the DAP reference protocol)",
    "oracle task": "evaluated with the true task id",
    "random-init backbone": "the backbone was never pretrained",
}


class RunError(CasdapError):
    """One run that cannot be compared, with the reason."""


@dataclass
class RunRecord:
    """One run, whatever wrote it, in the units of the comparison (accuracies as fractions).

    ``acc_matrix`` is None for runs without a per-task history (supervised and joint training):
    they are references, drawn as horizontal lines in the plots."""

    path: Path
    kind: str  # "continual" | "supervised" | "dap_reference"
    method: str
    backbone: str | None = None
    dataset: str | None = None
    seed: int | None = None
    n_tasks: int | None = None
    acc_matrix: Matrix | None = None
    final_acc: float | None = None
    forgetting: float | None = None
    learning_acc: float | None = None
    bwt: float | None = None
    wtp: float | None = None  # within-task prediction, final
    tii: float | None = None  # task-identity inference, final
    task_selection_acc: float | None = None
    mixed_stream_acc: float | None = None
    selection: str | None = None
    random_init_backbone: bool = False
    wall_time_s: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    train_images_per_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    folder: Path | None = None

    @property
    def tags(self) -> list[str]:
        """Protocol facts that change what the numbers mean; shown next to the method everywhere."""
        tags = []
        if self.kind == "supervised":
            tags.append("joint reference")
        if self.kind == "dap_reference":
            tags.append("DAP code")
        if self.selection == "batch_majority":
            tags.append("batch-majority")
        elif self.selection == "oracle":
            tags.append("oracle task")
        if self.random_init_backbone:
            tags.append("random-init backbone")
        return tags

    @property
    def label(self) -> str:
        return f"{self.method} [{', '.join(self.tags)}]" if self.tags else self.method

    def avg_acc_curve(self) -> list[float]:
        """Mean accuracy over the tasks seen so far, after each task."""
        return average_accuracy_curve(self.acc_matrix or [])

    def forgetting_per_task(self) -> list[float]:
        return (forgetting_per_task(self.acc_matrix) or []) if self.acc_matrix else []


@dataclass
class RunGroup:
    """Runs of one method and configuration that differ only by seed."""

    runs: list[RunRecord]
    label: str = ""

    @property
    def first(self) -> RunRecord:
        return self.runs[0]

    def stats(self, attr: str) -> tuple[float | None, float | None]:
        """Mean and sample standard deviation over the runs that have the value (std needs two)."""
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        if not values:
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None

    def curve_stats(self) -> tuple[list[float], list[float]]:
        curves = [r.avg_acc_curve() for r in self.runs]
        mean = [statistics.fmean(c) for c in zip(*curves)]
        std = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in zip(*curves)]
        return mean, std


@dataclass
class Comparison:
    runs: list[RunRecord]
    groups: list[RunGroup]
    skipped: list[tuple[str, str]]  # (given path, reason)
    paired: list = field(default_factory=list)  # PairedDifference between groups over shared seeds


def unique_names(runs: list[RunRecord]) -> None:
    """Runs given as folders of the same name (seed42/cifar100, seed43/cifar100) take as many parent
    folders into their name as it takes to tell them apart."""
    depth = {id(r): 1 for r in runs}

    def name(r: RunRecord) -> str:
        parts = r.folder.parts if r.folder else (r.name,)
        return "/".join(parts[-depth[id(r)]:]).lstrip("/") or r.name

    for _ in range(max((len(r.folder.parts) for r in runs if r.folder), default=1)):
        counts = Counter(name(r) for r in runs)
        clashing = [r for r in runs if counts[name(r)] > 1]
        if not clashing:
            break
        for r in clashing:
            depth[id(r)] += 1
    for r in runs:
        r.name = name(r)


def _config_key(r: RunRecord) -> str:
    cfg = {k: v for k, v in r.config.items() if k.rsplit(".", 1)[-1].lower() not in _RUN_SPECIFIC_KEYS}
    facts = [r.kind, r.method, r.backbone, r.dataset, r.n_tasks, r.selection, r.random_init_backbone]
    return json.dumps([facts, cfg], sort_keys=True, default=str)


def set_aside_repeated_seeds(runs: list[RunRecord]) -> tuple[list[RunRecord], list[tuple[str, str]]]:
    """The runs without a second run of one configuration and seed, and ``(path, reason)`` for each
    one left out (every run after the first given of its configuration and seed).

    Seeds are what a group's mean and spread are taken over: a seed run twice (a copied folder, a
    rerun elsewhere) counted twice would narrow the spread without a new sample."""
    first: dict[tuple[str, int], RunRecord] = {}
    kept, left_out = [], []
    for r in runs:
        held = r if r.seed is None else first.setdefault((_config_key(r), r.seed), r)
        if held is r:
            kept.append(r)
            continue
        same = "the same" if r.final_acc == held.final_acc else f"{_pct(r.final_acc)} vs {_pct(held.final_acc)}"
        left_out.append((str(r.path), f"{r.path}: seed {r.seed} of {r.label} again ({held.path} holds it, final "
                                      f"accuracy {same}); a seed counts once, so it is left out"))
    return kept, left_out


def _pct(v: float | None) -> str:
    return "none" if v is None else f"{100 * v:.2f}%"


def group_runs(runs: list[RunRecord]) -> list[RunGroup]:
    """Runs that share method, backbone, data, split, protocol and configuration (seed aside)."""
    by_key: dict[str, RunGroup] = {}
    for r in runs:
        by_key.setdefault(_config_key(r), RunGroup(runs=[])).runs.append(r)
    groups = list(by_key.values())
    by_label: dict[str, list[RunGroup]] = {}
    for g in groups:
        g.label = g.first.label
        by_label.setdefault(g.label, []).append(g)
    # Same method but different settings: name the settings that tell them apart.
    for same in by_label.values():
        if len(same) < 2:
            continue
        for g in same:
            others = [o for o in same if o is not g]
            diff = [
                f"{k}={v}" for k, v in sorted(g.first.config.items())
                if k.rsplit(".", 1)[-1].lower() not in _RUN_SPECIFIC_KEYS
                and any(o.first.config.get(k) != v for o in others)
            ]
            facts = [x for x in (g.first.backbone, g.first.dataset) if x]
            g.label = f"{g.label} ({', '.join((diff or facts or [g.first.name])[:3])})"
    return groups

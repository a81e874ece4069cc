"""The three readers: continual-learning run folders, supervised run folders, DAP's final_results.txt
(:mod:`casdap.compare.dap_results`).

Each turns its input into a :class:`RunRecord`; :func:`load_run` recognises which one a path is,
:func:`load_runs` reads them all into a :class:`Comparison`.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from casdap.compare.dap_results import load_dap_results
from casdap.compare.records import Comparison, RunError, RunRecord, group_runs, set_aside_repeated_seeds, unique_names
from casdap.compare.run_checks import check_matrix, flatten, read_json
from casdap.errors import yaml_problem
from casdap.run_metrics import METRICS_FIELDS, Matrix, metrics_value, summarize

# --------------------------------------------------------------------------------------------
# continual-learning run directories

# The metrics.json fields a RunRecord takes as they are (checked against their declared type); the
# method, task count and matrix are checked first, with messages of their own.
_RECORD_FIELDS = [k for k in METRICS_FIELDS if k in {f.name for f in fields(RunRecord)}
                  and k not in ("method", "n_tasks", "acc_matrix")]


def load_continual_run(run_dir: Path) -> RunRecord:
    """Read ``metrics.json`` (and ``config.yaml`` for grouping) of a finished continual-learning run."""
    where = str(run_dir / "metrics.json")
    m = read_json(run_dir / "metrics.json")
    if not isinstance(m, dict):
        raise RunError(f"{where}: expected a JSON object, got {type(m).__name__}")
    method = m.get("method")
    if not isinstance(method, str) or not method:
        raise RunError(f"{where}: no 'method' (dap, finetune, linear, ewc, lwf, replay, ncm or joint)")
    n_tasks = m.get("n_tasks")
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
        raise RunError(f"{where}: 'n_tasks' should be a positive integer, got {n_tasks!r}")

    raw = m.get("acc_matrix")
    if raw is None and (run_dir / "acc_matrix.csv").is_file():
        raw = read_acc_matrix_csv(run_dir / "acc_matrix.csv", n_tasks)
    if raw is None:
        raise RunError(f"{where}: no 'acc_matrix' and no acc_matrix.csv beside it")
    # Joint training sees every task at once: one row, every task evaluated, no per-task history.
    joint = method == "joint" and isinstance(raw, list) and len(raw) == 1 and m.get("finished") is not False
    a = check_matrix(raw, n_tasks, where, full=joint)

    done = n_tasks if joint else len(a)
    if m.get("finished") is False or done < n_tasks:
        raise RunError(
            f"{run_dir}: unfinished run ({done} of {n_tasks} tasks done, stopped during task {done + 1}); "
            "resume it with --auto_resume (SOLVER.AUTO_RESUME True) and compare the finished run"
        )
    if done > n_tasks:
        raise RunError(f"{where}: mismatched task counts: acc_matrix has {done} rows but n_tasks is {n_tasks}")

    try:
        values = {k: metrics_value(m, k) for k in _RECORD_FIELDS}
    except ValueError as e:
        raise RunError(f"{where}: {e}") from None
    # The metrics the writer left null (e.g. forgetting of a single task) are derived from the matrix.
    for k, v in summarize(a, joint=joint).items():
        if values[k] is None:
            values[k] = v
    values["random_init_backbone"] = bool(values["random_init_backbone"])

    config = {}
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        try:
            config = flatten(yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {})
        except yaml.YAMLError as e:
            raise RunError(f"{cfg_path}: malformed YAML ({yaml_problem(e)})") from None

    return RunRecord(
        path=run_dir,
        kind="continual",
        method=method,
        n_tasks=n_tasks,
        acc_matrix=None if joint else a,
        config=config,
        **values,
    )


def read_acc_matrix_csv(path: Path, n_tasks: int | None = None) -> Matrix:
    """``after_task,task_0,...`` with empty cells for tasks not yet seen."""
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RunError(f"{path}: cannot be read ({e})") from None
    if not rows or rows[0][:1] != ["after_task"]:
        raise RunError(f"{path}: expected a header 'after_task,task_0,...'")
    width = len(rows[0]) - 1
    if n_tasks is not None and width != n_tasks:
        raise RunError(f"{path}: mismatched task counts: {width} task columns but n_tasks is {n_tasks}")
    out: Matrix = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            out.append([float(c) if c.strip() else None for c in row[1:]])
        except ValueError:
            raise RunError(f"{path}: line {line_no} holds something that is not a number: {row}") from None
    return out


# --------------------------------------------------------------------------------------------
# supervised run directories (CAS-ViT / DeiT style log.txt)


def load_supervised_run(run_dir: Path) -> RunRecord:
    """Final test accuracy over all classes from ``log.txt``; model and data set from ``args.json``."""
    log = run_dir / "log.txt"
    if not log.is_file():
        raise RunError(
            f"{run_dir}: supervised run with checkpoints but no log.txt; only log.txt holds test accuracy "
            "(train with --output_dir set so that it is written)"
        )
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{log}: cannot be read ({e})") from None
    epochs = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunError(f"{log}: line {n} is malformed JSON ({e.msg})") from None
        if not isinstance(entry, dict):
            raise RunError(f"{log}: line {n} is not a JSON object")
        epochs.append(entry)
    tested = [e for e in epochs if isinstance(e.get("test_acc1"), (int, float))]
    if not tested:
        raise RunError(f"{log}: no epoch with 'test_acc1' (a run killed before its first evaluation?)")

    args: dict[str, Any] = {}
    if (run_dir / "args.json").is_file():
        args = read_json(run_dir / "args.json")
        if not isinstance(args, dict):
            raise RunError(f"{run_dir / 'args.json'}: expected a JSON object of flags")
    last = tested[-1]
    planned = args.get("epochs")
    last_epoch = epochs[-1].get("epoch")
    if isinstance(planned, int) and isinstance(last_epoch, int) and last_epoch + 1 < planned:
        raise RunError(
            f"{run_dir}: unfinished run ({last_epoch + 1} of {planned} epochs in log.txt); "
            "resume it (--resume or --auto_resume) and compare the finished run"
        )
    acc1 = float(last["test_acc1"])
    if not 0.0 <= acc1 <= 100.0:
        raise RunError(f"{log}: test_acc1 = {acc1} is not a percentage")
    times = [e.get("epoch_time_s") for e in epochs]
    speeds = [e["train_images_per_s"] for e in epochs if isinstance(e.get("train_images_per_s"), (int, float))]
    n_params = last.get("n_parameters")
    return RunRecord(
        path=run_dir,
        kind="supervised",
        method="supervised",
        backbone=args.get("model"),
        dataset=args.get("data_set"),
        seed=args.get("seed") if isinstance(args.get("seed"), int) else None,
        final_acc=acc1 / 100.0,
        # Supervised training updates the whole network: CAS-ViT logs the trainable count.
        trainable_params=int(n_params) if isinstance(n_params, (int, float)) else None,
        total_params=int(n_params) if isinstance(n_params, (int, float)) else None,
        wall_time_s=float(sum(times)) if times and all(isinstance(t, (int, float)) for t in times) else None,
        train_images_per_s=statistics.median(speeds) if speeds else None,
        config=flatten(args),
    )


# --------------------------------------------------------------------------------------------
# dispatch


def load_run(path: str | Path) -> RunRecord:
    """Recognise what ``path`` is and read it; RunError says why when it is not a usable run."""
    p = Path(path)
    if not p.exists():
        raise RunError(f"{p}: does not exist")
    if p.is_file():
        if p.name == "metrics.json":
            return _named(load_continual_run(p.parent), path)
        if p.name == "log.txt":
            return _named(load_supervised_run(p.parent), path)
        if p.suffix == ".txt":
            return _named(load_dap_results(p), path)
        raise RunError(f"{p}: not a run: give a run directory, a metrics.json, a log.txt or a DAP final_results.txt")
    if (p / "metrics.json").is_file():
        return _named(load_continual_run(p), path)
    if (p / "log.txt").is_file() or (p / "args.json").is_file() or any(p.glob("checkpoint-*.pth")):
        return _named(load_supervised_run(p), path)
    if (p / "final_results.txt").is_file():
        return _named(load_dap_results(p / "final_results.txt"), path)
    if (p / "config.yaml").is_file() or (p / "acc_matrix.csv").is_file():
        raise RunError(
            f"{p}: half-written continual-learning run: config.yaml but no metrics.json yet "
            "(stopped before its first task finished); resume it with --auto_resume"
        )
    # DAP writes into OUTPUT_DIR/<DATA.NAME>/: accept the OUTPUT_DIR when it holds exactly one.
    nested = sorted(p.glob("*/final_results.txt"))
    if len(nested) == 1:
        return _named(load_dap_results(nested[0]), path)
    if len(nested) > 1:
        raise RunError(f"{p}: holds {len(nested)} DAP results ({', '.join(str(n.parent.name) for n in nested)}); "
                       "name each one")
    raise RunError(
        f"{p}: not a run directory: no metrics.json (continual learning), log.txt (supervised) "
        "or final_results.txt (DAP)"
    )


def _named(record: RunRecord, given: str | Path) -> RunRecord:
    """Name a run by the folder it was given as (the folder holding it, for a file)."""
    given = Path(given).resolve()
    record.folder = given.parent if given.is_file() else given
    record.name = record.folder.name or str(record.folder)
    return record


def _runs_in(path: str | Path) -> list[str | Path]:
    """The continual runs directly inside ``path`` when it is a folder of them (the ``<row>`` of
    ``<out>/<row>/seed<k>``) rather than a run; read as one run, such a folder would take a seed's
    ``final_results.txt`` for DAP's output. Anything else is returned as given."""
    p = Path(path)
    if not p.is_dir() or any((p / f).exists() for f in ("metrics.json", "log.txt", "final_results.txt", "config.yaml")):
        return [path]
    inner = sorted(d for d in p.iterdir() if (d / "metrics.json").is_file())
    return inner or [path]


def load_runs(paths: list[str | Path]) -> Comparison:
    """Load every path; unusable ones are kept aside with their reason, the rest are grouped.

    Continual-learning runs must share one task split: runs whose task count differs from the
    most common one (the first run's on a tie) are set aside, since their accuracies are not
    comparable. A second run of one configuration and seed (another folder) is set aside too: a
    group's statistics are over seeds."""
    runs: list[RunRecord] = []
    skipped: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for path in [run for given in paths for run in _runs_in(given)]:
        try:
            record = load_run(path)
        except RunError as e:
            skipped.append((str(path), str(e)))
            continue
        key = record.path.resolve()
        if key in seen:
            skipped.append((str(path), f"{path}: given twice; compared once"))
            continue
        seen.add(key)
        runs.append(record)

    counts = Counter(r.n_tasks for r in runs if r.n_tasks is not None)
    if len(counts) > 1:
        first = next(r.n_tasks for r in runs if r.n_tasks is not None)
        top = max(counts.values())
        reference = first if counts[first] == top else next(n for n, c in counts.items() if c == top)
        kept = []
        for r in runs:
            if r.n_tasks is not None and r.n_tasks != reference:
                skipped.append((
                    str(r.path),
                    f"{r.path}: mismatched task counts: {r.n_tasks} tasks while the other runs have {reference}; "
                    "accuracies over different splits are not comparable, compare it with runs of its own split",
                ))
            else:
                kept.append(r)
        runs = kept

    runs, repeats = set_aside_repeated_seeds(runs)
    skipped += repeats

    unique_names(runs)
    return Comparison(runs=runs, groups=group_runs(runs), skipped=skipped)

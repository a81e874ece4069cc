"""Set continual-learning runs, supervised runs and DAP reference results side by side.

Three kinds of input are normalised into one :class:`RunRecord`:

- a continual-learning run directory (``metrics.json``, ``acc_matrix.csv``, ``config.yaml``);
- a supervised CAS-ViT run directory (``log.txt`` with one JSON object per epoch, optional
  ``args.json``, ``checkpoint-*.pth``): its final test accuracy on all classes is the joint
  reference;
- a ``final_results.txt`` written by the DAP reference code (naver-ai/dap-cl), alone or in its
  folder, so a published-protocol run can sit beside ours.

Accuracy matrices follow one convention everywhere: ``A[i][j]`` is the accuracy (a fraction) on
task j's test set after training task i, ``None`` for ``j > i``. DAP's own file stores the
transpose (row = evaluated task, column = training step, zeros for unseen tasks); the reader
turns it around.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from casdap.errors import CasdapError, yaml_problem

Matrix = list[list[float | None]]

# Keys that differ between seeds or machines of one experiment, ignored when grouping runs.
_RUN_SPECIFIC_KEYS = {
    "seed", "output_dir", "log_dir", "resume", "auto_resume", "start_epoch", "device", "world_size",
    "rank", "gpu", "local_rank", "dist_url", "dist_backend", "dist_init_path", "dist_init_file",
    "distributed", "num_workers", "pin_mem", "pin_memory", "data_path", "datapath", "eval_data_path",
    "num_gpus", "num_shards", "run_n_times", "dbg",
}

# Plot sizes in inches at PLOT_DPI: every PNG has a fixed pixel size, whatever the number of runs.
PLOT_DPI = 100
CURVE_SIZE = (8.0, 5.0)
HEATMAP_SIZE = (6.0, 5.0)


class RunError(CasdapError):
    """One run that cannot be compared, with the reason."""


@dataclass
class RunRecord:
    """One run, whatever wrote it, in the units of the comparison (accuracies as fractions)."""

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
        return [_mean([a for a in row[: i + 1] if a is not None]) for i, row in enumerate(self.acc_matrix or [])]

    def forgetting_per_task(self) -> list[float]:
        return forgetting_per_task(self.acc_matrix or [])


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


# --------------------------------------------------------------------------------------------
# metrics shared by every reader


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def forgetting_per_task(a: Matrix) -> list[float]:
    """Best accuracy ever reached on task j minus the final one, for every task but the last."""
    return [max(row[j] for row in a[j:]) - a[-1][j] for j in range(len(a) - 1)]


def matrix_metrics(a: Matrix) -> dict[str, float | None]:
    """Final accuracy (mean of the last row), forgetting (mean over all but the last task of the best
    accuracy ever reached minus the final one), learning accuracy (mean of the diagonal) and BWT (mean
    of final minus just-learned accuracy), as in DAP; forgetting and BWT are None for a single task."""
    t = len(a)
    last = a[-1]
    diag = [a[i][i] for i in range(t)]
    forgetting = forgetting_per_task(a)
    return {
        "final_acc": _mean(last),
        "forgetting": _mean(forgetting) if t > 1 else None,
        "learning_acc": _mean(diag),
        "bwt": _mean([last[j] - diag[j] for j in range(t - 1)]) if t > 1 else None,
    }


def _check_matrix(a: Any, n_tasks: int, where: str, full: bool = False) -> Matrix:
    """Validate a lower-triangular accuracy matrix of fractions; entries above the diagonal become
    None unless ``full`` (every task evaluated in every row)."""
    if not isinstance(a, list) or not all(isinstance(row, list) for row in a):
        raise RunError(f"{where}: acc_matrix must be a list of rows (lists)")
    out: Matrix = []
    for i, row in enumerate(a):
        if len(row) != n_tasks:
            raise RunError(
                f"{where}: mismatched task counts: row {i} of acc_matrix has {len(row)} entries "
                f"but n_tasks is {n_tasks}"
            )
        clean: list[float | None] = []
        for j, v in enumerate(row):
            if j > i and not full:
                clean.append(None)
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise RunError(f"{where}: acc_matrix[{i}][{j}] is {v!r}; tasks seen so far need a number")
            if not 0.0 <= v <= 1.0:
                raise RunError(
                    f"{where}: acc_matrix[{i}][{j}] = {v} is outside [0, 1]; accuracies must be fractions, not percent"
                )
            clean.append(float(v))
        out.append(clean)
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {}
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def _opt_float(d: dict, key: str, where: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RunError(f"{where}: '{key}' should be a number, got {v!r}")
    return float(v)


def _opt_int(d: dict, key: str, where: str) -> int | None:
    v = _opt_float(d, key, where)
    return None if v is None else int(v)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: malformed JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: cannot be read ({e})") from None


# --------------------------------------------------------------------------------------------
# continual-learning run directories


def load_continual_run(run_dir: Path) -> RunRecord:
    """Read ``metrics.json`` (and ``config.yaml`` for grouping) of a finished continual-learning run."""
    where = str(run_dir / "metrics.json")
    m = _read_json(run_dir / "metrics.json")
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
    joint_once = method == "joint" and isinstance(raw, list) and len(raw) == 1 and m.get("finished") is not False
    a = _check_matrix(raw, n_tasks, where, full=joint_once)

    done = n_tasks if joint_once else len(a)
    if m.get("finished") is False or done < n_tasks:
        raise RunError(
            f"{run_dir}: unfinished run ({done} of {n_tasks} tasks done, stopped during task {done + 1}); "
            "resume it with --auto_resume (SOLVER.AUTO_RESUME True) and compare the finished run"
        )
    if done > n_tasks:
        raise RunError(f"{where}: mismatched task counts: acc_matrix has {done} rows but n_tasks is {n_tasks}")

    derived = {"final_acc": _mean(a[0]), "forgetting": None, "learning_acc": None, "bwt": None} if joint_once \
        else matrix_metrics(a)
    values = {k: _opt_float(m, k, where) for k in derived}
    values = {k: (derived[k] if v is None else v) for k, v in values.items()}

    config = {}
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        try:
            config = _flatten(yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {})
        except yaml.YAMLError as e:
            raise RunError(f"{cfg_path}: malformed YAML ({yaml_problem(e)})") from None

    selection = m.get("selection")
    return RunRecord(
        path=run_dir,
        kind="continual",
        method=method,
        backbone=m.get("backbone"),
        dataset=m.get("dataset"),
        seed=_opt_int(m, "seed", where),
        n_tasks=n_tasks,
        acc_matrix=None if joint_once else a,
        task_selection_acc=_opt_float(m, "task_selection_acc", where),
        mixed_stream_acc=_opt_float(m, "mixed_stream_acc", where),
        selection=selection if isinstance(selection, str) else None,
        random_init_backbone=bool(m.get("random_init_backbone", False)),
        wall_time_s=_opt_float(m, "wall_time_s", where),
        trainable_params=_opt_int(m, "trainable_params", where),
        total_params=_opt_int(m, "total_params", where),
        train_images_per_s=_opt_float(m, "train_images_per_s", where),
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
        args = _read_json(run_dir / "args.json")
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
        config=_flatten(args),
    )


# --------------------------------------------------------------------------------------------
# DAP reference final_results.txt

_FINAL_LINE = re.compile(r"^Final\s+(\w+)\s+(Accuracy|Forget|LA):\s*([-+0-9.eEnaN]+)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan")


def _cfg_scalar(text: str) -> Any:
    if text == "None":
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool, list)) else text


def parse_cfg_dump(text: str) -> dict[str, Any]:
    """The printed yacs/fvcore CfgNode at the top of DAP's file: ``KEY: value`` lines, children
    indented by two spaces, an empty value either a child node or an empty string."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict]] = [(-1, root)]
    for line in text.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if value.strip():
            parent[key] = _cfg_scalar(value.strip())
        else:
            parent[key] = {}
            stack.append((indent, parent[key]))

    def empty_to_str(d: dict) -> dict:
        return {k: (("" if not v else empty_to_str(v)) if isinstance(v, dict) else v) for k, v in d.items()}

    return empty_to_str(root)


def load_dap_results(path: Path) -> RunRecord:
    """Read DAP's ``final_results.txt``: printed config, ``LOG['acc']`` (numpy print of the
    [evaluated task, training step] array) and the ``Final test Accuracy/Forget/LA`` lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: cannot be read ({e})") from None
    finals = {m.group(2): float(m.group(3)) for m in _FINAL_LINE.finditer(text)}
    if "Accuracy" not in finals:
        raise RunError(f"{path}: no 'Final test Accuracy' line: not a finished DAP final_results.txt")
    opening = re.search(r"^\[\[", text, re.MULTILINE)  # the array print starts a line; config lists do not
    start = opening.start() if opening else -1
    end = text.find("]]", start)
    if start < 0 or end < 0:
        raise RunError(f"{path}: no accuracy matrix ([[ ... ]]) before the Final lines")
    rows_text = re.split(r"\]\s*\[", text[start + 2 : end])
    raw = [[float(x) for x in _NUMBER.findall(r)] for r in rows_text]
    t = len(raw)
    if any(len(r) != t for r in raw):
        raise RunError(f"{path}: the accuracy matrix is not square ({[len(r) for r in raw]} entries per row)")
    cfg = parse_cfg_dump(text[:start])
    flat = _flatten(cfg)
    n_tasks = flat.get("CONTINUAL.N_TASKS")
    if isinstance(n_tasks, int) and n_tasks != t:
        raise RunError(f"{path}: mismatched task counts: CONTINUAL.N_TASKS is {n_tasks} but the matrix is {t}x{t}")
    # DAP: LOG['acc'][task_t, task_id], unseen tasks left at 0. Ours: A[after task i][task j].
    a = _check_matrix([[raw[j][i] for j in range(t)] for i in range(t)], t, str(path))
    derived = matrix_metrics(a)
    if abs(derived["final_acc"] - finals["Accuracy"]) > 1e-3:
        raise RunError(
            f"{path}: the matrix (mean of its last column {derived['final_acc']:.5f}) does not match "
            f"'Final test Accuracy: {finals['Accuracy']:.5f}'; the file looks edited or cut"
        )
    backbone = flat.get("MODEL.TYPE")
    feature = flat.get("DATA.FEATURE")
    if backbone and feature:
        backbone = f"{backbone} ({feature})"
    seed = flat.get("SEED")
    return RunRecord(
        path=path,
        kind="dap_reference",
        method=str(flat.get("MODEL.TRANSFER_TYPE") or "dap"),
        backbone=backbone or None,
        dataset=flat.get("DATA.NAME") or None,
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        n_tasks=t,
        acc_matrix=a,
        final_acc=finals["Accuracy"],
        forgetting=finals.get("Forget", derived["forgetting"]),
        learning_acc=finals.get("LA", derived["learning_acc"]),
        bwt=derived["bwt"],
        # The reference evaluation votes the key index over each single-task test batch.
        selection="batch_majority",
        config=flat,
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


@dataclass
class Comparison:
    runs: list[RunRecord]
    groups: list[RunGroup]
    skipped: list[tuple[str, str]]  # (given path, reason)


def load_runs(paths: list[str | Path]) -> Comparison:
    """Load every path; unusable ones are kept aside with their reason, the rest are grouped.

    Continual-learning runs must share one task split: runs whose task count differs from the
    most common one (the first run's on a tie) are set aside, since their accuracies are not
    comparable."""
    runs: list[RunRecord] = []
    skipped: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for path in paths:
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

    _unique_names(runs)
    return Comparison(runs=runs, groups=group_runs(runs), skipped=skipped)


def _unique_names(runs: list[RunRecord]) -> None:
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


# --------------------------------------------------------------------------------------------
# tables

_METRICS = [  # (attribute, column title, kind); the two parameter counts share one column in tables
    ("final_acc", "Final acc (%)", "pct"),
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

TAG_MEANINGS = {
    "joint reference": "supervised training on all classes at once; its final test accuracy is the upper reference",
    "DAP code": "final_results.txt of the DAP reference implementation",
    "batch-majority": "prompt key voted over each single-task test batch (uses task identity at test time; "
    "the DAP reference protocol)",
    "oracle task": "evaluated with the true task id",
    "random-init backbone": "the backbone was never pretrained",
}


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


def _csv_runs(runs: list[RunRecord]) -> str:
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


def _csv_groups(groups: list[RunGroup]) -> str:
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


# --------------------------------------------------------------------------------------------
# plots (matplotlib Figure objects on the Agg canvas: no display, no global pyplot state)


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


def _task_axis(ax, n_tasks: int) -> None:
    ax.set_xticks(range(1, n_tasks + 1))
    ax.set_xlabel("after training task")
    ax.grid(alpha=0.3)


def _save_accuracy_curves(fig, ax, n_tasks: int, title: str, path: Path) -> None:
    _task_axis(ax, n_tasks)
    ax.set_ylabel("average accuracy over seen tasks (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    fig.savefig(path)


def plot_avg_accuracy(comp: Comparison, path: Path) -> None:
    fig = _figure(CURVE_SIZE)
    ax = fig.add_subplot()
    continual = [r for r in comp.runs if r.acc_matrix]
    n = continual[0].n_tasks
    for k, r in enumerate(continual):
        ax.plot(range(1, n + 1), [100 * v for v in r.avg_acc_curve()], marker="o", label=f"{r.name}: {r.label}",
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
    x = list(range(1, n + 1))
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
        xs = [j + 1 - 0.4 + width * (k + 0.5) for j in range(n - 1)]
        ax.bar(xs, [100 * f for f in r.forgetting_per_task()], width=width, label=f"{r.name}: {r.label}")
    ax.set_xticks(range(1, n))
    ax.set_xlabel("task")
    ax.set_ylabel("forgetting (%): best accuracy minus final")
    ax.set_title("Forgetting per task at the end of the stream")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="best")
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
    ax.set_xticks(ticks, [str(j + 1) for j in ticks])
    ax.set_yticks(ticks, [str(i + 1) for i in ticks])
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


def write_outputs(comp: Comparison, out: Path) -> list[Path]:
    """Tables (Markdown, CSV) and PNG plots into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(name: str, text: str) -> None:
        path = out / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)

    md = ["# Run comparison", "", "Accuracies in percent; groups show mean ± sample std over seeds.", "",
          "## Methods", "", markdown_table(*group_table(comp.groups)), "", "## Runs", "",
          markdown_table(*run_table(comp.runs)), ""]
    md += [f"- {note}" for note in tag_notes(comp.runs)] + [""] * bool(tag_notes(comp.runs))
    if comp.skipped:
        md += ["## Not compared", ""] + [f"- `{p}`: {reason}" for p, reason in comp.skipped] + [""]
    put("summary.md", "\n".join(md))
    put("summary.csv", _csv_groups(comp.groups))
    put("runs.csv", _csv_runs(comp.runs))

    if any(r.acc_matrix for r in comp.runs):
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

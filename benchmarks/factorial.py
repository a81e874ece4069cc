"""The factorial table: every prompt source under its own pipeline and CAS-DAP's, beside the
class-statistics classifiers, rehearsal and joint training, each with settings searched on validation.

Rows and their search spaces: benchmarks/factorial_rows.py. Three steps, each resumable:

1. Search. Every row gets the same number of trials (``--trials``) of a seeded Optuna study (TPE;
   the first trial is the row's shipped setting). A trial is one ``casdap cl`` run on
   ``DATA.VALIDATION 0.2`` (a held-out fifth of each class's training images replaces the test set,
   so no test image is read) under the reduced protocol of ``--search-opts``, the same for every
   row, seed ``--search-seed``; its objective is the run's final validation accuracy. The studies
   (every trial's settings and value) go to ``OUT/search/study.json``.
2. Test. Each row's best trial runs on the test split for every seed of ``--seeds`` under the full
   protocol into ``OUT/runs/<row>/seed<k>``: one torch thread a run, ``--jobs`` at a time, a finished
   run is never run again (an unfinished one resumes: ``--auto_resume True``), and its checkpoints are
   deleted once it has finished.
3. Compare. ``casdap compare --reference`` pairs every row with ``none`` of its own pipeline
   (``OUT/compare-published-none``, ``OUT/compare-shared-none``) and every row with ``slda`` on the
   first-session backbone (``OUT/compare-slda-first-session``), seed by seed with 95% t-intervals
   (the reference is the folder that holds a row's seeds); the table of all of it is ``OUT/table.md``
   (``--compare-only`` makes it from the finished runs, running nothing).

    python benchmarks/factorial.py --stream digits --out runs/factorial_digits --seeds 0 1 2 3 4 --trials 3 \\
        --search-opts DATA.PERCENTAGE 0.3 SOLVER.TOTAL_EPOCH 2 --opts MODEL.MODEL_ROOT model/embedded
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from factorial_rows import ROWS, Row, row_names  # noqa: E402

from casdap.errors import CasdapError  # noqa: E402

VALIDATION = ["DATA.VALIDATION", "0.2"]
_lock = threading.Lock()


def finished(run: Path) -> dict | None:
    """The run's metrics when it has finished every task, else None."""
    path = run / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    return metrics if metrics.get("finished") else None


def launch(argv: list[str], log: Path) -> int:
    """``casdap cl ARGV`` in its own process on one torch thread, its output into ``log``."""
    with open(log, "w") as f:
        return subprocess.run([sys.executable, "-m", "casdap", "cl", *argv], stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode


def score_query(cl_run: Path, out: Path) -> dict:
    """Score the finished ``cl_run`` (which kept its class Gaussians and every task's checkpoint) by its
    query's class Gaussians alone, on the split it was evaluated on, as a run of its own in ``out``."""
    from fusion_weight_validation import score_weights

    from casdap.config import load_config
    from casdap.run_metrics import summarize

    metrics = json.loads((cl_run / "metrics.json").read_text())
    scored = score_weights(load_config(str(cl_run / "config.yaml"), []), cl_run, [0.0])["acc_matrix"]["query_alone"]
    n = metrics["n_tasks"]
    acc = [row + [None] * (n - len(row)) for row in scored]
    metrics.update(method="query_gaussians", acc_matrix=acc, wtp_matrix=None, tii_matrix=None, wtp=None, tii=None,
                   task_selection_acc=None, mixed_stream_acc=None, **summarize(acc))
    shutil.copy(cl_run / "config.yaml", out / "config.yaml")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def run_row(row: Row, stream: str, out: Path, opts: list[str]) -> dict:
    """The finished run of ``row`` in ``out`` with ``opts``: found there, resumed or run; its checkpoints
    are deleted once it has finished (the query row's after its scoring)."""
    cl_run = out / "cl" if row.query_alone else out
    if (metrics := finished(out)) is not None:
        shutil.rmtree(cl_run / "checkpoints", ignore_errors=True)  # left by a table stopped as the run ended
        return metrics
    out.mkdir(parents=True, exist_ok=True)
    keep = ["CONTINUAL.KEEP_TASK_CHECKPOINTS", "True"] if row.query_alone else []
    argv = ["--config-file", row.config_file(stream), "--no-progress", "--output_dir", str(cl_run),
            "--auto_resume", "True", *row.opts.split(), *opts, *keep]
    log = out / "cl.log"
    if launch(argv, log) != 0 or (metrics := finished(cl_run)) is None:
        raise CasdapError(f"{row.name}: the run in {cl_run} failed (see {log})")
    if row.query_alone:
        metrics = score_query(cl_run, out)
    shutil.rmtree(cl_run / "checkpoints", ignore_errors=True)
    return metrics


def as_opts(params: dict) -> list[str]:
    return [str(x) for k, v in params.items() for x in (k, v)]


def shipped(row: Row, stream: str, opts: list[str]) -> dict:
    """The row's shipped values of its searched keys (an unset key is the first of its choices, the
    method's own default); a value outside its range is left to the sampler."""
    from casdap.config import load_config
    from casdap.continual.methods import method_keys

    cfg = load_config(row.config_file(stream), [*row.opts.split(), *opts], reads=method_keys)
    start = {}
    for key, space in row.space.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        if isinstance(space, list):
            start[key] = space[0] if value is None else value if value in space else None
        elif value is not None and space[0] <= float(value) <= space[1]:
            start[key] = float(value)
    return {k: v for k, v in start.items() if v is not None}


def search_row(row: Row, trials: int, seed: int, objective, start: dict | None = None):
    """A seeded TPE study of ``trials`` trials over ``row.space``, maximising ``objective(k, params)``;
    ``start`` (the shipped setting) is the first trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=row.name, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    if start:
        study.enqueue_trial(start)
    for k in range(trials):
        trial = study.ask()
        params = {key: trial.suggest_float(key, *space, log=True) if isinstance(space, tuple)
                  else trial.suggest_categorical(key, space) for key, space in row.space.items()}
        study.tell(trial, objective(k, params))
    return study


def search(row: Row, args) -> dict:
    """Row ``row``'s study on the validation split: every trial and the best."""
    where = args.out / "search" / row.name

    def objective(k: int, params: dict) -> float:
        run = where / f"trial{k}"
        record = run.with_suffix(".json")
        if record.is_file() and json.loads(record.read_text())["params"] != params:
            shutil.rmtree(run, ignore_errors=True)  # the study asked for other settings: run them afresh
        opts = [*args.opts, *VALIDATION, *args.search_opts, "SEED", str(args.search_seed), *as_opts(params)]
        value = float(run_row(row, args.stream, run, opts)["final_acc"])
        record.write_text(json.dumps({"params": params, "value": value}) + "\n")
        print(f"search {row.name} trial {k}: {as_opts(params)} -> validation {100 * value:.2f}%", flush=True)
        return value

    study = search_row(row, args.trials, args.search_seed, objective, shipped(row, args.stream, args.opts))
    return {"space": {k: list(v) for k, v in row.space.items()}, "best_params": study.best_params,
            "best_value": study.best_value,
            "trials": [{"number": t.number, "params": t.params, "value": t.value} for t in study.trials]}


def save_studies(args, studies: dict) -> None:
    path = args.out / "search" / "study.json"
    with _lock:
        old = json.loads(path.read_text())["rows"] if path.is_file() else {}
        meta = {"sampler": f"optuna TPESampler(seed={args.search_seed}), first trial the shipped setting",
                "trials_per_row": args.trials, "split": "DATA.VALIDATION 0.2", "seed": args.search_seed,
                "opts": args.opts, "search_opts": args.search_opts, "stream": args.stream}
        path.write_text(json.dumps({**meta, "rows": {**old, **studies}}, indent=1) + "\n")


def parallel(fn, items, jobs: int) -> list:
    """``fn`` over ``items``, ``jobs`` at a time; an item that fails is named, the others go on."""
    def safe(item):
        try:
            return fn(item)
        except Exception as e:  # noqa: BLE001 - one failed run must not stop the table
            what = item.name if isinstance(item, Row) else f"{item[0].name} seed {item[1]}"
            print(f"failed: {what}: {e}", flush=True)
            return None

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(safe, items))


def compare(args, rows: list[Row]) -> Path:
    """``casdap compare`` within each pipeline and against slda on the first-session backbone; the table."""
    from casdap.compare import load_runs, report
    from casdap.compare.paired import paired_differences

    done = {r.name: [d for d in sorted((args.out / "runs" / r.name).glob("seed*")) if finished(d)] for r in rows}
    done = {k: v for k, v in done.items() if v}
    by_row = {r.name: r for r in rows}
    refs = {f"{p}-none": [n for n in done if by_row[n].pipeline == p] for p in ("published", "shared")}
    refs["slda-first-session"] = list(done)
    deltas: dict[tuple[str, str], object] = {}
    for ref, names in refs.items():
        if ref not in done or len(names) < 2:
            continue
        runs = [d for n in names for d in done[n]]
        report(runs, args.out / f"compare-{ref}", reference=ref)
        comp = load_runs(runs)
        for d in paired_differences(comp.groups, reference=ref):
            if d.metric == "final_acc":
                deltas[(d.a.first.folder.parent.name, ref)] = d
    saved = args.out / "search" / "study.json"
    studies = json.loads(saved.read_text())["rows"] if saved.is_file() else {}
    lines = [f"| row | seeds | final acc | Δ vs `none`, same pipeline [95% CI] | Δ vs slda, first session [95% CI] "
             f"| validation (best of {args.trials}) | chosen setting |", "|---|---|---|---|---|---|---|"]
    for name, dirs in done.items():
        accs = [100 * finished(d)["final_acc"] for d in dirs]
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else 0.0
        cells = []
        for ref in (f"{by_row[name].pipeline}-none", "slda-first-session"):
            d = deltas.get((name, ref))
            ci = d.interval if d is not None else None
            cells.append("-" if d is None else f"{100 * d.mean:+.2f}" + (
                f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else "") + f" (n={d.n})")
        st = studies.get(name, {})
        chosen = ", ".join(f"{k.rsplit('.', 1)[-1]} {v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]} {v}"
                           for k, v in st.get("best_params", {}).items())
        val = f"{100 * st['best_value']:.2f}" if "best_value" in st else "-"
        lines.append(f"| {name} | {len(accs)} | {mean:.2f} ± {std:.2f} | {cells[0]} | {cells[1]} | {val} | {chosen} |")
    table = args.out / "table.md"
    table.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stream", choices=("digits", "embedded_shift"), default="digits")
    ap.add_argument("--out", type=Path, required=True, help="folder of the search, the runs and the table")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="test seeds (default 0-4)")
    ap.add_argument("--trials", type=int, default=3, help="validation trials per row, the same for every row")
    ap.add_argument("--search-seed", type=int, default=0, help="the sampler's seed and the trials' run seed")
    ap.add_argument("--search-opts", nargs="*", default=[], metavar="KEY VALUE",
                    help="the search's reduced protocol, the same for every row (e.g. DATA.PERCENTAGE 0.3)")
    ap.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE", help="overrides for every run")
    ap.add_argument("--rows", nargs="+", default=row_names(), metavar="ROW",
                    help="rows to run, in this order (default: all, the table's order)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each")
    ap.add_argument("--compare-only", action="store_true", help="run nothing: compare the finished runs")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.rows) - set(row_names()))
    if unknown:
        raise CasdapError(f"--rows: unknown row {unknown[0]} (rows: {', '.join(row_names())})")
    for name, pairs in (("--opts", args.opts), ("--search-opts", args.search_opts)):
        if len(pairs) % 2:
            raise CasdapError(f"{name} takes KEY VALUE pairs; got an odd number of words: {' '.join(pairs)}")
    if args.trials < 1:
        raise CasdapError(f"--trials must be at least 1, got {args.trials}")
    rows = [r for r in ROWS if r.name in args.rows]  # the table's order
    first = {name: i for i, name in enumerate(dict.fromkeys(args.rows))}  # the runs' order: as given
    if args.compare_only:
        compare(args, rows)
        return 0
    (args.out / "search").mkdir(parents=True, exist_ok=True)
    import torch

    from casdap.config import load_config
    from casdap.continual.runner import prepare_backbone

    torch.set_num_threads(1)  # the query row is scored in this process
    # the backbone is made once here (when missing), before the parallel runs would race to make it
    prepare_backbone(load_config(rows[0].config_file(args.stream), [*rows[0].opts.split(), *args.opts]))

    def study(row: Row):
        result = search(row, args)
        save_studies(args, {row.name: result})
        return result

    by_order = sorted(rows, key=lambda r: first[r.name])
    best = dict(zip([r.name for r in by_order], parallel(study, by_order, args.jobs)))
    # row by row in the order given, every seed of a row before the next row: a table cut short holds
    # whole rows
    jobs = [(r, seed) for r in by_order for seed in args.seeds if best[r.name] is not None]

    def test(job):
        row, seed = job
        opts = [*args.opts, "SEED", str(seed), *as_opts(best[row.name]["best_params"])]
        metrics = run_row(row, args.stream, args.out / "runs" / row.name / f"seed{seed}", opts)
        print(f"test {row.name} seed {seed}: {100 * metrics['final_acc']:.2f}%", flush=True)

    parallel(test, jobs, args.jobs)
    compare(args, rows)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CasdapError as e:
        sys.exit(f"factorial: {e}")

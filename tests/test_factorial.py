"""benchmarks/factorial.py: the search reads only validation runs, every row gets the same number of
trials, the seeded study is reproducible, finished runs are skipped, checkpoints are deleted, and the
rows are paired with compare. Tiny runs, in this process (``launch`` runs ``casdap cl`` here)."""

from __future__ import annotations

import contextlib
import json
import sys

import pytest
from conftest import ROOT

from casdap.config import load_config
from casdap.errors import CasdapError

sys.path.insert(0, str(ROOT / "benchmarks"))
import factorial  # noqa: E402
from factorial_rows import ROWS  # noqa: E402

TINY = ["MODEL.RANDOM_INIT", "True", "MODEL.BACKBONE", "rcvit_test", "DATA.PERCENTAGE", "0.1", "SOLVER.TOTAL_EPOCH",
        "1", "CONTINUAL.INITIAL", "5", "CONTINUAL.INCREMENT", "5", "CONTINUAL.N_TASKS", "2", "DEVICE", "cpu"]


@pytest.fixture
def in_process(monkeypatch):
    """``factorial.launch`` runs ``casdap cl`` in this process; returns the list of argv it was given."""
    from casdap.cli import main

    calls: list[list[str]] = []

    def launch(argv, log):
        calls.append(list(argv))
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            return main(["cl", *argv])

    monkeypatch.setattr(factorial, "launch", launch)
    monkeypatch.chdir(ROOT)
    return calls


def _value(argv: list[str], key: str) -> str | None:
    return argv[argv.index(key) + 1] if key in argv else None


def test_tiny_table(tmp_path, in_process):
    out = tmp_path / "table"
    args = ["--out", str(out), "--seeds", "0", "1", "--trials", "2", "--rows", "query-gaussians",
            "slda-first-session", "--jobs", "1", "--search-opts", "DATA.PERCENTAGE", "0.2", "--opts", *TINY]
    assert factorial.main(args) == 0
    search = [a for a in in_process if "/search/" in _value(a, "--output_dir")]
    test = [a for a in in_process if "/runs/" in _value(a, "--output_dir")]
    assert len(search) == 4 and len(test) == 4
    # the search reads the validation split only, under its reduced protocol; the test runs the full one
    assert all(_value(a, "DATA.VALIDATION") == "0.2" for a in search)
    for trial in out.glob("search/*/trial*/"):
        cfg = load_config(str(next(trial.rglob("config.yaml"))), [])
        assert cfg.DATA.VALIDATION == 0.2 and cfg.DATA.PERCENTAGE == 0.2 and cfg.SEED == 0
    assert not any("DATA.VALIDATION" in a for a in test)
    for run in out.glob("runs/*/seed*/"):
        assert load_config(str(run / "config.yaml"), []).DATA.VALIDATION == 0.0
    # the same number of trials per row; the first is the shipped setting; the test runs use the best
    study = json.loads((out / "search" / "study.json").read_text())
    assert study["trials_per_row"] == 2 and study["split"] == "DATA.VALIDATION 0.2"
    assert {n: len(s["trials"]) for n, s in study["rows"].items()} == {"query-gaussians": 2, "slda-first-session": 2}
    assert study["rows"]["slda-first-session"]["trials"][0]["params"] == {
        "SOLVER.BASE_LR": 0.01, "BASELINES.SLDA_SHRINKAGE": "auto"}
    best = study["rows"]["query-gaussians"]["best_params"]
    q0 = next(a for a in test if a[a.index("--output_dir") + 1].endswith("query-gaussians/seed0/cl"))
    assert float(_value(q0, "MODEL.DAP.SHRINKAGE")) == best["MODEL.DAP.SHRINKAGE"]
    # the query's Gaussians alone are a run of their own, scored on the test split; no checkpoint is left
    metrics = json.loads((out / "runs" / "query-gaussians" / "seed1" / "metrics.json").read_text())
    assert metrics["method"] == "query_gaussians" and metrics["finished"] and len(metrics["acc_matrix"]) == 2
    assert not list(out.rglob("checkpoints"))
    # paired with slda on the first-session backbone over both seeds
    table = (out / "table.md").read_text()
    assert "| query-gaussians | 2 |" in table and "(n=2)" in table
    assert (out / "compare-slda-first-session" / "paired.csv").is_file()

    # a second call runs nothing again and asks the same settings (the study is seeded); a checkpoint
    # left by a table stopped as a run ended is deleted
    in_process.clear()
    (out / "runs" / "slda-first-session" / "seed0" / "checkpoints").mkdir()
    assert factorial.main(args) == 0
    assert in_process == [] and not list(out.rglob("checkpoints"))
    assert json.loads((out / "search" / "study.json").read_text())["rows"] == study["rows"]
    # --compare-only runs nothing and writes the same table
    (out / "table.md").unlink()
    assert factorial.main([*args, "--compare-only"]) == 0
    assert in_process == [] and (out / "table.md").read_text() == table


def test_seeded_study_is_reproducible():
    row = next(r for r in ROWS if r.name == "shared-dap")

    def params(seed):
        seen = []
        factorial.search_row(row, 4, seed, lambda k, p: seen.append(p) or p["SOLVER.BASE_LR"])
        return seen

    assert params(3) == params(3) and params(3) != params(4)
    assert len({p["MODEL.DAP.SHRINKAGE"] for p in params(3)}) == 4


@pytest.mark.parametrize("stream", ["digits", "embedded_shift"])
def test_every_row_is_a_valid_run(stream):
    """Each row's config and overrides pass casdap cl's checks, its shipped values are inside its space,
    and its folder name is unique (compare --reference names a group by it)."""
    from casdap.continual.methods import check_config, method_keys

    assert len({r.name for r in ROWS}) == len(ROWS)
    for row in ROWS:
        opts = [*row.opts.split(), *factorial.VALIDATION]
        check_config(load_config(row.config_file(stream), opts, reads=method_keys))
        assert set(factorial.shipped(row, stream, [])) == set(row.space), row.name


def test_bad_input():
    with pytest.raises(CasdapError, match="--rows: unknown row nope"):
        factorial.main(["--out", "x", "--rows", "nope"])
    with pytest.raises(CasdapError, match="--search-opts takes KEY VALUE pairs"):
        factorial.main(["--out", "x", "--search-opts", "DATA.PERCENTAGE"])

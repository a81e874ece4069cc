"""``casdap compare``'s paired differences: the mean of per-seed differences over the seeds two groups
share, with a two-sided 95% Student-t interval, and the seeds only one group ran named."""

import csv
import math

import pytest
from test_compare import write_cl_run

from casdap import compare
from casdap.cli import main
from casdap.compare.paired import paired_differences, t_quantile
from casdap.errors import CasdapError


def one_row(acc: float, n: int = 2) -> list[list[float | None]]:
    """A matrix whose last row (hence final accuracy) is ``acc`` on every task."""
    return [[acc if j <= i else None for j in range(n)] for i in range(n)]


def write_groups(root, a: dict[int, float], b: dict[int, float]):
    for seed, acc in a.items():
        write_cl_run(root, f"dap_s{seed}", "dap", seed, one_row(acc), 2)
    for seed, acc in b.items():
        write_cl_run(root, f"slda_s{seed}", "slda", seed, one_row(acc), 2)
    return sorted(root.iterdir())


def test_t_quantiles_are_students():
    # the printed tables' two-sided 95% values
    assert [round(t_quantile(0.975, df), 3) for df in (1, 2, 4, 9, 29)] == [12.706, 4.303, 2.776, 2.262, 2.045]


def test_paired_interval_by_hand(tmp_path):
    a = {0: 0.90, 1: 0.92, 2: 0.94}
    b = {0: 0.88, 1: 0.91, 2: 0.90, 3: 0.50}  # seed 3 ran for b alone: named, never paired
    comp = compare.load_runs(write_groups(tmp_path, a, b))
    [d] = [d for d in paired_differences(comp.groups) if d.metric == "final_acc"]
    assert {d.a.first.method, d.b.first.method} == {"dap", "slda"}
    sign = 1 if d.a.first.method == "dap" else -1
    diffs = [0.02, 0.01, 0.04]  # dap - slda on seeds 0, 1, 2
    assert d.seeds == [0, 1, 2] and d.n == 3
    assert d.diffs == pytest.approx([sign * x for x in diffs])
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2)  # 0.015275
    half = 4.302653 * sd / math.sqrt(3)  # t(0.975, 2 df)
    low, high = d.interval
    assert d.mean == pytest.approx(sign * mean)
    assert sorted([low, high]) == pytest.approx(sorted([sign * (mean - half), sign * (mean + half)]), abs=1e-6)
    assert d.verdict == "n.s."  # [-0.0146, +0.0613] holds 0, though every seed favours dap
    assert (d.only_a, d.only_b) == (([], [3]) if sign == 1 else ([3], []))


def test_unpaired_means_would_mislead(tmp_path):
    """A shared seed effect that the means' standard deviations hide: dap beats slda by 1 point on every
    seed while the seeds themselves move 10 points. The paired interval is a single point, above 0."""
    a = {s: 0.70 + 0.1 * s + 0.01 for s in range(3)}
    b = {s: 0.70 + 0.1 * s for s in range(3)}
    comp = compare.load_runs(write_groups(tmp_path, a, b))
    [d] = paired_differences(comp.groups, reference="slda")
    assert d.a.first.method == "dap" and d.metric == "final_acc"
    assert d.mean == pytest.approx(0.01) and d.verdict == "a > b"
    assert d.interval == pytest.approx((0.01, 0.01), abs=1e-9)


def test_one_shared_seed_has_no_interval(tmp_path):
    comp = compare.load_runs(write_groups(tmp_path, {0: 0.9, 1: 0.9}, {1: 0.8, 2: 0.8}))
    [d] = paired_differences(comp.groups, reference="slda")
    assert d.seeds == [1] and d.interval is None and d.verdict == "-"
    assert (d.only_a, d.only_b) == ([0], [2])


def test_no_shared_seed_pairs_nothing(tmp_path):
    comp = compare.load_runs(write_groups(tmp_path, {0: 0.9}, {1: 0.8}))
    assert paired_differences(comp.groups) == []


def test_unknown_reference_is_one_error(tmp_path, capsys):
    runs = write_groups(tmp_path / "runs", {0: 0.9, 1: 0.9}, {0: 0.8, 1: 0.8})
    with pytest.raises(CasdapError, match="--reference 'l2p' names no group.*groups: dap, slda"):
        paired_differences(compare.load_runs(runs).groups, reference="l2p")
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "o"), "--reference", "l2p"]) != 0
    err = capsys.readouterr().err
    assert "--reference 'l2p' names no group" in err and "Traceback" not in err


def test_reference_by_the_folder_that_holds_a_groups_runs(tmp_path):
    """Two groups of one method under other settings (a prompt source, say) are told apart by the
    folder their seeds lie in, as the benchmark scripts lay runs out: <out>/<row>/seed<k>."""
    for row, acc, rate in (("none", 0.80, 0.1), ("dap", 0.85, 0.2)):
        for seed in (0, 1):
            write_cl_run(tmp_path / row, f"seed{seed}", "dap", seed, one_row(acc + 0.01 * seed), 2, lr=rate)
    comp = compare.load_runs(sorted(tmp_path.glob("*/seed*")))
    [d] = [d for d in paired_differences(comp.groups, reference="none") if d.metric == "final_acc"]
    assert d.b.first.folder.parent.name == "none" and d.a.first.folder.parent.name == "dap"
    assert d.seeds == [0, 1] and d.diffs == pytest.approx([0.05, 0.05])


def test_compare_writes_paired_tables(tmp_path, capsys):
    runs = write_groups(tmp_path / "runs", {0: 0.90, 1: 0.92, 2: 0.94}, {0: 0.88, 1: 0.91, 2: 0.90})
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, runs), "--out", str(out), "--reference", "slda"]) == 0
    printed = capsys.readouterr().out
    assert "Paired over shared seeds (A - B, 95% t-interval)" in printed
    md = (out / "summary.md").read_text()
    assert "| dap | slda | Final acc | 3 (0,1,2) | +2.33 | [-1.46, +6.13] | n.s. | - |" in md
    [row] = [r for r in csv.DictReader((out / "paired.csv").open()) if r["metric"] == "final_acc"]
    assert (row["a"], row["b"], row["n_paired"], row["seeds"]) == ("dap", "slda", "3", "0 1 2")
    assert float(row["ci_low"]) == pytest.approx(-0.014612, abs=1e-6)
    assert float(row["ci_high"]) == pytest.approx(0.061279, abs=1e-6)
    # the same folder, compared again without a shared seed, keeps no stale paired.csv
    lone = write_groups(tmp_path / "lone", {0: 0.9}, {1: 0.8})
    assert main(["compare", *map(str, lone), "--out", str(out)]) == 0
    assert not (out / "paired.csv").exists()

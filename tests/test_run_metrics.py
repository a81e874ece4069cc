"""One definition of the continual metrics and of the metrics.json fields (casdap.run_metrics), shared by
the runner's writer and by ``casdap compare``, which stays free of torch and matplotlib until it plots."""

import subprocess
import sys

import pytest
from test_compare import write_cl_run
from test_continual_runs import CONTRACT

from casdap import compare, run_metrics
from casdap.continual import results


def test_metrics_fields_are_the_run_directory_contract():
    assert set(run_metrics.METRICS_FIELDS) == CONTRACT


def test_writer_and_reader_use_the_same_metric_functions():
    for name in ("final_accuracy", "forgetting", "forgetting_per_task", "learning_accuracy", "backward_transfer",
                 "summarize", "METRICS_FIELDS"):
        assert getattr(results, name) is getattr(run_metrics, name)


def test_joint_row_has_only_a_final_accuracy():
    s = run_metrics.summarize([[0.8, 0.9]], joint=True)
    assert s == {"final_acc": pytest.approx(0.85), "forgetting": None, "learning_acc": None, "bwt": None}
    assert run_metrics.forgetting_per_task([[0.9, None], [0.5, 0.8]]) == pytest.approx([0.4])


def test_a_number_field_holding_something_else_is_named(tmp_path):
    run = write_cl_run(tmp_path, "x", wall_time_s="long")
    with pytest.raises(compare.RunError) as e:
        compare.load_run(run)
    assert str(e.value) == f"{run / 'metrics.json'}: 'wall_time_s' should be a number, got 'long'"


def test_compare_imports_neither_torch_nor_matplotlib():
    code = ("import sys, casdap.compare, casdap.cli.compare; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

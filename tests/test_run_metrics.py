"""One definition of the continual metrics and of the metrics.json fields (casdap.run_metrics), shared by
the runner's writer and by ``casdap compare``, which stays free of torch and matplotlib until it plots."""

import subprocess
import sys

import pytest
from test_compare import write_cl_run
from test_continual_runs import CONTRACT

from casdap import compare, run_metrics


def test_what_the_runs_writer_records_compare_reads_back_as_defined(tmp_path):
    """A run written by the runner's plugin, task by task, carries the contract's fields and DAP's
    metric definitions (computed here by hand), and ``casdap compare`` reads back the same values."""
    import json
    from types import SimpleNamespace

    import torch

    from casdap.continual.run_directory import RunDirectoryPlugin

    info = {"method": "finetune", "backbone": "rcvit_xs", "dataset": "digits", "seed": 0, "selection": None,
            "random_init_backbone": False, "trainable_params": 1, "total_params": 2}
    out = tmp_path / "run"
    plugin = RunDirectoryPlugin(out, 3, info, config_text="SEED: 0\n", verbose=False)
    strategy = SimpleNamespace(model=torch.nn.Linear(1, 1), clock=SimpleNamespace(train_iterations=0),
                               evaluator=SimpleNamespace(loggers=[]))
    for row in ([0.9], [0.95, 0.8], [0.6, 0.5, 0.9]):  # task 0 peaks after task 1, not on the diagonal
        plugin.finish_task(strategy, row, None, None)
    written = json.loads((out / "metrics.json").read_text())
    assert set(written) == CONTRACT == set(run_metrics.METRICS_FIELDS)
    want = {"final_acc": (0.6 + 0.5 + 0.9) / 3, "forgetting": ((0.95 - 0.6) + (0.8 - 0.5)) / 2,
            "learning_acc": (0.9 + 0.8 + 0.9) / 3, "bwt": ((0.6 - 0.9) + (0.5 - 0.8)) / 2}
    assert {k: written[k] for k in want} == pytest.approx(want)
    record = compare.load_run(out)
    assert {k: getattr(record, k) for k in want} == pytest.approx(want)
    assert record.acc_matrix == [[0.9, None, None], [0.95, 0.8, None], [0.6, 0.5, 0.9]]
    assert (out / "final_results.txt").read_text().count("Final test Accuracy") == 1


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

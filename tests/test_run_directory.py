"""The run directory plugin gives a user's own Avalanche strategy the files ``casdap compare`` reads."""

from __future__ import annotations

import csv
import warnings

import pytest
import torch
import torch.nn as nn
from cl_support import tiny_cifar_cfg, write_tiny_cifar

from casdap.compare.readers import load_continual_run
from casdap.continual.benchmarks import build_benchmark
from casdap.continual.run_directory import RUN_INFO_FIELDS, RunDirectoryPlugin
from casdap.continual.run_reading import read_resume_checkpoint
from casdap.errors import CasdapError

INFO = {"method": "my_naive", "backbone": "tiny_linear", "dataset": "cifar100", "seed": 0, "selection": None,
        "random_init_backbone": True, "trainable_params": 1, "total_params": 1}


def _strategy(plugins=()):
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    warnings.filterwarnings("ignore", message="No loggers specified")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), criterion=nn.CrossEntropyLoss(),
                 train_mb_size=8, train_epochs=1, eval_mb_size=8, device="cpu", plugins=list(plugins),
                 evaluator=EvaluationPlugin(accuracy_metrics(experience=True, stream=True)))


@pytest.fixture()
def bench(tmp_path):
    return build_benchmark(tiny_cifar_cfg(write_tiny_cifar(tmp_path / "cifar"), tmp_path / "unused", "linear"))


def test_a_users_own_strategy_gets_a_run_directory_compare_reads(tmp_path, bench):
    out = tmp_path / "run"
    strategy = _strategy()
    plugin = RunDirectoryPlugin(out, bench.n_tasks, INFO, config_text="SEED: 0\n", verbose=False)
    strategy.plugins.append(plugin)
    train, test = bench.scenario.train_stream, bench.scenario.test_stream
    measured = []
    for t in range(bench.n_tasks):
        strategy.train(train[t])
        results = strategy.eval(test[: t + 1])
        accs = {int(k[-3:]): v for k, v in results.items() if k.startswith("Top1_Acc_Exp/eval_phase/test_stream/")}
        measured.append([accs[j] for j in range(t + 1)])
    strategy.eval(test)  # an evaluation with no training before it adds no row

    run = load_continual_run(out)
    assert run.method == "my_naive" and run.n_tasks == bench.n_tasks == 2
    for t, row in enumerate(run.acc_matrix):
        assert row[: t + 1] == pytest.approx(measured[t])
    assert run.acc_matrix[0][1] is None
    with open(out / "acc_matrix.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["after_task", "task_0", "task_1"] and len(rows) == 3
    assert float(rows[2][2]) == pytest.approx(measured[1][1])
    final = sum(measured[1]) / 2
    assert f"Final test Accuracy: {final:.5f}" in (out / "final_results.txt").read_text()
    path, ckpt = read_resume_checkpoint(out)
    assert path.name == "task_001.pth" and ckpt["tasks_done"] == 2 and len(ckpt["state"]["acc_matrix"]) == 2
    # every image of every training iteration, on both tasks
    assert plugin.state.train_images == sum(len(e.dataset) for e in train)


def test_plugin_placed_before_the_evaluator_is_one_clear_error(tmp_path, bench):
    plugin = RunDirectoryPlugin(tmp_path / "run", bench.n_tasks, INFO, config_text="", verbose=False)
    strategy = _strategy([plugin])  # Avalanche appends the evaluator after the given plugins
    strategy.train(bench.scenario.train_stream[0])
    with pytest.raises(CasdapError, match="add it after the evaluator"):
        strategy.eval(bench.scenario.test_stream[:1])


def test_plugin_names_missing_run_information(tmp_path):
    with pytest.raises(CasdapError, match="info lacks"):
        RunDirectoryPlugin(tmp_path, 2, {k: INFO[k] for k in RUN_INFO_FIELDS[:-1]}, config_text="")


@pytest.mark.parametrize("keep_task, keep_final, left", [
    (False, True, [["task_000.pth"], ["task_001.pth"]]),  # the default: the newest only
    (True, True, [["task_000.pth"], ["task_000.pth", "task_001.pth"]]),  # CONTINUAL.KEEP_TASK_CHECKPOINTS
    (False, False, [["task_000.pth"], []]),  # MODEL.SAVE_CKPT False: a finished run keeps none
])
def test_a_run_keeps_its_newest_task_checkpoint_unless_asked_to_keep_every_task(tmp_path, bench, keep_task,
                                                                                keep_final, left):
    out = tmp_path / "run"
    strategy = _strategy()
    strategy.plugins.append(RunDirectoryPlugin(out, bench.n_tasks, INFO, config_text="SEED: 0\n", verbose=False,
                                               keep_task_checkpoints=keep_task, keep_final_checkpoint=keep_final))
    seen = []
    for t in range(bench.n_tasks):
        strategy.train(bench.scenario.train_stream[t])
        strategy.eval(bench.scenario.test_stream[: t + 1])
        seen.append(sorted(p.name for p in (out / "checkpoints").iterdir()))
    assert seen == left
    resumable = read_resume_checkpoint(out)
    assert (resumable[1]["tasks_done"] if resumable else None) == (2 if keep_final else None)

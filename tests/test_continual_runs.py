"""End-to-end continual-learning runs on tiny data: run directory contract, methods, resume,
evaluation protocols, bad input."""

import csv
import json
import warnings

import pytest
import torch
from cl_support import DIGITS_YAML, KEEP, interrupt_during_task, tiny_cifar_cfg, write_tiny_cifar

from casdap.cli import main
from casdap.config import load_config
from casdap.continual import runner
from casdap.continual.runner import run_continual
from casdap.errors import CasdapError

CONTRACT = {
    "method", "backbone", "dataset", "seed", "n_tasks", "tasks_done", "finished", "acc_matrix", "wtp_matrix",
    "tii_matrix", "final_acc", "forgetting", "learning_acc", "bwt", "wtp", "tii", "task_selection_acc",
    "mixed_stream_acc", "selection",
    "random_init_backbone", "wall_time_s", "trainable_params", "total_params", "train_images_per_s",
}


@pytest.fixture
def cifar(tmp_path):
    return write_tiny_cifar(tmp_path / "cifar")




def test_dap_run_directory_contract(tmp_path, cifar):
    out = tmp_path / "run"
    result = run_continual(tiny_cifar_cfg(cifar, out), progress=False)
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == CONTRACT and m == json.loads(json.dumps(result.metrics))
    assert m["method"] == "dap" and m["finished"] and m["tasks_done"] == 2 == m["n_tasks"]
    assert m["selection"] == "per_image" and m["random_init_backbone"] is True
    a = m["acc_matrix"]
    # each accuracy is hits over its task's 8 test images (2 classes of 4)
    assert a[0][1] is None and all(v * 8 == round(v * 8) for row in a for v in row if v is not None)
    assert m["final_acc"] == pytest.approx(sum(a[1]) / 2)
    assert m["learning_acc"] == pytest.approx((a[0][0] + a[1][1]) / 2)
    # per-image key selection on tasks of equal size: the stream's task selection is the mean of the last
    # TII row, and the mixed stream (each image predicted alone) scores the final accuracy
    assert m["task_selection_acc"] == pytest.approx(m["tii"]) == pytest.approx(sum(m["tii_matrix"][1]) / 2)
    assert m["mixed_stream_acc"] == pytest.approx(m["final_acc"])
    assert 0 < m["trainable_params"] < m["total_params"] and m["train_images_per_s"] > 0
    rows = list(csv.reader(open(out / "acc_matrix.csv")))
    assert rows[0] == ["after_task", "task_0", "task_1"] and rows[1][2] == ""
    text = (out / "final_results.txt").read_text()
    assert "TRANSFER_TYPE: dap" in text and f"Final test Accuracy: {m['final_acc']:.5f}" in text
    assert "Final test Forget:" in text and "Final test LA:" in text
    assert "randomly initialised" in text
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["task_001.pth"]  # the newest only
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    assert "TRANSFER_TYPE: dap" in (out / "config.yaml").read_text()


def test_dap_training_forces_keys_masks_classes_and_freezes_token_axis(tmp_path, cifar):
    from casdap.continual.dap_strategy import DAPStrategy

    cfg = tiny_cifar_cfg(cifar, tmp_path / "run", "dap", *KEEP)
    seen = []
    original = DAPStrategy.forward

    def spy(self):
        if self.is_training:
            seen.append((self.current_task, sorted(set(self.mb_y.tolist()))))
        return original(self)

    DAPStrategy.forward = spy
    try:
        res = run_continual(cfg, progress=False)
    finally:
        DAPStrategy.forward = original
    assert {t for t, _ in seen} == {0, 1}
    assert all(set(ys) <= ({0, 1} if t == 0 else {2, 3}) for t, ys in seen)
    ck0 = torch.load(res.output_dir / "checkpoints" / "task_000.pth", weights_only=True)["model"]
    ck1 = torch.load(res.output_dir / "checkpoints" / "task_001.pth", weights_only=True)["model"]
    structure = [k for k in ck0 if k.endswith(("token_map.weight", "token_map.bias", "gate_a", "gate_b"))]
    film = [k for k in ck0 if ".film." in k]
    assert structure and film
    # token-axis maps and gates trained on the first task only; FiLM keeps learning; backbone frozen
    assert all(torch.equal(ck0[k], ck1[k]) for k in structure)
    assert any(not torch.equal(ck0[k], ck1[k]) for k in film)
    assert any(ck0[k].abs().sum() > 0 for k in structure if "gate" in k)
    assert all(torch.equal(ck0[k], ck1[k]) for k in ck0 if k.startswith("backbone."))
    # masked cross-entropy: while learning task 1 the head rows of task 0's classes get no gradient
    assert torch.equal(ck0["head.weight"][:2], ck1["head.weight"][:2])
    assert not torch.equal(ck0["head.weight"][2:], ck1["head.weight"][2:])


@pytest.mark.parametrize("selection", ["batch_majority", "oracle"])
def test_other_key_selection_protocols_are_labelled(tmp_path, cifar, selection):
    out = tmp_path / selection
    m = run_continual(tiny_cifar_cfg(cifar, out, "dap", "MODEL.DAP.SELECTION", selection), progress=False).metrics
    assert m["selection"] == selection
    assert f"Key selection: {selection}" in (out / "final_results.txt").read_text()
    if selection == "oracle":
        assert m["task_selection_acc"] == 1.0


def test_mixed_stream_accuracy_of_per_image_runs_equals_a_real_shuffled_pass(tmp_path, cifar):
    from casdap.continual.benchmarks import build_benchmark
    from casdap.continual.run_directory import mixed_stream_accuracy

    cfg = tiny_cifar_cfg(cifar, tmp_path / "mixed", "dap", "DATA.BATCH_SIZE", "3")
    res = run_continual(cfg, progress=False)
    row = res.metrics["acc_matrix"][-1]
    assert res.metrics["mixed_stream_acc"] == pytest.approx(sum(row) / len(row))  # equal test sizes here
    # "batch_majority" forces the shuffled pass; the strategy itself still predicts per image
    test = build_benchmark(cfg).scenario.test_stream
    shuffled = mixed_stream_accuracy(res.strategy, [e.dataset for e in test], row, "batch_majority", 0, 3, 0)
    assert shuffled == pytest.approx(res.metrics["mixed_stream_acc"])


def test_restrict_to_task_limits_predictions_to_the_selected_task(tmp_path, cifar):
    out = tmp_path / "restrict"
    m = run_continual(tiny_cifar_cfg(cifar, out, "dap", "MODEL.DAP.RESTRICT_TO_TASK", "True",
                                     "MODEL.DAP.SELECTION", "oracle"), progress=False).metrics
    # with the true task's key and logits restricted to its classes, a task's images can only be
    # confused within the task: accuracy is at least that of the unrestricted model
    plain = run_continual(tiny_cifar_cfg(cifar, tmp_path / "plain", "dap", "MODEL.DAP.SELECTION", "oracle"),
                          progress=False).metrics
    assert m["final_acc"] >= plain["final_acc"]
    assert "restricted to the selected key's task" in (out / "final_results.txt").read_text()


@pytest.mark.parametrize("method", ["finetune", "linear", "ewc", "lwf", "replay", "ncm", "joint"])
def test_every_baseline_runs_on_the_same_stream(tmp_path, cifar, method, monkeypatch):
    from avalanche.core import SupervisedPlugin

    from casdap.continual.benchmarks import build_benchmark

    # the stream every method must see: built here, from the settings alone
    ref = build_benchmark(tiny_cifar_cfg(cifar, tmp_path / "ref", "dap"))
    ref_test = [[int(y) for y in e.dataset.targets] for e in ref.scenario.test_stream]
    assert ref.task_classes == [[0, 1], [2, 3]]  # DAP's protocol: natural label order
    seen: dict[str, list] = {"train": [], "eval": []}

    class Spy(SupervisedPlugin):
        def before_training_exp(self, strategy, **kwargs):
            seen["train"].append(set())

        def after_training_iteration(self, strategy, **kwargs):
            seen["train"][-1].update(strategy.mb_y.tolist())

        def before_eval(self, strategy, **kwargs):
            seen["eval"].append({})

        def after_eval_iteration(self, strategy, **kwargs):
            exp = int(strategy.experience.current_experience)
            seen["eval"][-1].setdefault(exp, []).extend(strategy.mb_y.tolist())

    build = runner._build_strategy

    def with_spy(*args, **kwargs):
        strategy = build(*args, **kwargs)
        strategy.plugins.insert(0, Spy())
        return strategy

    monkeypatch.setattr(runner, "_build_strategy", with_spy)
    out = tmp_path / method
    m = run_continual(tiny_cifar_cfg(cifar, out, method), progress=False).metrics
    tasks = [set(c) for c in ref.task_classes]
    if method == "joint":  # one training on every class, one evaluation of every task
        assert seen["train"] == [tasks[0] | tasks[1]] and [sorted(e) for e in seen["eval"]] == [[0, 1]]
    else:  # task t's classes, then the tasks seen so far evaluated
        if method == "replay":  # stored images of the first task join the second
            assert seen["train"][0] == tasks[0] and tasks[1] <= seen["train"][1] <= tasks[0] | tasks[1]
        else:
            assert seen["train"] == tasks
        assert [sorted(e) for e in seen["eval"]] == [[0], [0, 1]]
    for evaluation in seen["eval"]:  # the same test images, in the same order, for every method
        for j, labels in evaluation.items():
            assert labels == ref_test[j]
    for row in m["acc_matrix"]:  # each accuracy is hits over that whole test set
        for j, acc in enumerate(row):
            if acc is not None:
                assert acc * len(ref_test[j]) == pytest.approx(round(acc * len(ref_test[j])))
    assert set(m) == CONTRACT and m["method"] == method and m["finished"]
    assert (out / "final_results.txt").read_text().count("Final test Accuracy") == 1
    assert m["task_selection_acc"] is None and m["selection"] is None
    # the final accuracy is the last row's mean; each image is predicted alone, so the mixed stream of
    # both tasks' (equally many) test images scores the same
    assert m["final_acc"] == pytest.approx(sum(m["acc_matrix"][-1]) / 2) == pytest.approx(m["mixed_stream_acc"])
    if method == "joint":
        # one row, every task evaluated after training on everything at once (the upper bound)
        assert len(m["acc_matrix"]) == 1 and None not in m["acc_matrix"][0] and m["tasks_done"] == 2
        assert m["forgetting"] is None and m["learning_acc"] is None
        from casdap.compare import load_continual_run

        assert load_continual_run(out).final_acc == pytest.approx(m["final_acc"])
    else:
        assert m["learning_acc"] is not None and m["forgetting"] is not None
    if method in ("linear", "ncm"):
        assert m["trainable_params"] < m["total_params"]
    if method == "ncm":  # colour-coded fixture classes: prototypes separate them
        assert m["final_acc"] >= 0.75


@pytest.mark.parametrize("method", ["dap", "replay", "ewc", "lwf"])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, cifar, monkeypatch, method):
    extra = ("DATA.BATCH_SIZE", "4", "MODEL.DAP.KEYS_PER_TASK", "3")  # dap: seeded keys are resumed too
    full = run_continual(tiny_cifar_cfg(cifar, tmp_path / "full", method, *extra, tasks=2), progress=False).metrics
    killed = tmp_path / "killed"
    with monkeypatch.context() as mp:
        interrupt_during_task(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            run_continual(tiny_cifar_cfg(cifar, killed, method, *extra, tasks=2), progress=False)
    half = json.loads((killed / "metrics.json").read_text())
    assert half["tasks_done"] == 1 and not half["finished"]
    resumed = run_continual(tiny_cifar_cfg(cifar, killed, method, *extra, "SOLVER.AUTO_RESUME", "True", tasks=2),
                            progress=False).metrics
    assert resumed["acc_matrix"] == full["acc_matrix"]
    assert resumed["mixed_stream_acc"] == full["mixed_stream_acc"]
    assert resumed["finished"] and resumed["tasks_done"] == 2
    a = torch.load(tmp_path / "full" / "checkpoints" / "task_001.pth", weights_only=True)["model"]
    b = torch.load(killed / "checkpoints" / "task_001.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_is_not_overwritten_without_auto_resume(tmp_path, cifar):
    run_continual(tiny_cifar_cfg(cifar, tmp_path / "run", "ncm"), progress=False)
    with pytest.raises(Exception, match="already holds a run.*--auto_resume"):
        run_continual(tiny_cifar_cfg(cifar, tmp_path / "run", "ncm"), progress=False)


def test_cli_flags_map_onto_config_and_unknown_method_is_one_line(tmp_path, cifar, capsys):
    from casdap.cli import build_parser
    from casdap.cli.cl import resolve_config

    args = build_parser().parse_args([
        "cl", "--config-file", str(DIGITS_YAML), "--model", "rcvit_s", "--lr", "0.003", "--batch_size", "16",
        "--epochs", "2", "--output_dir", "o", "--data_path", "d", "--input_size", "64", "--use_amp", "--seed", "7",
        "--auto_resume", "--device", "cpu", "--num_workers", "1", "SOLVER.TOTAL_EPOCH", "3",
    ])
    cfg = resolve_config(args)
    assert (cfg.MODEL.BACKBONE, cfg.SOLVER.BASE_LR, cfg.DATA.BATCH_SIZE, cfg.OUTPUT_DIR, cfg.DATA.DATAPATH) == (
        "rcvit_s", 0.003, 16, "o", "d")
    assert (cfg.DATA.CROPSIZE, cfg.USE_AMP, cfg.SEED, cfg.SOLVER.AUTO_RESUME, cfg.DEVICE) == (64, True, 7, True, "cpu")
    assert cfg.DATA.NUM_WORKERS == 1 and cfg.SOLVER.TOTAL_EPOCH == 3  # KEY VALUE beats the flag
    untyped = resolve_config(build_parser().parse_args(["cl", "--config-file", str(DIGITS_YAML)]))
    assert untyped.SOLVER.TOTAL_EPOCH == 5 and untyped.DATA.CROPSIZE == 32  # the file beats the defaults

    code = main(["cl", "--config-file", str(DIGITS_YAML), "MODEL.TRANSFER_TYPE", "prompt-magic"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown method MODEL.TRANSFER_TYPE 'prompt-magic'" in err[0]
    for flag, key in (("--epochs", "SOLVER.TOTAL_EPOCH"), ("--batch_size", "DATA.BATCH_SIZE")):
        code = main(["cl", "--config-file", str(DIGITS_YAML), flag, "0", "--output_dir", str(tmp_path / "zero")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err == [f"casdap: error: {key} must be at least 1, got 0"]
        assert not (tmp_path / "zero").exists()


def test_main_py_routes_config_file_runs_to_cl(tmp_path, cifar):
    from casdap.cli import seed_main

    out = tmp_path / "seed"
    yaml = tmp_path / "tiny.yaml"
    yaml.write_text(tiny_cifar_cfg(cifar, out, "linear").dump())
    assert seed_main(["--config-file", str(yaml), "--epochs", "1", "--output_dir", str(out), "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["method"] == "linear"


def test_embedded_digits_default_runs(tmp_path):
    out = tmp_path / "digits"
    code = main(["cl", "--config-file", str(DIGITS_YAML), "--epochs", "1", "--output_dir", str(out), "--no-progress",
                 "MODEL.RANDOM_INIT", "True", "DATA.PERCENTAGE", "0.05", "MODEL.TRANSFER_TYPE", "ncm"])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["dataset"] == "digits" and m["n_tasks"] == 5 and len(m["acc_matrix"]) == 5
    assert m["final_acc"] > 0.5  # nearest class mean on the digits beats chance (0.1) by far


def test_missing_data_is_one_line_from_the_cli(tmp_path, capsys):
    from cl_support import CIFAR_YAML

    code = main(["cl", "--config-file", str(CIFAR_YAML), "--data_path", str(tmp_path / "none"), "--output_dir",
                 str(tmp_path / "o"), "MODEL.RANDOM_INIT", "True"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "CIFAR100 not found" in err[0]
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.reference
def test_bf16_autocast_run(request, tmp_path, cifar):
    """Pinned exactly (tests/reference/bf16_autocast_run.json): bfloat16 autocast on one CPU thread
    gives the same run every time. The tiny matrix alone cannot tell bf16 from float32, so the
    trained weights of the last checkpoint are pinned too."""
    from references import check_reference, weights_digest

    extra = ["USE_AMP", "True"]
    res = run_continual(tiny_cifar_cfg(cifar, tmp_path / "amp", "dap", *extra), progress=False)
    assert res.metrics["finished"]
    state = torch.load(res.output_dir / "checkpoints" / "task_001.pth", weights_only=True)["model"]
    record = {"config": "tests/cl_support.py tiny_cifar_cfg(write_tiny_cifar(), OUT, 'dap', *overrides)",
              "overrides": extra, "seed": 0}
    metrics = json.loads((res.output_dir / "metrics.json").read_text())
    check_reference(request, "bf16_autocast_run", record,
                    {"acc_matrix": metrics["acc_matrix"], "task_001_weights_sha256": weights_digest(state)})


def test_autocast_is_off_after_a_forward_that_raises():
    """The strategy's forward runs inside ``with torch.autocast``: an exception leaves it, too."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin
    from torch.utils.data import TensorDataset

    from casdap.continual.plugins import AutocastPlugin

    class Boom(torch.nn.Module):
        def forward(self, x):
            assert torch.is_autocast_enabled("cpu")  # the forward does run under autocast
            raise RuntimeError("boom")

    model = Boom()
    model.p = torch.nn.Parameter(torch.zeros(1))
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=2,
                     plugins=[AutocastPlugin(torch.device("cpu"))], evaluator=EvaluationPlugin(loggers=[]))

    data = TensorDataset(torch.zeros(4, 3), torch.tensor([0, 0, 1, 1]))
    data.targets = [0, 0, 1, 1]
    bench = class_incremental_benchmark({"train": data, "test": data}, num_experiences=1)
    for run in (lambda: strategy.train(bench.train_stream[0]), lambda: strategy.eval(bench.test_stream)):
        with pytest.raises(RuntimeError, match="boom"):
            run()
        assert not torch.is_autocast_enabled("cpu")


def test_amp_on_a_gpu_without_bf16_is_refused_with_the_fix(monkeypatch):
    from casdap import CasdapError
    from casdap.continual.plugins import AutocastPlugin

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(CasdapError, match="Tesla V100 does not support; set USE_AMP False"):
        AutocastPlugin(torch.device("cuda"))


def test_pretrained_weight_file_is_loaded_and_not_labelled_random(tmp_path, cifar):
    from casdap import create_model, save_checkpoint

    torch.manual_seed(1)
    donor = create_model("rcvit_test", num_classes=7, distillation=False)
    save_checkpoint({"model": donor.state_dict()}, tmp_path / "w.pth")
    out = tmp_path / "pre"
    res = run_continual(tiny_cifar_cfg(cifar, out, "ncm", "MODEL.RANDOM_INIT", "False", "MODEL.WEIGHT_PATH",
                                       str(tmp_path / "w.pth")), progress=False)
    assert res.metrics["random_init_backbone"] is False
    assert "randomly initialised" not in (out / "final_results.txt").read_text()
    loaded = res.strategy.model.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in donor.state_dict().items() if not k.startswith("head."))


def test_pin_memory_and_workers_reach_every_data_loader(tmp_path, cifar, monkeypatch):
    from avalanche.training.templates import SupervisedTemplate

    cfg = tiny_cifar_cfg(cifar, tmp_path / "pin", "linear", "DATA.PIN_MEMORY", "True")
    assert runner.loader_arguments(cfg, torch.device("cuda")) == {"num_workers": 0, "pin_memory": True}
    off = tiny_cifar_cfg(cifar, tmp_path / "pin", "linear", "DATA.PIN_MEMORY", "False")
    assert runner.loader_arguments(off, torch.device("cuda"))["pin_memory"] is False
    assert runner.loader_arguments(cfg, torch.device("cpu"))["pin_memory"] is False  # pinning helps a GPU only
    calls = []
    for name in ("make_train_dataloader", "make_eval_dataloader"):
        original = getattr(SupervisedTemplate, name)

        def spy(self, *a, _original=original, _name=name, **k):
            calls.append((_name, k.get("pin_memory"), k.get("num_workers")))
            return _original(self, *a, **k)

        monkeypatch.setattr(SupervisedTemplate, name, spy)
    # what a CUDA run with --pin_mem gets, here on the CPU (where pinning only warns)
    monkeypatch.setattr(runner, "loader_arguments", lambda cfg, device: {"num_workers": 0, "pin_memory": True})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        run_continual(cfg, progress=False)
    assert {c[0] for c in calls} == {"make_train_dataloader", "make_eval_dataloader"}
    assert all(c[1:] == (True, 0) for c in calls)


def test_log_every_n_prints_the_running_loss_without_progress_bars(tmp_path, cifar, capsys):
    run_continual(tiny_cifar_cfg(cifar, tmp_path / "log", "linear", "SOLVER.LOG_EVERY_N", "1"), progress=False)
    captured = capsys.readouterr()
    lines = [ln for ln in (captured.out + captured.err).splitlines() if " iteration " in ln]
    assert len(lines) == 4 and lines[0].startswith("task 1/2 epoch 1/1 iteration 1/2: loss ")  # 16 images, batch 8


def test_the_documented_method_module_is_all_a_new_method_needs(tmp_path, cifar, monkeypatch):
    """The worked example of docs/architecture.md ("Adding a method"), as written there, runs,
    resumes and leaves the run folder compare reads."""
    import dataclasses
    import re
    import sys

    from conftest import ROOT

    from casdap.compare import load_continual_run
    from casdap.continual import methods

    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc[doc.index("## Adding a method"):doc.index("## Where a new piece goes")]
    code, entry = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    (tmp_path / "smooth_method.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    name, schema = eval("{" + entry + "}", vars(methods)).popitem()  # the table entry, as written there
    monkeypatch.setitem(methods.METHODS, name, dataclasses.replace(schema, module="smooth_method"))
    with pytest.raises(CasdapError, match=r"^MODEL.PROMPT.LENGTH is not read by method smooth \(it reads: "):
        load_config(DIGITS_YAML, ["MODEL.TRANSFER_TYPE", "smooth", "MODEL.PROMPT.LENGTH", "8"],
                    reads=methods.method_keys)
    killed = tmp_path / "killed"
    with monkeypatch.context() as mp:
        interrupt_during_task(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            run_continual(tiny_cifar_cfg(cifar, killed, "smooth"), progress=False)
    m = run_continual(tiny_cifar_cfg(cifar, killed, "smooth", "SOLVER.AUTO_RESUME", "True"), progress=False).metrics
    full = run_continual(tiny_cifar_cfg(cifar, tmp_path / "full", "smooth"), progress=False).metrics
    assert m["method"] == "smooth" and m["finished"] and m["acc_matrix"] == full["acc_matrix"]
    assert load_continual_run(killed).method == "smooth"
    sys.modules.pop("smooth_method", None)


def test_cudnn_benchmark_setting_reaches_cudnn_on_cuda_only(tmp_path, cifar, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    on = tiny_cifar_cfg(cifar, tmp_path / "c", "linear", "CUDNN_BENCHMARK", "True")
    runner._set_cudnn(on, torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    runner._set_cudnn(on, torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True
    runner._set_cudnn(tiny_cifar_cfg(cifar, tmp_path / "c", "linear"), torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is False

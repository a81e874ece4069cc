"""L2P, DualPrompt and CODA-Prompt on the frozen CAS-ViT (issue 21): end to end on tiny data, each
image predicted alone, resume equal to an uninterrupted run, finished tasks' parts bit-identical under
weight decay, and one clear error per bad setting. Tiny CIFAR layout, random backbone, 2 tasks, 1 epoch."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from cl_support import CIFAR_YAML, KEEP, resume_after_interrupt, tiny_cifar_cfg, write_tiny_cifar

from casdap.config import load_config
from casdap.continual.methods import check_config, method_keys
from casdap.continual.runner import run_continual
from casdap.errors import CasdapError

METHODS = ("l2p", "dualprompt", "coda_prompt")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("prompt_methods") / "cifar")


@pytest.fixture(scope="module")
def full_runs(cifar, tmp_path_factory):
    """One uninterrupted run of every method (``<where>/full``, as resume_after_interrupt expects)."""
    runs = {}
    for method in METHODS:
        where = tmp_path_factory.mktemp(method)
        runs[method] = (where, run_continual(tiny_cifar_cfg(cifar, where / "full", method), progress=False))
    return runs


def _metrics(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _test_images(cifar) -> tuple[torch.Tensor, torch.Tensor]:
    with open(cifar / "cifar-100-python" / "test", "rb") as f:
        batch = pickle.load(f)
    x = torch.as_tensor(np.asarray(batch["data"]), dtype=torch.float32).reshape(-1, 3, 32, 32) / 255.0
    return (x - 0.5) / 0.25, torch.as_tensor(batch["fine_labels"])


@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs_end_to_end_with_its_decomposition(full_runs, method):
    from casdap.compare.readers import load_continual_run

    where, result = full_runs[method]
    m = _metrics(where / "full")
    assert m["method"] == method and m["finished"] and m["selection"] == "per_image"
    assert len(m["acc_matrix"]) == 2 and m["wtp"] is not None and m["tii"] is not None
    if method == "dualprompt":  # the E-prompt's task is the inferred task
        assert m["tii"] == pytest.approx(m["task_selection_acc"])
    else:  # no task of its own: the TII its class prediction implies
        assert m["task_selection_acc"] is None
    run = load_continual_run(where / "full")
    assert run.tii == m["tii"] and run.wtp == m["wtp"]
    # the saved config states what the method read: its prompts, not DAP's keys (the tiny config sets
    # MODEL.DAP.PROMPT_POOL for every method), nor the others' MODEL.PROMPT keys
    saved = (where / "full" / "config.yaml").read_text()
    assert "PROMPT_POOL" not in saved and "KEYS_PER_TASK" not in saved and "LENGTH" in saved
    assert ("TOP_N" in saved) == (method == "l2p") and ("COMPONENTS" in saved) == (method == "coda_prompt")
    # the untouched model: prompts behind zero gates on the first task only; gates frozen after it
    model = result.strategy.model
    assert all(not g.requires_grad for inj in model.injections for g in inj.gates())


@pytest.mark.parametrize("method", METHODS)
def test_an_untrained_prompt_model_is_the_frozen_backbone(method):
    from casdap.continual.methods import get_method

    cfg = load_config(CIFAR_YAML, ["MODEL.TRANSFER_TYPE", method, "MODEL.RANDOM_INIT", "True", "CONTINUAL.N_TASKS",
                                   "2", "DATA.NUMBER_CLASSES", "4", "MODEL.MODEL_ROOT", "/nonexistent"])
    torch.manual_seed(0)
    model = get_method(method).build_model(cfg, 4).eval()
    model.mark_trained(0)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        h = model._prefix(x)
        tokens = model.block_tokens(model._query_from(h), None, "per_image")[0]
        assert torch.allclose(model._prompted_from(h, tokens), model.backbone.forward_pooled(x), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_every_image_is_predicted_alone_in_any_batch_and_order(full_runs, cifar, method):
    strategy = full_runs[method][1].strategy
    x, y = _test_images(cifar)  # both tasks' test images, mixed in one batch
    logits, key = strategy.predict(x, y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    shuffled, shuffled_key = strategy.predict(x[order], y[order])
    assert torch.allclose(shuffled, logits[order], atol=1e-5)
    assert torch.equal(shuffled.argmax(1), logits.argmax(1)[order])
    for i in range(len(x)):
        alone, alone_key = strategy.predict(x[i:i + 1], y[i:i + 1])
        assert torch.allclose(alone[0], logits[i], atol=1e-5) and alone.argmax(1) == logits[i].argmax()
        if key is not None:
            assert alone_key[0] == key[i] and shuffled_key[(order == i).nonzero()[0, 0]] == key[i]


@pytest.mark.parametrize("method", METHODS)
def test_results_do_not_depend_on_the_evaluation_batch_size(full_runs, tmp_path, cifar, method):
    out = tmp_path / "eval1"  # against the full run's evaluation batches of 8
    run_continual(tiny_cifar_cfg(cifar, out, method, "DATA.EVAL_BATCH_SIZE", "1"), progress=False)
    metrics = [_metrics(out), _metrics(full_runs[method][0] / "full")]
    for key in ("acc_matrix", "wtp_matrix", "tii_matrix", "task_selection_acc", "mixed_stream_acc"):
        assert metrics[0][key] == metrics[1][key], key


@pytest.mark.parametrize("method", METHODS)
def test_resume_after_an_interrupt_equals_the_uninterrupted_run(full_runs, cifar, monkeypatch, method):
    where, _ = full_runs[method]
    resume_after_interrupt(monkeypatch, cifar, where, _metrics(where / "full"), method=method)


# what must not move after task 0 (2 classes, 4 CODA components: 2 per task)
FROZEN_AFTER_TASK0 = {
    "l2p": {"head.weight": [0, 1], "head.bias": [0, 1]},
    "dualprompt": {"head.weight": [0, 1], "head.bias": [0, 1], "source.keys": [0], "source.e_prompts.": [0]},
    "coda_prompt": {"head.weight": [0, 1], "head.bias": [0, 1], "source.keys": [0, 1], "source.attention": [0, 1],
                    "source.prompts.": [0, 1]},
}
TRAINED_IN_TASK1 = {"l2p": ("source.prompts.", None), "dualprompt": ("source.e_prompts.", [1]),
                    "coda_prompt": ("source.prompts.", [2, 3])}


@pytest.mark.parametrize("method, optimizer", [("l2p", "adamw"), ("dualprompt", "adamw"), ("coda_prompt", "adamw"),
                                               ("coda_prompt", "sgd")])
def test_parts_of_finished_tasks_stay_bit_identical_under_weight_decay(tmp_path, cifar, method, optimizer):
    """The runner's own optimizer (engine.optim_factory.build_group_optimizer) with decay > 0."""
    out = tmp_path / "run"
    run_continual(tiny_cifar_cfg(cifar, out, method, "SOLVER.OPTIMIZER", optimizer, "SOLVER.WEIGHT_DECAY", "0.05",
                                 "MODEL.PROMPT.COMPONENTS", "4", *KEEP), progress=False)
    after = [torch.load(out / "checkpoints" / f"task_{t:03d}.pth", weights_only=False)["model"] for t in (0, 1)]
    names = list(after[0])
    checked = 0
    for prefix, rows in FROZEN_AFTER_TASK0[method].items():
        for name in [n for n in names if n == prefix or (prefix.endswith(".") and n.startswith(prefix))]:
            assert torch.equal(after[0][name][rows], after[1][name][rows]), f"{name}: rows of task 0 moved"
            checked += 1
    assert checked >= len(FROZEN_AFTER_TASK0[method])
    for name in [n for n in names if ".gate_" in n]:  # the injection gates train on the first task only
        assert torch.equal(after[0][name], after[1][name]), name
    # what task 1 trains did learn
    prefix, rows = TRAINED_IN_TASK1[method]
    part = (lambda t: t[rows]) if rows else (lambda t: t)  # noqa: E731
    moved = [n for n in names if n.startswith(prefix) and not torch.equal(part(after[0][n]), part(after[1][n]))]
    assert moved, f"{prefix} did not train in task 1"
    assert not torch.equal(after[0]["head.weight"][2:], after[1]["head.weight"][2:])


def test_batch_majority_is_a_labelled_option(tmp_path, cifar):
    out = tmp_path / "majority"
    run_continual(tiny_cifar_cfg(cifar, out, "l2p", "MODEL.DAP.SELECTION", "batch_majority"), progress=False)
    assert _metrics(out)["selection"] == "batch_majority"
    assert "votes on its prompts" in (out / "final_results.txt").read_text()


@pytest.mark.parametrize("overrides, message", [
    (["MODEL.TRANSFER_TYPE", "l2p", "MODEL.PROMPT.POOL_SIZE", "3", "MODEL.PROMPT.TOP_N", "4"],
     "MODEL.PROMPT.POOL_SIZE (3) is smaller than MODEL.PROMPT.TOP_N (4)"),
    (["MODEL.TRANSFER_TYPE", "l2p", "MODEL.PROMPT.TOP_N", "0"], "MODEL.PROMPT.TOP_N must be at least 1"),
    (["MODEL.TRANSFER_TYPE", "dualprompt", "MODEL.PROMPT.LENGTH", "0"], "MODEL.PROMPT.LENGTH (prompt length) must be"),
    (["MODEL.TRANSFER_TYPE", "dualprompt", "MODEL.PROMPT.G_LENGTH", "0"], "MODEL.PROMPT.G_LENGTH (G-prompt length)"),
    (["MODEL.TRANSFER_TYPE", "coda_prompt", "MODEL.PROMPT.COMPONENTS", "12"],
     "MODEL.PROMPT.COMPONENTS (12) must divide evenly over the 10 tasks"),
    (["MODEL.TRANSFER_TYPE", "coda_prompt", "MODEL.DAP.SELECTION", "batch_majority"],
     "unknown prompt selection MODEL.DAP.SELECTION 'batch_majority' for coda_prompt (use one of per_image)"),
    (["MODEL.TRANSFER_TYPE", "l2p", "MODEL.DAP.SELECTION", "oracle"],
     "unknown prompt selection MODEL.DAP.SELECTION 'oracle' for l2p"),
    (["MODEL.TRANSFER_TYPE", "dualprompt", "MODEL.DAP.SELECTION", "vote"],
     "unknown prompt selection MODEL.DAP.SELECTION 'vote' for dualprompt"),
])
def test_bad_prompt_settings_are_one_clear_error(overrides, message):
    import re

    with pytest.raises(CasdapError, match=re.escape(message)):
        check_config(load_config(CIFAR_YAML, overrides, reads=method_keys))


def test_dualprompt_needs_a_block_for_its_e_prompts():
    from casdap.models import create_model
    from casdap.models.prompt_pools import PromptPoolModel

    backbone = create_model("rcvit_xs", num_classes=0, distillation=False)
    with pytest.raises(CasdapError, match="g_blocks must leave at least one of the 2 prompted blocks"):
        PromptPoolModel(backbone, 4, num_tasks=2, source="dualprompt", stages=[3], g_blocks=2)


@pytest.mark.parametrize("method", METHODS)
def test_shipped_method_configs_share_the_dap_rows_stream_and_are_valid(method):
    """configs/dap/<method>_<stream>.yaml: the stream, protocol and solver of the DAP row's config,
    prompted in the same blocks, and none of DAP's own settings (which the method does not read)."""
    for stream in ("digits", "embedded_shift"):
        cfg = load_config(CIFAR_YAML.parent / f"{method}_{stream}.yaml", reads=method_keys)
        check_config(cfg)
        dap = load_config(CIFAR_YAML.parent / f"{stream}.yaml")
        assert cfg.MODEL.TRANSFER_TYPE == method
        assert (cfg.DATA, cfg.CONTINUAL, cfg.SOLVER, cfg.SEED) == (dap.DATA, dap.CONTINUAL, dap.SOLVER, dap.SEED)
        for key in ("STAGES", "INJECTION", "PROMPT_LAST_BLOCK", "SELECTION"):  # the DAP row's prompted blocks
            assert cfg.MODEL.DAP[key] == dap.MODEL.DAP[key], (stream, key)


def test_table_rows_run_the_shipped_method_configs():
    """The rows of benchmarks/embedded_shift_table.sh and embedded_table.sh (overrides over the stream's
    config) build the same config as configs/dap/<method>_<stream>.yaml."""
    import re

    from conftest import ROOT

    shift = (ROOT / "benchmarks" / "embedded_shift_table.sh").read_text()
    for name, value in re.findall(r'^(PROMPTS_AS_MEASURED)="([^"]*)"$', shift, re.M):
        shift = shift.replace(f"${name}", value)  # the shell variable the rows use
    digits = (ROOT / "benchmarks" / "embedded_table.sh").read_text().replace("\\\n", " ")
    for method in METHODS:
        for stream, text, pattern in (
                ("embedded_shift", shift, rf'"{method}\|([^"]*)"'),
                ("digits", digits, rf'run {method} "\$seed" ([^\n]*)')):
            overrides = re.search(pattern, text).group(1).split()
            row = load_config(CIFAR_YAML.parent / f"{stream}.yaml", overrides, reads=method_keys)
            shipped = load_config(CIFAR_YAML.parent / f"{method}_{stream}.yaml", reads=method_keys)
            assert row == shipped, (method, stream)


@pytest.mark.parametrize("method", METHODS)
def test_each_strategy_runs_on_any_avalanche_benchmark_from_python(method):
    """The standard Avalanche constructor, a plain class-incremental benchmark, no runner; a
    ReplayPlugin is refused (its stored samples would be trained as the current task)."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from torch.utils.data import TensorDataset

    from casdap.continual import CODAPromptStrategy, DualPromptStrategy, L2PStrategy
    from casdap.models import create_model
    from casdap.models.prompt_pools import PromptPoolModel

    strategy_cls = {"l2p": L2PStrategy, "dualprompt": DualPromptStrategy, "coda_prompt": CODAPromptStrategy}[method]

    def dataset(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(4).repeat_interleave(n)
        d = TensorDataset(y[:, None, None, None] + 0.3 * torch.randn(len(y), 3, 32, 32, generator=g), y)
        d.targets = y.tolist()
        return d

    bench = class_incremental_benchmark({"train": dataset(4, 0), "test": dataset(2, 1)}, class_order=[0, 1, 2, 3],
                                        num_experiences=2)
    torch.manual_seed(0)
    options = {"g_blocks": 1} if method == "dualprompt" else {}  # stage 3 of rcvit_xs has 2 blocks
    model = PromptPoolModel(create_model("rcvit_xs", num_classes=0, distillation=False), 4, num_tasks=2,
                            source=method, stages=[3], **options)
    make = lambda plugins: strategy_cls(  # noqa: E731
        model=model, optimizer=torch.optim.Adam(model.trainable_parameters(), lr=0.01), train_mb_size=8,
        train_epochs=1, plugins=plugins, evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]))
    with pytest.raises(CasdapError, match="ReplayPlugin"):
        make([ReplayPlugin(mem_size=4)]).train(bench.train_stream[0])
    strategy = make([])
    for exp in bench.train_stream:
        strategy.train(exp)
    results = strategy.eval(bench.test_stream)
    assert any(k.startswith("Top1_Acc_Stream/eval_phase/test_stream") for k in results)
    assert strategy.state_dict()["class_to_task"] == {0: 0, 1: 0, 2: 1, 3: 1}

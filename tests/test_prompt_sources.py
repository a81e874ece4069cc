"""CAS-DAP's prompt sources (MODEL.DAP.PROMPT_SOURCE dap | static | none) end to end, with the
query, the task inference and the prediction.

Every source x query x prediction is run, each with one task inference, chosen so that every task
inference meets every source, every query and every prediction at least once (18 runs, all pairs
of the four choices; the 72 of the full product cost about 3 CPU seconds each). Each is two tiny
runs (2 tasks of 2 classes, 1 epoch, AdamW with weight decay 0.05): one uninterrupted with
evaluation batches of 100, one stopped as task 1 starts and resumed, with evaluation batches of 1.
Their matrices must be equal (resume and evaluation batch size change nothing), and so must every
trained parameter after task 1; a mixed batch of test images and each image alone must get the
same inferred task and prompted features; and in the uninterrupted run every part of task 0 (head
rows, task embedding, keys, the static source's tokens, the adapted query) must be bit-identical
before and after task 1.
"""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch
from cl_support import KEEP, tiny_cifar_cfg, write_tiny_cifar

from casdap.config import load_config
from casdap.continual.methods import check_config
from casdap.continual.runner import run_continual
from casdap.errors import CasdapError

SOURCES = ("dap", "static", "none")
QUERIES = ("frozen", "adapted")
TASK_INFERENCE = ("keys", "gaussian", "lda", "head")
PREDICTIONS = ("restrict", "all", "soft")
COMBINATIONS = [(source, query, TASK_INFERENCE[(s + p + q) % 4], prediction)
                for (s, source), (q, query), (p, prediction)
                in itertools.product(enumerate(SOURCES), enumerate(QUERIES), enumerate(PREDICTIONS))]
MATRICES = ("acc_matrix", "wtp_matrix", "tii_matrix", "task_selection_acc", "mixed_stream_acc")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("sources") / "cifar", train_per_class=4, test_per_class=2)


def _settings(source: str, query: str, inference: str, prediction: str) -> tuple[str, ...]:
    return ("MODEL.DAP.PROMPT_SOURCE", source, "MODEL.DAP.QUERY", query, "MODEL.DAP.TASK_INFERENCE", inference,
            "MODEL.DAP.PREDICTION", prediction, "MODEL.DAP.KEYS_PER_TASK", "1", "MODEL.DAP.SHRINKAGE", "0.5",
            "MODEL.DAP.STAGES", "[3]", "MODEL.DAP.NUM_DAP_TOKENS", "2", "SOLVER.OPTIMIZER", "adamw",
            "SOLVER.WEIGHT_DECAY", "0.05", "DATA.BATCH_SIZE", "4")  # two steps a task: the second opens the gates


def _metrics(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _test_images(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    from casdap.continual.benchmarks import build_benchmark

    data = [e.dataset.eval()[i] for e in build_benchmark(cfg).scenario.test_stream for i in range(len(e.dataset))]
    return torch.stack([d[0] for d in data]), torch.tensor([int(d[1]) for d in data])


def _stop_as_task_1_starts(monkeypatch) -> None:
    from casdap.continual.strategies import DAPStrategy

    original = DAPStrategy._before_training_exp

    def stop(self, **kwargs):
        if self.experience.current_experience == 1:
            raise KeyboardInterrupt
        original(self, **kwargs)

    monkeypatch.setattr(DAPStrategy, "_before_training_exp", stop)


def _task0_parts(state: dict, source: str, query: str, inference: str) -> dict[str, list[int] | None]:
    """Name -> rows (None: the whole tensor) of everything that belongs to task 0 alone, or to the
    query adapted on it: listed here, not asked of the model, so a part the model forgets to
    protect is still checked."""
    parts: dict[str, list[int] | None] = {"head.weight": [0, 1], "head.bias": [0, 1], "dap_task_emb.weight": [0]}
    if inference == "keys":
        parts["dap_task_predictor.keys"] = [0]
    if source == "static":
        tokens = [k for k in state if k.endswith(".generator.tokens")]
        assert tokens, "a static source has per-task tokens"
        parts.update({k: [0] for k in tokens})
    if query == "adapted":
        parts.update({k: None for k in state if k.startswith(("query_backbone.", "adapt_head.", "backbone."))})
    return parts


def test_the_combinations_hold_every_pair_of_choices():
    axes = (SOURCES, QUERIES, TASK_INFERENCE, PREDICTIONS)
    for i, j in itertools.combinations(range(4), 2):
        assert {(c[i], c[j]) for c in COMBINATIONS} == set(itertools.product(axes[i], axes[j]))
    assert {(c[0], c[1], c[3]) for c in COMBINATIONS} == set(itertools.product(SOURCES, QUERIES, PREDICTIONS))


@pytest.mark.parametrize("source, query, inference, prediction", COMBINATIONS,
                         ids=["-".join(c) for c in COMBINATIONS])
def test_every_combination_resumes_ignores_the_eval_batch_and_keeps_finished_tasks(
        tmp_path, cifar, monkeypatch, source, query, inference, prediction):
    settings = _settings(source, query, inference, prediction)
    full = tmp_path / "full"
    cfg = tiny_cifar_cfg(cifar, full, "dap", *settings, "DATA.EVAL_BATCH_SIZE", "100", *KEEP)
    strategy = run_continual(cfg, progress=False).strategy
    # finer than the matrices (in a tiny run the prompts move features, rarely a prediction): the test
    # images of both tasks in one batch and each alone get the same inferred task and the same prompted
    # features (float noise between batch sizes: < 5e-7 at a feature scale of ~1)
    x, y = _test_images(cfg)
    tasks = strategy.predict(x, y)[1]
    assert torch.equal(tasks, torch.cat([strategy.predict(x[i:i + 1], y[i:i + 1])[1] for i in range(len(y))]))
    model = strategy.model.eval()
    with torch.no_grad():
        together = model.forward_prompted(x, tasks)
        alone = torch.cat([model.forward_prompted(x[i:i + 1], tasks[i:i + 1]) for i in range(len(y))])
    assert torch.allclose(together, alone, rtol=0, atol=5e-6)
    stopped = tmp_path / "stopped"
    with monkeypatch.context() as mp:
        _stop_as_task_1_starts(mp)
        with pytest.raises(KeyboardInterrupt):
            run_continual(tiny_cifar_cfg(cifar, stopped, "dap", *settings, "DATA.EVAL_BATCH_SIZE", "1"),
                          progress=False)
    assert _metrics(stopped)["tasks_done"] == 1
    run_continual(tiny_cifar_cfg(cifar, stopped, "dap", *settings, "DATA.EVAL_BATCH_SIZE", "1",
                                 "SOLVER.AUTO_RESUME", "True"), progress=False)
    a, b = _metrics(full), _metrics(stopped)
    assert a["finished"] and b["finished"]
    # the resumed run trained task 1 exactly as the uninterrupted one: every trained parameter equal
    # (class statistics are sums over evaluation batches, so their last bits may differ between the runs)
    trained = [n for n, p in strategy.model.named_parameters()
               if not (inference != "keys" and n.startswith("dap_task_predictor."))]
    last = [torch.load(out / "checkpoints" / "task_001.pth", weights_only=False)["model"] for out in (full, stopped)]
    for name in trained:
        assert torch.equal(last[0][name], last[1][name]), f"{name}: the resumed run trained otherwise"
    assert (f"Prompt source: {source}" in (full / "final_results.txt").read_text()) == (source != "dap")
    for key in MATRICES:
        assert a[key] == b[key], key
    # weight decay 0.05 on everything that trains, yet task 0's own parts stay as task 0 left them
    after = [torch.load(full / "checkpoints" / f"task_{t:03d}.pth", weights_only=False)["model"] for t in (0, 1)]
    for name, rows in _task0_parts(after[0], source, query, inference).items():
        before_t1, after_t1 = (after[t][name] if rows is None else after[t][name][rows] for t in (0, 1))
        assert torch.equal(before_t1, after_t1), f"{name}: task 0's part moved while task 1 trained"
    assert not torch.equal(after[0]["head.weight"][2:], after[1]["head.weight"][2:])  # task 1 trained
    if source == "static":  # task 0's tokens trained (so decay would move them), then task 1's
        tokens = [k for k in after[1] if k.endswith(".generator.tokens")]
        assert all(after[0][k][0].abs().sum() > 0 and not torch.equal(after[0][k][1], after[1][k][1]) for k in tokens)
    if source == "none":
        assert not any(k.startswith("dap_blocks.") for k in after[1])


# ----------------------------------------------------------------------- none: prompts off
def test_source_none_is_the_prompts_off_ablation_bit_for_bit(tmp_path, cifar):
    """``PROMPT_SOURCE none`` and DAP's ablation ``NUM_DAP_TOKENS 0`` (kept as its alias) are one run."""
    runs = {"none": ("MODEL.DAP.PROMPT_SOURCE", "none"), "tokens0": ("MODEL.DAP.NUM_DAP_TOKENS", "0")}
    for name, extra in runs.items():
        run_continual(tiny_cifar_cfg(cifar, tmp_path / name, "dap", "MODEL.DAP.RESTRICT_TO_TASK", "True", *extra),
                      progress=False)
    a, b = (_metrics(tmp_path / name) for name in runs)
    for key in MATRICES:
        assert a[key] == b[key], key
    assert a["trainable_params"] == b["trainable_params"]
    sa, sb = (torch.load(tmp_path / n / "checkpoints" / "task_001.pth", weights_only=False)["model"] for n in runs)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert "Prompt source: none" in (tmp_path / "none" / "final_results.txt").read_text()


# ----------------------------------------------------------------------- static: the model
def _model(source: str, **kw):
    import casdap
    from casdap.models.dap import CASDAP

    torch.manual_seed(0)
    backbone = casdap.create_model("rcvit_xs", num_classes=0, distillation=False)
    return CASDAP(backbone, num_classes=4, num_tasks=2, num_tokens=2, task_emb_dim=8, stages=(2, 3),
                  prompt_source=source, **kw)


def test_static_prompts_start_as_the_frozen_backbone_and_do_not_depend_on_the_image():
    model = _model("static").eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x).feats, model.backbone.forward_pooled(x))
        for block in model._prompted_blocks():
            block.generator.tokens.normal_()
            block.gate_b.fill_(0.5)
        h = torch.randn(3, model.backbone.embed_dims[3], 1, 1)
        emb = model.dap_task_emb(torch.tensor([1, 1, 1]))
        generator = model.dap_blocks["3"][0].generator
        one = generator(h, emb, 1)
        assert torch.equal(one[0], one[1]) and torch.equal(one[0], one[2])  # same task: same prompts
        assert torch.equal(one, generator(torch.randn_like(h), emb, torch.tensor([1, 1, 1])))  # image ignored
        assert not torch.equal(one, generator(h, model.dap_task_emb(torch.tensor([0, 0, 0])), 0))
        assert not torch.equal(one, generator(h, model.dap_task_emb(torch.tensor([0, 0, 0])), 1))  # FiLM by e_t
        assert not torch.equal(model(x, task_id=0).feats, model(x, task_id=1).feats)  # prompts reach the features
    dap = _model("dap").dap_blocks["3"][0].generator
    with torch.no_grad():
        dap.token_map.weight.normal_()
        assert not torch.equal(*(dap(t, emb, 1) for t in (h, torch.randn_like(h))))  # dap's depend on it


def test_static_tokens_are_task_rows_and_train_only_the_trained_task():
    model = _model("static").train()
    with torch.no_grad():
        for block in model._prompted_blocks():
            block.gate_b.fill_(0.5)
    model(torch.randn(2, 3, 32, 32), task_id=1).logits.sum().backward()
    for block in model._prompted_blocks():
        tokens = block.generator.tokens
        assert tokens.grad[0].abs().sum() == 0 and tokens.grad[1].abs().sum() > 0
    rows = {id(p): r.tolist() for p, r in model.task_rows([0], [0, 1])}
    assert all(rows.get(id(b.generator.tokens)) == [0] for b in model._prompted_blocks())


# ----------------------------------------------------------------------- forbidden settings
@pytest.mark.parametrize("overrides, message", [
    (["MODEL.DAP.PROMPT_SOURCE", "pool"], "unknown MODEL.DAP.PROMPT_SOURCE 'pool' (use one of dap, static, none)"),
    (["MODEL.DAP.PROMPT_SOURCE", "static", "MODEL.DAP.CHANNEL_MIX", "True"],
     "MODEL.DAP.CHANNEL_MIX is an option of DAP's generator (MODEL.DAP.PROMPT_SOURCE dap), not of "
     "PROMPT_SOURCE static: set it False"),
    (["MODEL.DAP.PROMPT_SOURCE", "none", "MODEL.DAP.TASK_GENERATORS", "True"],
     "MODEL.DAP.TASK_GENERATORS is an option of DAP's generator (MODEL.DAP.PROMPT_SOURCE dap), not of "
     "PROMPT_SOURCE none: set it False"),
    (["MODEL.DAP.PROMPT_SOURCE", "static", "MODEL.DAP.NUM_DAP_TOKENS", "0"],
     "MODEL.DAP.NUM_DAP_TOKENS 0 makes no prompt: with MODEL.DAP.PROMPT_SOURCE static set it to 1 or more, "
     "or set PROMPT_SOURCE none for no prompt"),
])
def test_forbidden_prompt_source_settings_are_one_clear_error(overrides, message):
    cfg = load_config(None, ["DATA.NAME", "digits", "CONTINUAL.N_TASKS", "2", "MODEL.DAP.PROMPT_POOL", "2",
                             "MODEL.DAP.NUM_TASKS_FOR_EMB", "2", *overrides])
    with pytest.raises(CasdapError, match=f"^{re.escape(message)}$"):
        check_config(cfg)


def test_the_model_refuses_generator_options_for_sources_without_a_generator():
    with pytest.raises(CasdapError, match="prompt source none makes no prompts: channel_mix and task_generators"):
        _model("none", channel_mix=True)
    with pytest.raises(CasdapError, match="prompt source StaticPrompts does not take channel_mix"):
        _model("static", channel_mix=True)

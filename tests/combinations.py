"""Every allowed combination of a prompted CAS-ViT's four choices, prompt source x query x task
inference x prediction (docs/architecture.md), and the end-to-end check each one gets.

The combinations are listed here, from the choices each source has, not asked of the schema, so a
combination the schema loses still fails its test (``test_the_schema_allows_every_listed_combination``).
Each is two tiny runs (2 tasks of 2 classes, 1 epoch, two steps a task, AdamW with weight decay 0.05):
one uninterrupted with evaluation batches of 100, one stopped as task 1 starts and resumed, with
evaluation batches of 1. Their matrices and every trained parameter must be equal (resume and the
evaluation batch change nothing); a mixed batch of test images and each image alone get the same
inferred task and the same logits; and in the uninterrupted run every part of task 0 stays
bit-identical while task 1 trains.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from cl_support import KEEP, tiny_cifar_cfg

DAP_SOURCES = ("dap", "static", "none")  # MODEL.TRANSFER_TYPE dap with MODEL.DAP.PROMPT_SOURCE
POOL_SOURCES = ("l2p", "dualprompt", "coda_prompt")  # MODEL.TRANSFER_TYPE l2p | dualprompt | coda_prompt
# adapted: the query from the backbone adapted on the first task, which the prompts then run on too (as
# configs/dap/embedded_shift.yaml ships it; the adapted copy beside the pretrained backbone,
# PROMPT_BACKBONE pretrained: tests/test_prompt_pipeline.py, tests/test_adapted_query.py)
QUERIES = ("frozen", "adapted")
TASK_INFERENCE = ("keys", "gaussian", "lda", "head")
DAP_PREDICTIONS = ("restrict", "all", "soft")
POOL_PREDICTIONS = ("own", "all")  # own: the method's trained head over the seen classes (PREDICTION unset)
MATRICES = ("acc_matrix", "wtp_matrix", "tii_matrix", "task_selection_acc", "mixed_stream_acc")


class Combination(NamedTuple):
    source: str
    query: str
    inference: str | None  # None: the source has no task variable (l2p, coda_prompt)
    prediction: str

    @property
    def id(self) -> str:
        return "-".join(v for v in self if v is not None)


def combinations(source: str) -> list[Combination]:
    """Every allowed combination with ``source``."""
    if source in DAP_SOURCES:
        axes = (QUERIES, TASK_INFERENCE, DAP_PREDICTIONS)
    elif source == "dualprompt":
        axes = (QUERIES, TASK_INFERENCE, POOL_PREDICTIONS)
    else:
        axes = (QUERIES, (None,), POOL_PREDICTIONS)
    return [Combination(source, *c) for c in itertools.product(*axes)]


def method(c: Combination) -> str:
    return "dap" if c.source in DAP_SOURCES else c.source


def settings(c: Combination) -> tuple[str, ...]:
    """The config overrides that select ``c`` (beyond ``tiny_cifar_cfg``'s stream)."""
    out = ["MODEL.DAP.QUERY", c.query, "MODEL.DAP.SHRINKAGE", "0.5",
           "MODEL.DAP.PROMPT_BACKBONE", "adapted" if c.query == "adapted" else "pretrained",
           "SOLVER.OPTIMIZER", "adamw", "SOLVER.WEIGHT_DECAY", "0.05",
           "DATA.BATCH_SIZE", "4"]  # two steps a task: the second opens DAP's injection gates
    if c.inference is not None:
        out += ["MODEL.DAP.TASK_INFERENCE", c.inference]
    if c.source in DAP_SOURCES:
        out += ["MODEL.DAP.PROMPT_SOURCE", c.source, "MODEL.DAP.PREDICTION", c.prediction, "MODEL.DAP.STAGES", "[3]",
                "MODEL.DAP.KEYS_PER_TASK", "1", "MODEL.DAP.NUM_DAP_TOKENS", "2"]
    elif c.prediction == "all":
        out += ["MODEL.DAP.PREDICTION", "all", "MODEL.DAP.ALL_CLASS_HEAD", "lda"]
    if c.source == "coda_prompt":
        out += ["MODEL.PROMPT.COMPONENTS", "4"]  # two a task
    return tuple(out)


def task0_parts(state: dict, c: Combination) -> dict[str, list[int] | None]:
    """Name -> rows (None: the whole tensor) of everything that belongs to task 0 alone, or to the
    query adapted on it: listed here, not asked of the model, so a part the model forgets to protect
    is still checked."""
    parts: dict[str, list[int] | None] = {"head.weight": [0, 1], "head.bias": [0, 1]}

    def rows(name: str, r: list[int]) -> None:  # every tensor with ``name`` among its dotted parts
        names = [k for k in state if f".{name}." in f".{k}."]
        assert names, f"{c.source} has {name}"
        parts.update({k: r for k in names})

    if c.source in DAP_SOURCES:
        parts["dap_task_emb.weight"] = [0]
        if c.inference == "keys":
            parts["dap_task_predictor.keys"] = [0]
        if c.source == "static":
            rows("generator.tokens", [0])
    elif c.source == "dualprompt":
        if c.inference == "keys":
            rows("keys", [0])
        rows("e_prompts", [0])
    elif c.source == "coda_prompt":
        for name in ("keys", "attention", "prompts"):
            rows(name, [0, 1])
    for name in ("prompted_count", "prompted_sum", "prompted_outer"):  # kept class statistics of task 0
        if name in state:
            parts[name] = [0, 1]
    if c.query == "adapted":  # the first session's backbone, for good
        parts.update({k: None for k in state if k.startswith(("query_backbone.", "adapt_head.", "backbone."))})
    return parts


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _test_images(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    from casdap.continual.benchmarks import build_benchmark

    data = [e.dataset.eval()[i] for e in build_benchmark(cfg).scenario.test_stream for i in range(len(e.dataset))]
    return torch.stack([d[0] for d in data]), torch.tensor([int(d[1]) for d in data])


def _stop_as_task_1_starts(monkeypatch) -> None:
    """Every method's run raises KeyboardInterrupt (as Ctrl-C would) as task 1 starts."""
    from casdap.continual.plugins import ProgressPlugin

    original = ProgressPlugin.before_training_exp

    def stop(self, strategy, **kwargs):
        if strategy.experience.current_experience == 1:
            raise KeyboardInterrupt
        original(self, strategy, **kwargs)

    monkeypatch.setattr(ProgressPlugin, "before_training_exp", stop)


def check_combination(c: Combination, cifar: Path, tmp_path: Path, monkeypatch) -> None:
    from casdap.continual.runner import run_continual

    full = tmp_path / "full"
    cfg = tiny_cifar_cfg(cifar, full, method(c), *settings(c), "DATA.EVAL_BATCH_SIZE", "100", *KEEP)
    strategy = run_continual(cfg, progress=False).strategy
    # finer than the matrices (in a tiny run the prompts move features, rarely a prediction): the test
    # images of both tasks in one batch and each alone get the same task, class and logits, up to float
    # noise between batch sizes: < 5e-6 of the logits' scale (an LDA head's reach 1e6 here); soft
    # prediction's log-probabilities, log p(t) + log p(c | t), < 5e-6 of the scale of the task scores and
    # head logits they are made from
    x, y = _test_images(cfg)
    logits, tasks = strategy.predict(x, y)
    alone = [strategy.predict(x[i:i + 1], y[i:i + 1]) for i in range(len(y))]
    if tasks is not None:
        assert torch.equal(tasks, torch.cat([a[1] for a in alone])), "an image's task depends on its batch"
    together = torch.cat([a[0] for a in alone])
    assert torch.equal(logits.argmax(1), together.argmax(1)), "an image's prediction depends on its batch"
    if c.prediction == "soft":
        scores, _, per_task = strategy.model.forward_top_tasks(x, strategy.top_k)
        scale = max(float(scores.abs().max()), float(per_task.abs().max()))
        assert torch.allclose(logits, together, rtol=0, atol=5e-6 * scale)
    else:
        assert torch.allclose(logits, together, rtol=1e-3, atol=5e-6 * max(1.0, float(logits.abs().max())))

    stopped = tmp_path / "stopped"
    with monkeypatch.context() as mp:
        _stop_as_task_1_starts(mp)
        with pytest.raises(KeyboardInterrupt):
            run_continual(tiny_cifar_cfg(cifar, stopped, method(c), *settings(c), "DATA.EVAL_BATCH_SIZE", "1"),
                          progress=False)
    assert _metrics(stopped)["tasks_done"] == 1
    run_continual(tiny_cifar_cfg(cifar, stopped, method(c), *settings(c), "DATA.EVAL_BATCH_SIZE", "1",
                                 "SOLVER.AUTO_RESUME", "True"), progress=False)
    a, b = _metrics(full), _metrics(stopped)
    assert a["finished"] and b["finished"]
    for key in MATRICES:
        assert a[key] == b[key], key
    # the resumed run trained task 1 exactly as the uninterrupted one (class statistics are sums over
    # evaluation batches, so their last bits, and predictors fitted from them, may differ)
    trained = [n for n, p in strategy.model.named_parameters()
               if p.requires_grad and not (c.inference not in (None, "keys") and n.startswith("dap_task_predictor."))]
    last = [torch.load(out / "checkpoints" / "task_001.pth", weights_only=False)["model"] for out in (full, stopped)]
    for name in trained:
        assert torch.equal(last[0][name], last[1][name]), f"{name}: the resumed run trained otherwise"

    # weight decay 0.05 on everything that trains, yet task 0's own parts stay as task 0 left them
    after = [torch.load(full / "checkpoints" / f"task_{t:03d}.pth", weights_only=False)["model"] for t in (0, 1)]
    for name, rows in task0_parts(after[0], c).items():
        before_t1, after_t1 = (after[t][name] if rows is None else after[t][name][rows] for t in (0, 1))
        assert torch.equal(before_t1, after_t1), f"{name}: task 0's part moved while task 1 trained"
    assert not torch.equal(after[0]["head.weight"][2:], after[1]["head.weight"][2:])  # task 1 trained
    if c.query == "adapted":
        assert bool(after[1]["adapted"])
    if c.source == "static":  # task 0's tokens trained (so decay would move them), then task 1's
        tokens = [k for k in after[1] if k.endswith(".generator.tokens")]
        assert all(after[0][k][0].abs().sum() > 0 and not torch.equal(after[0][k][1], after[1][k][1]) for k in tokens)
    if c.source == "none":
        assert not any(k.startswith("dap_blocks.") for k in after[1])

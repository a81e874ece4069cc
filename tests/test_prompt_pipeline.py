"""The shared pipeline's options on L2P, DualPrompt and CODA-Prompt (docs/prompt_methods.md): prediction
over every seen class from class statistics of the prompted features, an adapted query, and DualPrompt's
task inference from class statistics of the query, each end to end on tiny data; for the adapted copy
beside the pretrained backbone (every other combination: tests/test_combinations_pools.py), the run
is per image (evaluation batches of 1 and 100 give the same matrices), resume gives the same matrix
and checkpoint, and finished tasks' parts stay bit-identical under AdamW with weight decay 0.05."""

from __future__ import annotations

import json
import re

import pytest
import torch
from cl_support import CIFAR_YAML, KEEP, resume_after_interrupt, tiny_cifar_cfg, write_tiny_cifar

from casdap.config import load_config
from casdap.continual.methods import check_config, method_keys
from casdap.continual.runner import run_continual
from casdap.errors import CasdapError

DECAY = ("SOLVER.OPTIMIZER", "adamw", "SOLVER.WEIGHT_DECAY", "0.05", "MODEL.PROMPT.COMPONENTS", "4",
         "DATA.EVAL_BATCH_SIZE", "100")
ALL = ("MODEL.DAP.PREDICTION", "all", "MODEL.DAP.ALL_CLASS_HEAD", "lda")
ADAPTED = ("MODEL.DAP.QUERY", "adapted", "MODEL.DAP.PROMPT_BACKBONE", "adapted")
ADAPTED_COPY = ("MODEL.DAP.QUERY", "adapted", "MODEL.DAP.PROMPT_BACKBONE", "pretrained")
# (method, the pipeline's settings): every test below runs each
CASES = [
    ("l2p", ALL),
    ("dualprompt", ALL),
    ("coda_prompt", ALL),
    ("l2p", ADAPTED_COPY),
    ("dualprompt", (*ADAPTED, "MODEL.DAP.TASK_INFERENCE", "gaussian", *ALL)),  # CAS-DAP's shipped pipeline
    ("coda_prompt", ADAPTED),
    ("dualprompt", ("MODEL.DAP.TASK_INFERENCE", "lda")),
]
# the cases tests/test_combinations_pools.py does not run (it holds every source x query x task
# inference x prediction with the prompts on the adapted backbone): the adapted copy beside the
# pretrained backbone; the per-image, resume and weight-decay checks below run on these alone
COPY_CASES = [c for c in CASES if c[1] is ADAPTED_COPY]
# what must not move after task 0 (2 classes, 4 CODA components: 2 per task), the kept statistics included
FROZEN_AFTER_TASK0 = {
    "l2p": {"head.weight": [0, 1], "head.bias": [0, 1]},
    "dualprompt": {"head.weight": [0, 1], "head.bias": [0, 1], "source.keys": [0], "source.e_prompts.": [0]},
    "coda_prompt": {"head.weight": [0, 1], "head.bias": [0, 1], "source.keys": [0, 1], "source.attention": [0, 1],
                    "source.prompts.": [0, 1]},
}
STATISTICS = ("prompted_count", "prompted_sum", "prompted_outer")


def _id(case) -> str:
    method, extra = case
    return method + "-" + "-".join(v for v in extra[1::2])


def _on(extra, key: str) -> str | None:
    return dict(zip(extra[::2], extra[1::2])).get(key)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("prompt_pipeline") / "cifar")


@pytest.fixture(scope="module")
def full_runs(cifar, tmp_path_factory):
    """One uninterrupted run of every case under weight decay (``<where>/full``)."""
    runs = {}
    for case in CASES:
        method, extra = case
        where = tmp_path_factory.mktemp(_id(case))
        runs[_id(case)] = (where, run_continual(tiny_cifar_cfg(cifar, where / "full", method, *DECAY, *extra, *KEEP),
                                                progress=False))
    return runs


def _metrics(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("case", [c for c in CASES if _on(c[1], "MODEL.DAP.PREDICTION")], ids=_id)
def test_the_all_class_head_is_fitted_on_every_seen_class_and_predicts(full_runs, case):
    where, result = full_runs[_id(case)]
    strategy, model = result.strategy, result.strategy.model
    assert "Prediction over every seen class (lda head" in (where / "full" / "final_results.txt").read_text()
    # one statistics pass per task over its 8 training images per class, with the evaluation transform
    assert model.prompted_count.tolist() == [8.0] * 4 and model.class_task.tolist() == [0, 0, 1, 1]
    assert bool((model.all_weight.abs().sum(1) > 0).all())
    x = torch.randn(5, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3, 0])
    logits, _ = strategy.predict(x, y)
    out = model.eval()(x, selection="per_image")
    assert torch.equal(logits, out.feats.float() @ model.all_weight.t() + model.all_bias)  # not the trained head


@pytest.mark.parametrize("case", COPY_CASES, ids=_id)
def test_results_do_not_depend_on_the_evaluation_batch_size(full_runs, tmp_path, cifar, case):
    method, extra = case
    metrics = []
    out = tmp_path / "eval1"  # against the full run's evaluation batches of 100 (every test image at once)
    run_continual(tiny_cifar_cfg(cifar, out, method, *DECAY, *extra, "DATA.EVAL_BATCH_SIZE", "1"), progress=False)
    metrics = [_metrics(out), _metrics(full_runs[_id(case)][0] / "full")]
    for key in ("acc_matrix", "wtp_matrix", "tii_matrix", "task_selection_acc", "mixed_stream_acc"):
        assert metrics[0][key] == metrics[1][key], key


@pytest.mark.parametrize("case", COPY_CASES, ids=_id)
def test_resume_after_an_interrupt_equals_the_uninterrupted_run(full_runs, cifar, monkeypatch, case):
    method, extra = case
    where, _ = full_runs[_id(case)]
    resume_after_interrupt(monkeypatch, cifar, where, _metrics(where / "full"), *DECAY, *extra, method=method)


@pytest.mark.parametrize("case", COPY_CASES, ids=_id)
def test_parts_of_finished_tasks_stay_bit_identical_under_weight_decay(full_runs, case):
    method, extra = case
    out = full_runs[_id(case)][0] / "full"
    after = [torch.load(out / "checkpoints" / f"task_{t:03d}.pth", weights_only=False)["model"] for t in (0, 1)]
    names = list(after[0])
    frozen = {**FROZEN_AFTER_TASK0[method], **{n: [0, 1] for n in STATISTICS if n in names}}
    if _on(extra, "MODEL.DAP.QUERY") == "adapted":  # the first session's backbone, for good
        assert bool(after[0]["adapted"]) and bool(after[1]["adapted"])
        copy = _on(extra, "MODEL.DAP.PROMPT_BACKBONE") == "pretrained"
        frozen.update({"query_backbone." if copy else "backbone.": ..., "adapt_head.": ...})
        if copy:  # the copy trained, the prompted pass's backbone did not
            assert not all(torch.equal(after[0][n], after[0]["query_" + n]) for n in names if n.startswith("backbone."))
    checked = 0
    for prefix, rows in frozen.items():
        for name in [n for n in names if n == prefix or (prefix.endswith(".") and n.startswith(prefix))]:
            assert torch.equal(after[0][name][rows], after[1][name][rows]), f"{name}: rows of task 0 moved"
            checked += 1
    assert checked >= len(frozen)
    for name in [n for n in names if ".gate_" in n]:  # the injection gates train on the first task only
        assert torch.equal(after[0][name], after[1][name]), name
    assert not torch.equal(after[0]["head.weight"][2:], after[1]["head.weight"][2:])  # task 1 trained


@pytest.mark.parametrize("case", [c for c in CASES if _on(c[1], "MODEL.DAP.TASK_INFERENCE")], ids=_id)
def test_dualprompts_task_is_inferred_from_class_statistics_of_the_query(full_runs, case):
    where, result = full_runs[_id(case)]
    model = result.strategy.model
    predictor = model.task_predictor
    assert type(predictor).__name__ == {"gaussian": "GaussianTaskPredictor", "lda": "LDATaskPredictor"}[
        _on(case[1], "MODEL.DAP.TASK_INFERENCE")]
    assert predictor.class_task.tolist() == [0, 0, 1, 1] and model.query_count.tolist() == [8.0] * 4
    m = _metrics(where / "full")
    assert m["tii"] == pytest.approx(m["task_selection_acc"])  # the E-prompt's task is the inferred task
    assert "Task inference: " in (where / "full" / "final_results.txt").read_text()
    x = torch.randn(6, 3, 32, 32)
    out = model.eval()(x, selection="per_image")
    query = model.forward_query(x)
    assert torch.equal(out.key_idx, predictor.selectable(predictor(query)).argmax(1))  # not the keys


@pytest.mark.parametrize("overrides, message", [
    (["MODEL.TRANSFER_TYPE", "dualprompt", "MODEL.DAP.TASK_INFERENCE", "vote"],
     "MODEL.DAP.TASK_INFERENCE"),
    (["MODEL.TRANSFER_TYPE", "dualprompt", "MODEL.DAP.TASK_INFERENCE", "gaussian", "MODEL.DAP.SHRINKAGE", "0"],
     "MODEL.DAP.SHRINKAGE must be above 0"),
    (["MODEL.TRANSFER_TYPE", "l2p", "MODEL.DAP.PREDICTION", "soft"],
     "MODEL.DAP.PREDICTION 'soft' is not available for l2p (use all, or leave it unset"),
    (["MODEL.TRANSFER_TYPE", "dualprompt", "MODEL.DAP.PREDICTION", "restrict"],
     "MODEL.DAP.PREDICTION 'restrict' is not available for dualprompt"),
    (["MODEL.TRANSFER_TYPE", "coda_prompt", "MODEL.DAP.PREDICTION", "all", "MODEL.DAP.ALL_CLASS_HEAD", "mean"],
     "unknown MODEL.DAP.ALL_CLASS_HEAD 'mean' (use one of pseudo, lda)"),
    (["MODEL.TRANSFER_TYPE", "l2p", "MODEL.DAP.PREDICTION", "all", "MODEL.DAP.SHRINKAGE", "0"],
     "MODEL.DAP.SHRINKAGE must be above 0"),
])
def test_bad_pipeline_settings_are_one_clear_error(overrides, message):
    with pytest.raises(CasdapError, match=re.escape(message)):
        check_config(load_config(CIFAR_YAML, overrides, reads=method_keys))


@pytest.mark.parametrize("method", ["l2p", "coda_prompt"])
def test_task_inference_is_refused_for_the_methods_without_a_task(method):
    """L2P and CODA-Prompt have no task variable: MODEL.DAP.TASK_INFERENCE is not theirs to read."""
    with pytest.raises(CasdapError, match=rf"^MODEL\.DAP\.TASK_INFERENCE is not read by method {method} \(it "
                                          r"reads: .*MODEL\.DAP\.\{ALL_CLASS_HEAD, .*QUERY"):
        load_config(CIFAR_YAML, ["MODEL.TRANSFER_TYPE", method, "MODEL.DAP.TASK_INFERENCE", "gaussian"],
                    reads=method_keys)


def test_the_pseudo_head_and_the_head_task_predictor_are_fitted_from_the_kept_statistics():
    """The registry's other choices, from statistics added as the statistics pass adds them: the
    all-class head trained on pseudo-features (ALL_CLASS_HEAD pseudo) and DualPrompt's task predictor
    ``head``; each scores the seen classes (and tasks) only."""
    from casdap.models import create_model
    from casdap.models.class_statistics import add_moments
    from casdap.models.prompt_pools import PromptPoolModel

    torch.manual_seed(0)
    model = PromptPoolModel(create_model("rcvit_xs", num_classes=0, distillation=False), 4, num_tasks=2,
                            source="dualprompt", stages=[3], g_blocks=1, task_predictor="head",
                            prompted_statistics=True, all_class_head="pseudo").eval()
    x, y = torch.randn(8, 3, 32, 32), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    model.mark_trained(0)
    feats = model.statistics_features(x, 0)
    assert sorted(feats) == ["prompted", "query"]
    moments = model.new_moments()
    for name, f in feats.items():
        add_moments(*moments[name], f, y)
    model.add_statistics(moments, [0, 1], 0)
    assert model.task_predictor.class_task.tolist() == [0, 0, -1, -1]
    logits = model.all_class_logits(model(x, selection="per_image").feats)
    assert bool((logits[:, 2:] <= -1e4).all()) and bool((logits[:, :2] > -1e3).all())
    assert model(x, selection="per_image").key_idx.tolist() == [0] * 8  # task 1 is not trained yet


def _as_older_run(out, **stated) -> None:
    """Make ``out``'s newest checkpoint one of a run whose settings stated ``stated`` (``KEY: value``)
    while they took no effect, as an l2p run's config did before the pools read the shared pipeline's
    keys; the run is left unfinished after that checkpoint."""
    from yacs.config import CfgNode

    from casdap.checkpoint import save_checkpoint

    (out / "metrics.json").unlink()
    for late in sorted((out / "checkpoints").glob("task_*.pth"))[1:]:
        late.unlink()
    path = out / "checkpoints" / "task_000.pth"
    ckpt = torch.load(path, weights_only=False)
    cfg = CfgNode.load_cfg(ckpt["config"])
    cfg.set_new_allowed(True)
    for key, value in stated.items():
        cfg.merge_from_list([key, value])
    ckpt["config"] = cfg.dump()
    save_checkpoint(ckpt, path)


@pytest.mark.parametrize("method, extra", [
    ("l2p", ALL),
    ("coda_prompt", ADAPTED),
    ("dualprompt", ("MODEL.DAP.TASK_INFERENCE", "gaussian")),
])
def test_an_older_checkpoint_without_the_pipelines_parts_is_one_clear_error(tmp_path, cifar, method, extra):
    """A checkpoint made without a part the config now turns on (an older run's, whose config stated
    the setting while it had no effect) is refused in one line that names the part, its setting and
    the fix, not torch's list of missing keys."""
    out = tmp_path / "run"
    run_continual(tiny_cifar_cfg(cifar, out, method, *KEEP), progress=False)
    _as_older_run(out, **dict(zip(extra[::2], extra[1::2])))
    with pytest.raises(CasdapError) as err:
        run_continual(tiny_cifar_cfg(cifar, out, method, *extra, "SOLVER.AUTO_RESUME", "True"), progress=False)
    message = str(err.value)
    assert "\n" not in message and "Missing key" not in message
    part = {"MODEL.DAP.PREDICTION": "class statistics of the prompted features (MODEL.DAP.PREDICTION all)",
            "MODEL.DAP.QUERY": "adapted query (MODEL.DAP.QUERY adapted)",
            "MODEL.DAP.TASK_INFERENCE": "class statistics of the query (MODEL.DAP.TASK_INFERENCE"}[extra[0]]
    assert message.startswith(f"cannot resume '{out}' from task_000.pth: the checkpoint was made with other "
                              f"settings: it lacks the {part}")
    assert f"casdap cl --config-file {out / 'config.yaml'} --auto_resume True" in message
    assert "another OUTPUT_DIR" in message


def test_a_checkpoint_with_parts_the_model_lacks_names_them():
    """The other way round, from Python: the model's own error, one line."""
    from casdap.models import create_model
    from casdap.models.prompt_pools import PromptPoolModel
    from casdap.models.prompt_state import LayoutMismatch

    def model(**kw):
        return PromptPoolModel(create_model("rcvit_xs", num_classes=0, distillation=False), 4, num_tasks=2,
                               source="l2p", stages=[3], **kw)

    with pytest.raises(LayoutMismatch, match=r"^the checkpoint was made with other settings: it holds the adapted "
                                             r"query \(MODEL.DAP.QUERY adapted\) that the model's settings turn "
                                             r"off: build the model with the checkpoint's own settings to load it$"):
        model().load_state_dict(model(query="adapted").state_dict())
    model(query="adapted").load_state_dict(model(query="adapted").state_dict())  # the same parts load
    model().load_state_dict(model(query="adapted").state_dict(), strict=False)  # a partial load is the caller's


@pytest.mark.parametrize("method, options", [("l2p", {}), ("dualprompt", {"g_blocks": 1}),
                                             ("coda_prompt", {"components": 4})])
def test_a_checkpoint_from_before_the_pools_were_sources_loads(method, options):
    """The pool's parameters at the model's top level (``keys``, ``prompts.0``, ...) load into the
    source slot (``source.keys``, ...), every tensor as it was."""
    from casdap.models import create_model
    from casdap.models.prompt_pools import PromptPoolModel

    def model(seed):
        torch.manual_seed(seed)
        return PromptPoolModel(create_model("rcvit_xs", num_classes=0, distillation=False), 4, num_tasks=2,
                               source=method, stages=[3], **options)

    new = model(1).state_dict()
    old = {k.removeprefix("source."): v for k, v in new.items()}
    assert any(k.startswith("source.") for k in new) and not any(k.startswith("source.") for k in old)
    loaded = model(2)
    loaded.load_state_dict(old)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in new.items())


# (method, task inference or None, the prediction settings a run with no prediction settings is compared with)
PREDICTION_ONLY = [
    ("l2p", None, ALL),  # the statistics pass exists only for the all-class head
    ("l2p", None, ("MODEL.DAP.FUSION_WEIGHT", "0.3")),  # ... only for fusion's Gaussians
    ("dap", "keys", ALL),
    ("dap", "head", ("MODEL.DAP.PREDICTION", "soft")),
    ("dap", "gaussian", (*ALL, "MODEL.DAP.FUSION_WEIGHT", "0.3")),  # the pass runs in both: task inference reads it
]


@pytest.mark.parametrize("method,inference,prediction", PREDICTION_ONLY,
                         ids=[f"{m}-{i}-{'-'.join(p[1::2])}" for m, i, p in PREDICTION_ONLY])
def test_prediction_settings_never_change_what_trains(tmp_path, cifar, method, inference, prediction):
    """The prediction scores; it trains nothing. A statistics pass that only the prediction reads
    draws nothing from the random numbers the next task trains with, so every trained tensor of every
    task ends bit-identical to the same run's without that prediction."""
    task = ("MODEL.DAP.TASK_INFERENCE", inference, "MODEL.DAP.KEYS_PER_TASK", "1") if inference else ()
    base = (*task, "SOLVER.OPTIMIZER", "adamw", "SOLVER.WEIGHT_DECAY", "0.05", *KEEP)
    runs = {}
    for name, extra in (("plain", ()), ("predicted", prediction)):
        res = run_continual(tiny_cifar_cfg(cifar, tmp_path / name, method, *base, *extra), progress=False)
        trained = [n for n, p in res.strategy.model.named_parameters() if p.requires_grad]
        runs[name] = [torch.load(tmp_path / name / "checkpoints" / f"task_{t:03d}.pth", weights_only=False)["model"]
                      for t in (0, 1)]
    assert trained
    for t in (0, 1):
        for n in trained:
            assert torch.equal(runs["plain"][t][n], runs["predicted"][t][n]), f"task {t}: {n} trained otherwise"

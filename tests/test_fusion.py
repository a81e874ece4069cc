"""Fused prediction (``MODEL.DAP.FUSION_WEIGHT``, casdap/continual/fusion.py): the prompted prediction
and the query's class Gaussians combined log-linearly. Per image (evaluation batches of 1 and 100 give
the same matrix), weight 0 is the unfused prediction exactly, the validation script scores each weight
as a run with that weight does, it resumes to the same matrix and checkpoint, it runs for every prompt
source, and bad input is one clear error."""

from __future__ import annotations

import importlib.util
import math
import re

import pytest
import torch
from cl_support import DIGITS_YAML, KEEP, resume_after_interrupt, tiny_cifar_cfg, write_tiny_cifar
from conftest import ROOT

from casdap.config import load_config
from casdap.continual.fusion import Fused, fused_scores
from casdap.continual.methods import check_config, method_keys
from casdap.continual.prediction import AllClasses
from casdap.continual.runner import run_continual
from casdap.errors import CasdapError


def _script():
    spec = importlib.util.spec_from_file_location("fusion_weight_validation",
                                                  ROOT / "benchmarks" / "fusion_weight_validation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("fusion") / "cifar")


# -- the scores ---------------------------------------------------------------------------------


def test_fused_scores_are_per_image_log_probabilities():
    g = torch.Generator().manual_seed(0)
    logits, query = torch.randn(5, 6, generator=g) * 5, torch.randn(5, 6, generator=g) * 50
    query[:, 4:] = float("-inf")  # classes 4, 5 have no statistics
    fused = fused_scores(logits, query, 0.7)
    assert torch.allclose(torch.logsumexp(fused, 1), torch.zeros(5), atol=1e-5)  # normalised per image
    assert (fused[:, 4:] < -1e3).all()  # a class without statistics cannot be chosen
    for i in range(5):  # each image alone gets what it gets in the batch
        assert torch.equal(fused_scores(logits[i:i + 1], query[i:i + 1], 0.7), fused[i:i + 1])
    # the form: log p_prompted + w log p_query, up to each image's constant
    expected = torch.log_softmax(logits[:, :4], 1) + 0.7 * torch.log_softmax(query[:, :4], 1)
    assert torch.allclose(fused[:, :4] - fused[:, :1], expected - expected[:, :1], atol=1e-4)
    # weight 0: the prompted ranking over the classes with statistics
    assert torch.equal(fused_scores(logits, query, 0.0)[:, :4].argmax(1), logits[:, :4].argmax(1))
    # a large weight: the Gaussians' choice
    assert torch.equal(fused_scores(logits, query, 1e4).argmax(1), query.argmax(1))
    # no statistics at all yet: the prompted prediction as it is
    none = fused_scores(logits, torch.full_like(query, float("-inf")), 0.7)
    assert torch.equal(none.argmax(1), logits.argmax(1)) and torch.isfinite(none).all()


# -- every prompt source ------------------------------------------------------------------------

SOURCES = {
    "dap": ("dap", ()),
    "static": ("dap", ("MODEL.DAP.PROMPT_SOURCE", "static")),
    "none": ("dap", ("MODEL.DAP.PROMPT_SOURCE", "none", "MODEL.DAP.NUM_DAP_TOKENS", "0")),
    "dap-gaussian-all": ("dap", ("MODEL.DAP.TASK_INFERENCE", "gaussian", "MODEL.DAP.KEYS_PER_TASK", "1",
                                 "MODEL.DAP.PREDICTION", "all")),
    "dap-gaussian-soft": ("dap", ("MODEL.DAP.TASK_INFERENCE", "gaussian", "MODEL.DAP.KEYS_PER_TASK", "1",
                                  "MODEL.DAP.PREDICTION", "soft", "MODEL.DAP.TOP_K", "2")),
    "dap-restrict": ("dap", ("MODEL.DAP.PREDICTION", "restrict")),
    "l2p": ("l2p", ()),
    "dualprompt-gaussian": ("dualprompt", ("MODEL.DAP.TASK_INFERENCE", "gaussian")),
    "coda_prompt-all": ("coda_prompt", ("MODEL.DAP.PREDICTION", "all", "MODEL.PROMPT.COMPONENTS", "4")),
}


@pytest.mark.parametrize("name", list(SOURCES))
def test_fusion_runs_for_every_prompt_source(tmp_path, cifar, name):
    method, extra = SOURCES[name]
    res = run_continual(tiny_cifar_cfg(cifar, tmp_path, method, *extra, "MODEL.DAP.FUSION_WEIGHT", "0.5"),
                        progress=False)
    model = res.strategy.model
    # a Gaussian task predictor of the query is the fusion's (no second copy); else the model's own
    shared = "gaussian" in name
    assert model.fusion_source == ("fusion_gaussians" if not shared else
                                   "dap_task_predictor" if method == "dap" else "task_predictor")
    assert hasattr(model, "fusion_gaussians") != shared
    assert isinstance(res.strategy.prediction_mode, Fused) and res.strategy.prediction_mode.weight == 0.5
    assert (model.get_submodule(model.fusion_source).class_task >= 0).all()  # every class has its Gaussian
    assert "Prediction fused with the query's class Gaussians: log p_prompted + 0.5 x log p_query" in (
        tmp_path / "final_results.txt").read_text()


# -- per image, weight 0, the validation script -------------------------------------------------


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """Tiny CIFAR whose classes overlap (colour under noise of +-250), 16 training images a class:
    predictions are far from perfect, so fusion moves them."""
    return write_tiny_cifar(tmp_path_factory.mktemp("noisy") / "cifar", train_per_class=16, noise=250)


def _noisy_cfg(data, out, *extra):
    """Two tasks of two classes, a quarter of each class's training images held out as the validation
    split (what the runs evaluate and the script scores)."""
    return tiny_cifar_cfg(data, out, "dap", "DATA.VALIDATION", "0.25", "MODEL.DAP.KEYS_PER_TASK", "1",
                          "MODEL.DAP.RESTRICT_TO_TASK", "False", "MODEL.DAP.SHRINKAGE", "0.1", *extra)


PIPELINES = {
    "dap-gaussian-all": ("MODEL.DAP.TASK_INFERENCE", "gaussian", "MODEL.DAP.PREDICTION", "all"),
    "none-gaussian-all": ("MODEL.DAP.TASK_INFERENCE", "gaussian", "MODEL.DAP.PREDICTION", "all",
                          "MODEL.DAP.PROMPT_SOURCE", "none", "MODEL.DAP.NUM_DAP_TOKENS", "0",
                          "MODEL.DAP.TASK_GENERATORS", "False"),
    "l2p": ("MODEL.TRANSFER_TYPE", "l2p"),
}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_fusion_is_per_image_weight_0_is_unfused_and_the_script_scores_as_a_run(tmp_path, noisy, name):
    extra = PIPELINES[name]
    unfused = run_continual(_noisy_cfg(noisy, tmp_path / "unfused", *extra), progress=False).metrics["acc_matrix"]
    fused = {b: run_continual(_noisy_cfg(noisy, tmp_path / f"fused{b}", *extra, *KEEP, "MODEL.DAP.FUSION_WEIGHT",
                                         "0.3", "DATA.EVAL_BATCH_SIZE", str(b)), progress=False).metrics["acc_matrix"]
             for b in (1, 100)}
    assert fused[1] == fused[100]  # per image: the batch does not matter
    assert fused[1] != unfused  # the Gaussians move predictions here

    out = tmp_path / "fused100"
    scored = _script().score_weights(load_config(out / "config.yaml"), out, [0, 0.3])
    lower = [[v for v in row if v is not None] for row in unfused]
    assert scored["acc_matrix"]["0.0"] == lower  # weight 0 is the unfused prediction, exactly
    assert scored["acc_matrix"]["0.3"] == [[v for v in row if v is not None] for row in fused[100]]
    assert scored["best_weight"] in (0.0, 0.3)
    assert math.isclose(scored["final_acc"]["0.3"], sum(fused[1][-1]) / 2)


def test_the_validation_script_runs_scores_and_refuses_the_test_set(tmp_path, cifar, monkeypatch, capsys):
    import json
    import sys

    script = _script()
    cfg = tiny_cifar_cfg(cifar, tmp_path / "val", "dap", "DATA.VALIDATION", "0.25")
    argv = ["fusion_weight_validation.py", "--config-file", str(tmp_path / "val.yaml"), "--weights", "0", "2"]
    (tmp_path / "val.yaml").write_text(cfg.dump())
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    saved = json.loads((tmp_path / "val" / "fusion_weights.json").read_text())
    assert saved["weights"] == [0.0, 2.0] and set(saved["final_acc"]) == {"0.0", "2.0", "query_alone"}
    assert saved["best_weight"] in (0.0, 2.0) and "best: MODEL.DAP.FUSION_WEIGHT" in capsys.readouterr().out
    assert load_config(tmp_path / "val" / "config.yaml").MODEL.DAP.FUSION_WEIGHT == 1.0  # Gaussians kept
    monkeypatch.setattr(sys, "argv", [*argv, "--opts", "DATA.VALIDATION", "0.0"])
    with pytest.raises(CasdapError, match="set DATA.VALIDATION above 0: the fusion weight is chosen on the "
                                          "validation split, never on the test set"):
        script.main()


def test_fusion_resumes_to_the_same_matrix_and_checkpoint(tmp_path, cifar, monkeypatch):
    extra = ("MODEL.DAP.FUSION_WEIGHT", "0.5", "DATA.EVAL_BATCH_SIZE", "1")
    full = run_continual(tiny_cifar_cfg(cifar, tmp_path / "full", "dap", *extra), progress=False).metrics
    _, state = resume_after_interrupt(monkeypatch, cifar, tmp_path, full, *extra)
    assert (state["fusion_gaussians.class_task"] >= 0).all() and state["fusion_gaussians.logdets"].abs().sum() > 0


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dap", "l2p", "dualprompt", "coda_prompt"])
@pytest.mark.parametrize("value", ["-0.5", "-1e-9"])
def test_a_negative_fusion_weight_is_one_clear_error(method, value):
    with pytest.raises(CasdapError, match=re.escape("MODEL.DAP.FUSION_WEIGHT must be 0 (unfused) or a positive")):
        check_config(load_config(DIGITS_YAML, ["MODEL.TRANSFER_TYPE", method, "MODEL.DAP.FUSION_WEIGHT", value]))
    with pytest.raises(CasdapError, match="the fusion weight must be 0 or more"):
        Fused(AllClasses(), float(value))


def test_fusion_with_no_class_statistics_is_one_clear_error(tmp_path, cifar):
    # a method that fits no class statistics of a query does not read the key
    with pytest.raises(CasdapError, match=re.escape("MODEL.DAP.FUSION_WEIGHT is not read by method slda")):
        load_config(DIGITS_YAML, ["MODEL.TRANSFER_TYPE", "slda", "MODEL.DAP.FUSION_WEIGHT", "0.5"],
                    reads=method_keys)
    # a model built without the query's class Gaussians
    from casdap.continual.dap_strategy import DAPStrategy
    from casdap.models.build import build_dap_model

    model = build_dap_model(tiny_cifar_cfg(cifar, tmp_path))
    with pytest.raises(CasdapError, match=re.escape("fused prediction needs class statistics of the query, and "
                                                    "this model keeps none")):
        DAPStrategy(model=model, optimizer=torch.optim.SGD(model.trainable_parameters(), lr=0.1), fusion_weight=0.5)
    with pytest.raises(CasdapError, match="keeps no class Gaussians of the query"):
        model.query_class_scores(torch.zeros(1, model.num_features))

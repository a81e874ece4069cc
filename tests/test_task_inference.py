"""Task inference from class statistics (MODEL.DAP.TASK_INFERENCE gaussian | head) and task-adaptive
prediction (MODEL.DAP.PREDICTION restrict | all | soft): statistics, ranks, resume, per-image results."""

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from cl_support import DIGITS_YAML, resume_after_interrupt, tiny_cifar_cfg, write_tiny_cifar

import casdap
from casdap.config import load_config
from casdap.continual.methods import check_config
from casdap.errors import CasdapError
from casdap.models.class_statistics import (
    MASKED_SCORE,
    ClassStatistics,
    add_moments,
    lda_classifier,
    shrunk_covariance,
    statistics_from_moments,
    sum_over_ranks,
)
from casdap.models.dap import CASDAP
from casdap.models.task_inference import GaussianTaskPredictor, HeadTaskPredictor, LDATaskPredictor


@pytest.fixture
def cifar(tmp_path):
    return write_tiny_cifar(tmp_path / "cifar")


def _moments(k: int, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.zeros(k, dtype=torch.float64), torch.zeros(k, c, dtype=torch.float64),
            torch.zeros(k, c, c, dtype=torch.float64))


def _data(k: int = 6, c: int = 5, per: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat_interleave(per)
    feats = 3 * torch.randn(k, c, generator=g)[labels] + torch.randn(len(labels), c, generator=g)
    perm = torch.randperm(len(labels), generator=g)
    return feats[perm], labels[perm]


def test_class_statistics_added_task_by_task_equal_one_pass():
    feats, labels = _data()
    task_of = {c: c // 2 for c in range(6)}
    by_task = _moments(6, 5)
    for t in range(3):  # task by task, in batches of 7
        own = torch.nonzero(labels // 2 == t).flatten()
        for i in range(0, len(own), 7):
            add_moments(*by_task, feats[own[i:i + 7]], labels[own[i:i + 7]])
    once = _moments(6, 5)
    add_moments(*once, feats, labels)
    for a, b in zip(by_task, once):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-9)
    class_task = torch.tensor([task_of[c] for c in range(6)])
    stats = statistics_from_moments(*by_task, class_task)
    ref = ClassStatistics.from_queries(feats, labels, task_of, covariance=True)
    assert torch.equal(stats.classes, ref.classes) and torch.equal(stats.tasks, ref.tasks)
    assert torch.allclose(stats.mean, ref.mean, atol=1e-5)
    assert torch.allclose(stats.covariance, ref.covariance, atol=1e-4)


def test_statistics_summed_over_ranks_equal_one_process():
    """The rank reduce with a stand-in all_reduce (two ranks, each holding every other image)."""
    feats, labels = _data()
    ranks = [_moments(6, 5), _moments(6, 5)]
    for r in range(2):
        add_moments(*ranks[r], feats[r::2], labels[r::2])
    peer = [t.clone() for t in ranks[1]]
    it = iter(peer)
    sum_over_ranks(list(ranks[0]), all_reduce=lambda t: t.add_(next(it)))
    once = _moments(6, 5)
    add_moments(*once, feats, labels)
    for a, b in zip(ranks[0], once):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("cls", [GaussianTaskPredictor, HeadTaskPredictor, LDATaskPredictor])
def test_statistics_predictors_find_the_task_and_never_an_untrained_one(cls):
    feats, labels = _data(per=60)
    pred = cls(num_tasks=4, dim=5, num_classes=6, shrinkage=0.1)
    assert torch.equal(pred(feats), torch.full((len(feats), 4), MASKED_SCORE))
    pred.fit(ClassStatistics.from_queries(feats, labels, {c: c // 2 for c in range(6)}, covariance=True))
    scores = pred(feats)
    assert (scores[:, 3] == MASKED_SCORE).all()  # task 3 has no class
    assert (scores.argmax(1) == labels // 2).float().mean() > 0.9
    with pytest.raises(CasdapError, match="shrinkage must be above 0"):
        cls(num_tasks=4, dim=5, num_classes=6, shrinkage=0.0)


def test_lda_scores_are_shared_covariance_gaussian_log_likelihoods_up_to_a_constant():
    feats, labels = _data(per=40)
    stats = ClassStatistics.from_queries(feats, labels, {c: c // 2 for c in range(6)}, covariance=True)
    weight, bias = lda_classifier(stats, num_classes=8, shrinkage=0.2)
    assert (bias[6:] == MASKED_SCORE).all() and (weight[6:] == 0).all()  # classes with no statistics
    pooled = (stats.covariance.double() * stats.count.double()[:, None, None]).sum(0) / stats.count.sum()
    gauss = torch.distributions.MultivariateNormal(stats.mean.double(), shrunk_covariance(pooled[None], 0.2)[0])
    loglik = gauss.log_prob(feats.double()[:, None, :])  # [N, 6]
    scores = (feats.double() @ weight[:6].double().t() + bias[:6].double())
    diff = scores - loglik
    assert torch.allclose(diff, diff[:, :1].expand_as(diff), atol=1e-3)  # the same constant for every class


@pytest.mark.parametrize("head", ["pseudo", "lda"])
def test_all_class_head_is_refitted_from_the_prompted_statistics(head):
    from casdap.models.casvit import rcvit_xs
    from casdap.models.class_statistics import fit_linear_on_gaussians
    from casdap.models.dap import CASDAP

    torch.manual_seed(0)
    model = CASDAP(rcvit_xs(num_classes=0), num_classes=4, num_tasks=2, prompted_statistics=True, shrinkage=0.5,
                   all_class_head=head).eval()
    x, y = torch.randn(12, 3, 32, 32), torch.tensor([0, 1] * 6)
    feats = model.statistics_features(x, 0)
    moments = {n: _moments(4, model.num_features) for n in feats}
    for n, f in feats.items():
        add_moments(*moments[n], f, y)
    model.add_statistics(moments, [0, 1], 0)
    stats = statistics_from_moments(*moments["prompted"], model.class_task)  # the one task's are every class's
    fit = lda_classifier if head == "lda" else fit_linear_on_gaussians
    weight, bias = fit(stats, 4, 0.5)
    assert torch.allclose(model.all_weight, weight) and torch.allclose(model.all_bias, bias)
    assert (model.all_class_logits(model.forward_prompted(x, 0))[:, 2:] == MASKED_SCORE).all()


@pytest.mark.parametrize("overrides, message", [
    (["MODEL.DAP.TASK_INFERENCE", "knn"], "unknown MODEL.DAP.TASK_INFERENCE 'knn'"),
    (["MODEL.DAP.PREDICTION", "vote"], "MODEL.DAP.PREDICTION must be one of restrict, all, soft, got 'vote'"),
    (["MODEL.DAP.PREDICTION", "soft", "MODEL.DAP.TOP_K", "0", "MODEL.DAP.RESTRICT_TO_TASK", "False"],
     "MODEL.DAP.TOP_K must be 1..5"),
    (["MODEL.DAP.PREDICTION", "soft", "MODEL.DAP.TOP_K", "6", "MODEL.DAP.RESTRICT_TO_TASK", "False"],
     "MODEL.DAP.TOP_K must be 1..5"),
    (["MODEL.DAP.SHRINKAGE", "0.0"], "MODEL.DAP.SHRINKAGE must be above 0"),
    (["MODEL.DAP.ALL_CLASS_HEAD", "svm"], "unknown MODEL.DAP.ALL_CLASS_HEAD 'svm' (use one of pseudo, lda)"),
    (["MODEL.DAP.SHRINKAGE", "-1.0"], "MODEL.DAP.SHRINKAGE must be above 0"),
    (["MODEL.DAP.PREDICTION", "all"], "MODEL.DAP.RESTRICT_TO_TASK True contradicts MODEL.DAP.PREDICTION 'all'"),
    (["MODEL.DAP.TASK_INFERENCE", "gaussian"], "MODEL.DAP.KEYS_PER_TASK (16) applies to TASK_INFERENCE keys only"),
])
def test_bad_task_inference_settings_are_one_clear_error(overrides, message):
    with pytest.raises(CasdapError, match=re.escape(message)):
        check_config(load_config(DIGITS_YAML, overrides))


def test_prediction_restrict_is_restrict_to_task():
    cfg = load_config(DIGITS_YAML, ["MODEL.DAP.PREDICTION", "Restrict"])
    assert cfg.MODEL.DAP.PREDICTION == "restrict" and cfg.MODEL.DAP.RESTRICT_TO_TASK is True


SETTINGS = {  # every new task inference and prediction at least once
    "gaussian+all": ("MODEL.DAP.TASK_INFERENCE", "gaussian", "MODEL.DAP.PREDICTION", "all"),
    "head+restrict": ("MODEL.DAP.TASK_INFERENCE", "head", "MODEL.DAP.PREDICTION", "restrict"),
    "gaussian+soft": ("MODEL.DAP.TASK_INFERENCE", "gaussian", "MODEL.DAP.PREDICTION", "soft",
                      "MODEL.DAP.TOP_K", "2"),
    "adapted query+lda+all lda": ("MODEL.DAP.TASK_INFERENCE", "lda", "MODEL.DAP.QUERY", "adapted",
                                  "MODEL.DAP.PROMPT_BACKBONE", "adapted", "MODEL.DAP.PREDICTION", "all",
                                  "MODEL.DAP.ALL_CLASS_HEAD", "lda"),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_new_settings_resume_to_the_same_matrix_and_predict_each_image_alone(tmp_path, cifar, monkeypatch, name):
    from casdap.continual.runner import run_continual

    extra = ("DATA.BATCH_SIZE", "4", "MODEL.DAP.SHRINKAGE", "0.5", *SETTINGS[name])
    res = run_continual(tiny_cifar_cfg(cifar, tmp_path / "full", "dap", *extra), progress=False)
    full = res.metrics
    killed, a = resume_after_interrupt(monkeypatch, cifar, tmp_path, full, *extra)
    assert "dap_task_predictor.class_task" in a and (a["dap_task_predictor.class_task"] >= 0).all()

    # per image: an image's logits and task alone are what it gets in a batch of both tasks' images
    strategy = res.strategy
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, 32, 32, generator=g), torch.tensor([0, 3, 1, 2, 3, 0])
    logits, keys = strategy.predict(x, y)
    for i in range(len(x)):
        one, key = strategy.predict(x[i:i + 1], y[i:i + 1])
        assert int(key[0]) == int(keys[i]) and int(one.argmax(1)[0]) == int(logits[i].argmax())
        assert torch.allclose(one[0], logits[i], atol=1e-4)


@pytest.mark.slow  # one single-process run; the two-process run is the torchrun_cl_runs launch's
def test_torchrun_statistics_equal_one_process(tmp_path, torchrun_cl_runs):
    """Under torchrun each rank adds the query statistics of its share of the task's images; summed
    over ranks they equal a single process's (the query is the frozen backbone's, so training does
    not enter)."""
    from casdap.continual.runner import run_continual

    run = torchrun_cl_runs["gaussian"]  # tiny CIFAR, 8 training images a class, launched on 2 ranks
    data, out = Path(run.cfg.DATA.DATAPATH), run.out
    extra = ("DATA.BATCH_SIZE", "4", *SETTINGS["gaussian+all"])
    assert run.cfg.dump() == tiny_cifar_cfg(data, out, "dap", *extra).dump()  # the run this test describes
    sums = json.loads((out / "rank_checksums.json").read_text())
    assert len(sums) == 2 and sums[0] == sums[1]
    run_continual(tiny_cifar_cfg(data, tmp_path / "one", "dap", *extra), progress=False)
    a = torch.load(out / "checkpoints" / "task_001.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "one" / "checkpoints" / "task_001.pth", weights_only=True)["model"]
    assert float(a["query_count"].sum()) == 4 * 8  # every training image once, over both ranks
    assert "query_outer" not in a  # a class's Gaussian is fixed when its task ends: no outer products kept
    for k in ("query_count", "query_sum", "class_task", "dap_task_predictor.means"):
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-9, atol=1e-6), k


@pytest.mark.parametrize("predictor", ["gaussian", "lda", "head", "keys"])
def test_a_training_pass_computes_the_query_only_for_a_pull_term_and_is_unchanged_by_skipping_it(predictor):
    """Under the given task only a pull term (keys) reads the query in training: the other predictors
    skip the query pass, and the step (logits, pull, loss, gradients, random state) is bit-identical
    to one that computes it. Evaluation keeps the query (fused prediction reads it)."""
    torch.manual_seed(0)
    backbone = casdap.create_model("rcvit_xs", num_classes=0, distillation=False)
    model = CASDAP(backbone, num_classes=10, num_tasks=2, num_tokens=4, task_emb_dim=8, task_predictor=predictor)
    scored = copy.deepcopy(model)
    scored.reads_query = lambda task_id: True  # the pass as it was before it could be skipped
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([5, 6, 7, 8])
    steps = []
    for m in (model, scored):
        m.train()
        torch.manual_seed(2)
        out = m(x, task_id=1)
        loss = torch.nn.functional.cross_entropy(out.logits, y) - 0.1 * out.pull
        loss.backward()
        grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        steps.append((out, loss, torch.get_rng_state(), grads))
    (out, loss, rng, grads), (ref, ref_loss, ref_rng, ref_grads) = steps
    assert (out.query is None) == (predictor != "keys") and ref.query is not None
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.key_idx, ref.key_idx)
    assert torch.equal(out.pull, ref.pull) and out.pull.dtype == ref.pull.dtype and torch.equal(loss, ref_loss)
    assert torch.equal(rng, ref_rng)
    assert grads.keys() == ref_grads.keys() and all(torch.equal(grads[n], ref_grads[n]) for n in grads)
    assert ("dap_task_predictor.keys" in grads) == (predictor == "keys")
    with torch.no_grad():
        assert model.eval()(x, task_id=1).query is not None

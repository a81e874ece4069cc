"""What a model keeps of its class statistics between tasks: only what its task predictor and
all-class head read again (casdap.models.kept_statistics), with the same fits as keeping every
class's outer products, and checkpoints of that older layout still load."""

import pytest
import torch

from casdap.checkpoint import load_checkpoint
from casdap.errors import CasdapError
from casdap.models.casvit import rcvit_xs
from casdap.models.class_statistics import (
    add_moments,
    lda_classifier,
    statistics_from_moments,
    within_class_scatter,
)
from casdap.models.dap import CASDAP
from casdap.models.task_inference import GaussianTaskPredictor

K, TASKS = 6, 3  # classes c of task c // 2


def _model(inference: str, head: str | None = "lda") -> CASDAP:
    torch.manual_seed(0)
    return CASDAP(rcvit_xs(num_classes=0), num_classes=K, num_tasks=TASKS, stages=[3], task_predictor=inference,
                  shrinkage=0.5, prompted_statistics=head is not None, all_class_head=head or "pseudo").eval()


def _task_moments(model: CASDAP, task: int, seed: int = 0) -> dict:
    """The moments a statistics pass adds for ``task``: drawn features of its two classes."""
    g = torch.Generator().manual_seed(seed * 100 + task)
    y = torch.tensor([2 * task, 2 * task + 1] * 9)
    moments = model.new_moments()
    for name in moments:
        feats = 3 * torch.randn(K, model.num_features, generator=g)[y] + torch.randn(len(y), model.num_features,
                                                                                      generator=g)
        add_moments(*moments[name], feats, y)
    return moments


def _trained(model: CASDAP, tasks: int = TASKS) -> list[dict]:
    added = []
    for t in range(tasks):
        added.append(_task_moments(model, t))
        model.add_statistics(added[-1], [2 * t, 2 * t + 1], t)
    return added


def _all(added: list[dict], name: str) -> tuple:
    return tuple(sum(m[name][i] for m in added) for i in range(3))


@pytest.mark.parametrize("inference, head, outer, scatter", [
    ("lda", "lda", [], ["query_scatter", "prompted_scatter"]),  # linear discriminants: one scatter each
    ("gaussian", "lda", [], ["prompted_scatter"]),  # the shipped embedded_shift: Gaussians fixed per task
    ("head", "pseudo", ["query_outer", "prompted_outer"], []),  # drawn from every class's Gaussian at each refit
    ("keys", None, [], []),
])
def test_a_model_keeps_per_class_outer_products_only_where_a_refit_reads_them(inference, head, outer, scatter):
    state = _model(inference, head).state_dict()
    assert sorted(k for k in state if k.endswith("_outer")) == sorted(outer)
    assert sorted(k for k in state if k.endswith("_scatter")) == sorted(scatter)
    c = rcvit_xs(num_classes=0).num_features
    assert all(state[k].shape == (K, c, c) for k in outer) and all(state[k].shape == (c, c) for k in scatter)


def test_the_pooled_scatter_fits_the_discriminant_every_class_s_outer_products_fit():
    """Task by task, the kept scatter is the sum of each task's classes' terms: the same terms as the
    per-class pooling, summed in task order (float64: last bits only)."""
    model = _model("lda", "lda")
    added = _trained(model)
    for name, fitted in (("prompted", (model.all_weight, model.all_bias)),
                         ("query", (model.dap_task_predictor.weight, model.dap_task_predictor.bias))):
        per_class = statistics_from_moments(*_all(added, name), model.class_task)
        weight, bias = lda_classifier(per_class, K, 0.5)
        assert torch.allclose(fitted[0], weight, rtol=1e-5, atol=1e-5)
        assert torch.allclose(fitted[1], bias, rtol=1e-5, atol=1e-4)
        kept = getattr(model, f"{name}_scatter")
        assert torch.allclose(kept, within_class_scatter(*_all(added, name)), rtol=1e-12, atol=1e-9)
    one = _model("lda", "lda")  # one task: the same sum, to the bit
    first = _trained(one, 1)
    assert torch.equal(one.prompted_scatter, within_class_scatter(*_all(first, "prompted")))


def test_class_gaussians_fixed_task_by_task_equal_those_fitted_on_every_class_at_once():
    model = _model("gaussian", None)
    added = _trained(model)
    once = GaussianTaskPredictor(TASKS, model.num_features, K, shrinkage=0.5)
    once.fit(statistics_from_moments(*_all(added, "query"), model.class_task))
    for k in ("means", "precisions", "logdets", "class_task"):
        assert torch.equal(getattr(model.dap_task_predictor, k), getattr(once, k)), k


def test_a_class_in_two_tasks_is_refused_where_no_outer_products_are_kept():
    model = _model("gaussian", "lda")
    model.add_statistics(_task_moments(model, 0), [0, 1], 0)
    with pytest.raises(CasdapError, match=r"classes \[0, 1\] already have .* a class must belong to one task"):
        model.add_statistics(_task_moments(model, 0, seed=1), [0, 1], 1)


def test_a_checkpoint_with_every_class_s_outer_products_still_loads(tmp_path):
    """A state dict saved when both statistics kept [K, C, C] outer products: the query's are dropped
    (the Gaussians hold what was estimated from them), the prompted ones pooled into the scatter the
    discriminant was fitted on; the next task's refit goes on from there."""
    model = _model("gaussian", "lda")
    added = _trained(model, 2)
    old = model.state_dict()
    for name in ("query", "prompted"):
        old[f"{name}_outer"] = _all(added, name)[2]
    old.pop("prompted_scatter")
    fresh = _model("gaussian", "lda")
    fresh.load_state_dict(old)
    per_class = statistics_from_moments(*_all(added, "prompted"), model.class_task)
    n = per_class.count.double()
    pooled = (per_class.covariance.double() * n[:, None, None]).sum(0)  # what the head was fitted on
    assert torch.equal(fresh.prompted_scatter, pooled)
    fresh.add_statistics(_task_moments(fresh, 2), [4, 5], 2)
    assert (fresh.all_bias > -1e4).all() and fresh.dap_task_predictor.class_task.tolist() == [0, 0, 1, 1, 2, 2]
    # casdap export's loader (strict: it checks the keys before loading)
    path = tmp_path / "task_001.pth"
    torch.save({"model": old}, path)
    exported = _model("gaussian", "lda")
    report = load_checkpoint(exported, path)
    assert not report.missing and not report.unexpected
    assert torch.equal(exported.prompted_scatter, pooled)


@pytest.mark.parametrize("overrides, kept", [
    ([], {"prompted_scatter": (220, 220), "dap_task_predictor.precisions": (100, 220, 220)}),  # as shipped
    (["MODEL.DAP.TASK_INFERENCE", "lda"], {"query_scatter": (220, 220), "prompted_scatter": (220, 220)}),
])
def test_the_embedded_shift_config_keeps_no_per_class_outer_products(tmp_path, overrides, kept):
    """configs/dap/embedded_shift.yaml (gaussian task inference, the lda head over every class), and
    with lda task inference: only its square tensors are the ones its predictor and head read."""
    from conftest import ROOT

    from casdap.config import load_config
    from casdap.models.build import build_dap_model

    cfg = load_config(ROOT / "configs" / "dap" / "embedded_shift.yaml", [
        "MODEL.RANDOM_INIT", "True", "MODEL.MODEL_ROOT", str(tmp_path / "none"), *overrides])
    state = build_dap_model(cfg).state_dict()
    statistics = {k: tuple(v.shape) for k, v in state.items() if v.dim() >= 2 and v.shape[-1] == v.shape[-2] == 220
                  and not k.startswith(("backbone.", "query_backbone.", "dap_blocks."))}
    assert statistics == kept

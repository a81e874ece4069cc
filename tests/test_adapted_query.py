"""An adapted query (MODEL.DAP.QUERY adapted): a backbone trained with a linear head on the first task,
then frozen for good (APER's first session); the prompted pass on the pretrained backbone or on it."""

import re

import pytest
import torch
from cl_support import DIGITS_YAML, KEEP, tiny_cifar_cfg, write_tiny_cifar

from casdap.config import load_config
from casdap.continual.methods import check_config
from casdap.errors import CasdapError
from casdap.models.casvit import rcvit_xs
from casdap.models.dap import CASDAP


@pytest.fixture
def cifar(tmp_path):
    return write_tiny_cifar(tmp_path / "cifar")


def _part(state: dict, prefix: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("prompt_backbone", ["pretrained", "adapted"])
def test_the_query_is_adapted_on_the_first_task_then_stays_bit_identical_under_weight_decay(
        tmp_path, cifar, prompt_backbone):
    from casdap.continual.runner import run_continual

    out = tmp_path / prompt_backbone
    run_continual(tiny_cifar_cfg(
        cifar, out, "dap", "MODEL.DAP.QUERY", "adapted", "MODEL.DAP.PROMPT_BACKBONE", prompt_backbone,
        "MODEL.DAP.TASK_INFERENCE", "lda", "MODEL.DAP.KEYS_PER_TASK", "1", "MODEL.DAP.SHRINKAGE", "0.5",
        "SOLVER.OPTIMIZER", "adamw", "SOLVER.WEIGHT_DECAY", "0.05", *KEEP), progress=False)
    after = [torch.load(out / "checkpoints" / f"task_{t:03d}.pth", weights_only=False)["model"] for t in (0, 1)]
    adapted = "backbone." if prompt_backbone == "adapted" else "query_backbone."
    assert bool(after[0]["adapted"]) and bool(after[1]["adapted"])
    # frozen after the first task: weights and BatchNorm statistics, and the adaptation head
    assert _equal(_part(after[0], adapted), _part(after[1], adapted))
    assert _equal(_part(after[0], "adapt_head."), _part(after[1], "adapt_head."))
    fresh = CASDAP(rcvit_xs(num_classes=0), num_classes=4, num_tasks=2, query="adapted").state_dict()
    if prompt_backbone == "pretrained":  # the prompted pass's backbone is the pretrained one, untouched
        assert not _equal(_part(after[0], "query_backbone."),
                          {k.replace("backbone.", "query_backbone.", 1): t
                           for k, t in _part(after[0], "backbone.").items()})
    else:
        assert not any(k.startswith("query_backbone.") for k in after[0])
    assert _part(fresh, "adapt_head.").keys() == _part(after[0], "adapt_head.").keys()
    # DAP's own parts still train on the second task
    assert not torch.equal(after[0]["dap_task_emb.weight"][1], after[1]["dap_task_emb.weight"][1])


def test_only_the_query_backbone_and_its_head_train_while_adapting():
    torch.manual_seed(0)
    model = CASDAP(rcvit_xs(num_classes=0), num_classes=4, num_tasks=2, query="adapted")
    assert model.needs_adaptation and not model.query_backbone.training
    dap_params = {id(p) for p in model.trainable_parameters()}
    model.train()
    model.start_adaptation()
    assert model.query_backbone.training and not model.backbone.training
    model.adaptation_logits(torch.randn(2, 3, 32, 32)).sum().backward()
    with_grad = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"query_backbone", "adapt_head"}
    assert not dap_params & {id(p) for p in model.query_backbone.parameters()}
    model.finish_adaptation()
    assert not model.needs_adaptation and not model.query_backbone.training
    assert not any(p.requires_grad for p in model.query_backbone.parameters())
    with pytest.raises(CasdapError, match="not to be adapted"):
        model.start_adaptation()


def test_an_adaptation_cut_short_leaves_the_query_frozen_and_not_adapted(tmp_path, cifar, monkeypatch):
    """An error (or Ctrl-C) in the first-task adaptation: the model stops adapting, its query trains no
    more, and it is not marked adapted, so the next training of the first task adapts it anew."""
    from avalanche.training.templates import SupervisedTemplate

    from casdap.continual.runner import run_continual

    def boom(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SupervisedTemplate, "_train_exp", boom)
    cfg = tiny_cifar_cfg(cifar, tmp_path / "cut", "dap", "MODEL.DAP.QUERY", "adapted", "MODEL.DAP.KEYS_PER_TASK", "1")
    captured = {}
    real_cancel = CASDAP.cancel_adaptation

    def cancel(model):
        real_cancel(model)
        captured["model"] = model

    monkeypatch.setattr(CASDAP, "cancel_adaptation", cancel)
    with pytest.raises(KeyboardInterrupt):
        run_continual(cfg, progress=False)
    model = captured["model"]
    assert not model._adapting and not bool(model.adapted) and model.needs_adaptation
    assert not any(p.requires_grad for p in (*model.query_net.parameters(), *model.adapt_head.parameters()))
    training = [n for n, p in model.named_parameters() if p.requires_grad]  # DAP's own parts, as before
    assert training and not any(n.startswith(("backbone.", "query_backbone.", "adapt_head.")) for n in training)


@pytest.mark.parametrize("method, extra", [("aper", []), ("ncm", ["BASELINES.FIRST_SESSION", "True"])])
def test_a_first_session_cut_short_leaves_the_backbone_frozen_and_not_adapted(tmp_path, cifar, monkeypatch,
                                                                             method, extra):
    """aper and BASELINES.FIRST_SESSION share DAP's first-session component: an error (or Ctrl-C) while
    adapting freezes the backbone and its head again and leaves the model not adapted."""
    from avalanche.training.templates import SupervisedTemplate

    from casdap.continual.runner import run_continual
    from casdap.models.first_session import FirstSessionModel

    def boom(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SupervisedTemplate, "_train_exp", boom)
    captured = {}
    real_cancel = FirstSessionModel.cancel_adaptation

    def cancel(model):
        real_cancel(model)
        captured["model"] = model

    monkeypatch.setattr(FirstSessionModel, "cancel_adaptation", cancel)
    with pytest.raises(KeyboardInterrupt):
        run_continual(tiny_cifar_cfg(cifar, tmp_path / method, method, *extra), progress=False)
    model = captured["model"]
    assert not model._adapting and not bool(model.adapted) and model.needs_adaptation
    assert not any(p.requires_grad for p in (*model.backbone.parameters(), *model.head.parameters()))


def test_dap_reference_model_is_built_as_before():
    torch.manual_seed(0)
    plain = CASDAP(rcvit_xs(num_classes=0), num_classes=4, num_tasks=2).state_dict()
    assert not any(k.startswith(("query_backbone.", "adapt_head.", "adapted")) for k in plain)


@pytest.mark.parametrize("overrides, message", [
    (["MODEL.DAP.QUERY", "tuned"], "unknown MODEL.DAP.QUERY 'tuned' (use one of frozen, adapted)"),
    (["MODEL.DAP.PROMPT_BACKBONE", "other"], "unknown MODEL.DAP.PROMPT_BACKBONE 'other'"),
    (["MODEL.DAP.PROMPT_BACKBONE", "adapted"], "set MODEL.DAP.QUERY adapted too"),
])
def test_bad_query_settings_are_one_clear_error(overrides, message):
    with pytest.raises(CasdapError, match=re.escape(message)):
        check_config(load_config(DIGITS_YAML, overrides))

"""Frozen backbones run BatchNorm-folded (``MODEL.FOLD_FROZEN_BN``, :mod:`casdap.models.frozen_fold`).

What is held here: the folded path gives the unfolded logits within 1e-5 (folding changes float
rounding, so it is opt-in and the pinned references are made without it), the same selected tasks,
and per-image results (evaluation batches of 1 and 100 give identical matrices with it on); the
frozen parts stay bit-identical while the prompts train; state dicts and checkpoints keep the
unfolded layout exactly (fold, train, save, load into an unfolded model: same state, same logits).
"""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from cl_support import tiny_cifar_cfg, write_tiny_cifar
from trained_like import trained_like

from casdap.models.dap import CASDAP
from casdap.models.frozen_fold import fold_frozen_parts, folded_views, unfold_frozen_parts

TOLERANCE = 1e-5  # folded against unfolded logits



def _dap(**options) -> CASDAP:
    """A CAS-DAP with prompts that matter: every gate and prompt parameter drawn away from zero."""
    settings = dict(num_tasks=2, stages=(2, 3), injection="attn", channel_mix=True, task_generators=True)
    model = CASDAP(trained_like(num_classes=0), 20, **{**settings, **options})
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    for t in range(2):
        model.mark_trained(t)
    return model.eval()


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    err = (a - b).abs().max().item()
    assert err <= TOLERANCE, f"max abs difference {err:.2e} > {TOLERANCE}"
    assert b.abs().max().item() > 0.1, "outputs too small for the comparison to mean anything"


def _train_step(model: CASDAP, x: torch.Tensor, y: torch.Tensor) -> None:
    model.train()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    out = model(x, task_id=1)
    (F.cross_entropy(out.logits, y) - 0.1 * out.pull).backward()
    opt.step()
    model.eval()


X = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
Y = torch.tensor([10, 11, 12, 13, 14, 15])


@pytest.mark.parametrize("channels_last", [True, False])
def test_folded_logits_agree_with_the_unfolded_path_within_1e5(channels_last):
    plain = _dap()
    folded = copy.deepcopy(plain)
    fold_frozen_parts(folded, channels_last=channels_last)
    with torch.no_grad():
        a, b = plain(X), folded(X)
        _assert_close(b.logits, a.logits)
        _assert_close(b.query, a.query)
        assert torch.equal(a.key_idx, b.key_idx)
        _assert_close(folded.forward_prompted(X, 1), plain.forward_prompted(X, 1))
    # the folded twins ran (one for the stem and query, one for the prompted pass), and only they
    assert folded_views(folded)[0].builds == 2 and not folded_views(plain)
    unfold_frozen_parts(folded)
    with torch.no_grad():
        assert torch.equal(folded(X).logits, a.logits)  # back to the backbone's own modules


def test_training_through_the_folded_backbone_gives_the_same_gradients_within_1e5():
    plain = _dap()
    folded = copy.deepcopy(plain)
    fold_frozen_parts(folded)
    for model in (plain, folded):
        model.train()
        out = model(X, task_id=1)
        F.cross_entropy(out.logits, Y).backward()
    for (name, p), q in zip(plain.named_parameters(), folded.parameters()):
        if p.grad is not None:
            assert (p.grad - q.grad).abs().max().item() <= TOLERANCE, name


def test_frozen_parts_stay_bit_identical_and_the_state_dict_round_trips_exactly():
    model = _dap()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.")}
    keys = list(model.state_dict())
    fold_frozen_parts(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_step(model, X, Y)
    state = model.state_dict()
    assert list(state) == keys  # the unfolded layout: no folded weight is ever written
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert any(not torch.equal(state[k], before[k]) for k in keys if k.startswith("dap_blocks."))  # a step was taken
    unfolded = _dap()
    unfolded.load_state_dict(state)
    assert all(torch.equal(unfolded.state_dict()[k], v) for k, v in state.items())


def test_a_checkpoint_of_a_folded_run_loads_into_an_unfolded_model_with_the_same_logits():
    model = _dap()
    fold_frozen_parts(model)
    _train_step(model, X, Y)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    loaded = _dap()
    loaded.load_state_dict(torch.load(buffer))
    with torch.no_grad():
        folded_out = model(X).logits
        unfold_frozen_parts(model)
        assert torch.equal(loaded(X).logits, model(X).logits)  # the same model, unfolded
        _assert_close(folded_out, loaded(X).logits)


def test_the_twin_follows_the_backbone_it_folds():
    """A loaded checkpoint, an adaptation that trains the backbone (bypassed while it trains), a copy of the
    model: the folded twin is rebuilt from the backbone's current tensors, never stale, never shared."""
    model = _dap()
    fold_frozen_parts(model)
    other = _dap()
    with torch.no_grad():
        for p in other.backbone.parameters():
            p.mul_(1.1)
        model(X)
        model.load_state_dict(other.state_dict())
        _assert_close(model(X).logits, other(X).logits)
    backbone = model.backbone
    backbone.requires_grad_(True)  # as during a first-session adaptation: its own modules run
    assert backbone._twin() is None
    backbone.requires_grad_(False)
    backbone.stages[-1].requires_grad_(True)  # one stage trained: still its own modules
    assert backbone._twin() is None
    backbone.requires_grad_(False)
    model.double()  # a move to another dtype: the twin follows
    assert backbone._twin().patch_embed[1].weight.dtype == torch.float64
    with torch.no_grad():
        _assert_close(model(X.double()).logits.float(), other.double()(X.double()).logits.float())
    model.float()
    backbone.train()
    assert backbone._twin() is None
    backbone.eval()
    copied = copy.deepcopy(model)
    assert copied.backbone._twin() is not model.backbone._twin()
    assert not any(isinstance(m, nn.BatchNorm2d) and m in set(model.modules())
                   for m in copied.backbone._twin().modules())


def test_folding_reaches_the_adapted_query_and_the_prompt_pools_and_the_baselines():
    from casdap.models.classifiers import BackboneClassifier
    from casdap.models.prompt_pools import PromptPoolModel

    dap = _dap(query="adapted", prompt_backbone="pretrained")
    pool = PromptPoolModel(trained_like(num_classes=0), 20, num_tasks=2, source="l2p").eval()
    linear = BackboneClassifier(trained_like(num_classes=0), 20, freeze_backbone=True).eval()
    for model, n in ((dap, 2), (pool, 1), (linear, 1)):
        plain = copy.deepcopy(model)
        fold_frozen_parts(model)
        with torch.no_grad():
            a, b = plain(X), model(X)
        a, b = (a if torch.is_tensor(a) else a.logits), (b if torch.is_tensor(b) else b.logits)
        _assert_close(b, a)
        assert len(folded_views(model)) == n and all(v.builds for v in folded_views(model))


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"))


def test_a_folded_run_is_per_image_and_checkpoints_the_unfolded_layout(tmp_path, cifar):
    """A run with MODEL.FOLD_FROZEN_BN (an adapted query: the first session trains the backbone unfolded,
    then it runs folded): evaluation batches of 1 and 100 give identical matrices, and its checkpoint
    holds the unfolded layout."""
    from casdap.continual.methods import get_method
    from casdap.continual.runner import run_continual

    on = ("MODEL.FOLD_FROZEN_BN", "True", "MODEL.DAP.QUERY", "adapted", "MODEL.DAP.PROMPT_BACKBONE", "adapted",
          "MODEL.DAP.TASK_INFERENCE", "gaussian", "MODEL.DAP.KEYS_PER_TASK", "1", "MODEL.DAP.PREDICTION", "all",
          "MODEL.DAP.SHRINKAGE", "0.1")
    metrics, models = [], []
    for batch in (1, 100):
        out = tmp_path / f"eval{batch}"
        cfg = tiny_cifar_cfg(cifar, out, "dap", *on, "DATA.EVAL_BATCH_SIZE", str(batch))
        result = run_continual(cfg, progress=False)
        metrics.append(json.loads((out / "metrics.json").read_text()))
        models.append(result.strategy.model)
        assert folded_views(result.strategy.model)[0].builds >= 2  # the folded twins ran
    for key in ("acc_matrix", "wtp_matrix", "tii_matrix", "task_selection_acc"):
        assert metrics[0][key] == metrics[1][key], key
    ckpt = torch.load(next((tmp_path / "eval1" / "checkpoints").glob("*.pth")), weights_only=False)
    unfolded = get_method("dap").build_model(cfg, 4)
    unfolded.load_state_dict(ckpt["model"])  # strict: the unfolded layout
    assert list(ckpt["model"]) == list(models[0].state_dict())
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in models[0].state_dict().items())

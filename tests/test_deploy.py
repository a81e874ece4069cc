import pytest
import torch
import torch.nn as nn
from trained_like import trained_like

import casdap
from casdap.deploy import (
    FusedAdditiveBlock,
    FusedConv,
    count_batchnorm,
    fold_batchnorm,
    fold_bn_into_next_conv,
    fuse_pointwise,
    optimize_for_inference,
)
from casdap.models.casvit import CASViT


def _trained_like(name="rcvit_xs", **kw):
    return trained_like(name, **kw).eval()


def _close(a, b, tol=1e-4):
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= tol, f"max abs diff {err:.3e} > {tol}"
    assert b.abs().max().item() > 0.5, "outputs too small for the comparison to mean anything"


def test_fold_batchnorm_removes_every_bn_and_keeps_outputs():
    model = _trained_like(num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fold_batchnorm(model)
    assert count_batchnorm(model) == 56 and count_batchnorm(fused) == 0
    assert fused.dist_head is None  # the two eval-mode heads became one
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        _close(fused(x), model(x))
    # the trained model itself is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fold_batchnorm_single_head_and_headless():
    model = _trained_like(num_classes=7, distillation=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(fold_batchnorm(model)(x), model(x))
    headless = _trained_like(num_classes=0)  # features only: the final BN has no Linear to go into
    fused = fold_batchnorm(headless)
    assert count_batchnorm(fused) == 1
    with torch.no_grad():
        _close(fused(x), headless(x))


def test_fold_rejects_padded_following_conv():
    bn = nn.BatchNorm2d(4).eval()
    with pytest.raises(casdap.CasdapError, match="no padding"):
        fold_bn_into_next_conv(bn, nn.Conv2d(4, 4, 3, padding=1))


def test_fold_rejects_batch_statistics_bn():
    model = casdap.create_model("rcvit_xs", num_classes=3)
    model.network[0][0].norm1 = nn.BatchNorm2d(48, track_running_stats=False)
    with pytest.raises(casdap.CasdapError, match="running statistics"):
        fold_batchnorm(model)


def test_channels_last_path_matches_eager():
    model = _trained_like(num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(optimize_for_inference(model, channels_last=True)(x), model(x))
        _close(optimize_for_inference(model, fold_bn=False, channels_last=True)(x), model(x))


def test_compiled_path_traces_without_changing_outputs():
    # The graph torch.compile captures (dynamo + AOT decomposition) of the folded channels-last model
    # must give the same logits; a one-block-per-stage CASViT keeps tracing quick. Inductor's code
    # generation itself is checked against eager by `casdap bench --paths compiled` before it times
    # anything (a full compile costs minutes of CPU, too slow for the test suite).
    torch.manual_seed(0)
    model = CASViT((1, 1, 1, 1), (16, 16, 32, 32), num_classes=4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.2, 2)
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 1)
    model.eval()
    fast = optimize_for_inference(model, compile=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(fast(x), model(x))


@pytest.mark.parametrize("channels_last,always_onednn", [(False, True), (True, True), (True, False)])
def test_fused_path_matches_eager(channels_last, always_onednn):
    model = _trained_like(num_classes=6)
    fast = optimize_for_inference(model, fuse=True, channels_last=channels_last)
    blocks = [m for m in fast.modules() if isinstance(m, FusedAdditiveBlock)]
    assert len(blocks) == sum(model.layers)
    if always_onednn:  # every fused conv through oneDNN, even on maps below its size threshold
        for m in fast.modules():
            if isinstance(m, FusedConv):
                m.min_pixels = 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _close(fast(x), model(x))


def test_fused_convs_fall_back_to_plain_pytorch_with_the_same_result():
    # the path taken on CUDA, under autograd, or where torch has no oneDNN
    model = _trained_like(num_classes=6)
    fused = fuse_pointwise(fold_batchnorm(model))
    convs = [m for m in fused.modules() if isinstance(m, FusedConv)]
    assert convs and all(m.onednn == torch.backends.mkldnn.is_available() for m in convs)
    for m in convs:
        m.onednn = False
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(fused(x), model(x))


def test_fuse_needs_folded_model():
    with pytest.raises(casdap.CasdapError, match="fold_batchnorm first"):
        fuse_pointwise(_trained_like())


def test_fast_casdap_gives_the_same_logits_and_keys():
    from casdap.deploy import optimize_dap_for_inference
    from casdap.models.dap import CASDAP

    dap = CASDAP(_trained_like(num_classes=0), num_classes=20, num_tasks=4, num_tokens=10, task_emb_dim=16,
                 stages=(2, 3), injection="kv", keys_per_task=1).eval()
    gen = torch.Generator().manual_seed(3)
    for n, p in dap.named_parameters():  # prompts, keys and head away from their zero/initial values
        if not n.startswith("backbone."):
            p.data.normal_(0, 0.3, generator=gen)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():  # keys from some of the images, so selection differs by image
        dap.dap_keys[:4] = dap.forward_query(x[:4])
    fast = optimize_dap_for_inference(dap)
    # left: norm1 of the blocks the prompts reach into (prompted stages onwards) and the final norm
    assert count_batchnorm(fast.backbone) == sum(dap.backbone.layers[dap.stages[0]:]) + 1
    with torch.no_grad():
        want, got = dap(x), fast(x)
    assert torch.equal(got.key_idx, want.key_idx) and len(set(want.key_idx.tolist())) > 1
    _close(got.logits, want.logits)

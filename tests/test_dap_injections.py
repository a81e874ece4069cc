"""The prompted path runs the backbone block's own mixer (``MixerPrompts``): every injection must
give bit-for-bit the outputs and gradients of the formulas it had when it copied the block, and the
plain backbone must not change (same outputs, same state-dict keys)."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_dap_model import _backbone as random_bn_backbone

from casdap.models.casvit import AdditiveBlock
from casdap.models.dap import CASDAP


def _backbone(seed: int = 0):
    return random_bn_backbone(seed).eval()


# -- the formulas as they were, frozen: a copy of the block and the three mixers -----------------
def _mean(maps, b):
    return maps.reshape(b, -1, maps.shape[1]).mean(1)[:, :, None, None]


def _pooled_gate(oper, t, t_p, gate, b):
    spatial, channel = oper[0], oper[1]
    s = spatial(t)
    pool, conv, sigmoid = channel.block
    ctx = pool(s)
    ctx = ctx + gate * (_mean(spatial(t_p), b) - ctx)
    return s * sigmoid(conv(ctx))


def _frozen_mixer(pb, attn, x, prompts):
    b = x.shape[0]
    q, k, v = attn.qkv(x).chunk(3, dim=1)
    q_p, k_p, v_p = attn.qkv(prompts).chunk(3, dim=1)
    if pb.injection == "kv":
        q_mix = attn.oper_q(q)
        k_mix = attn.oper_k(k) + pb.gate_a * _mean(attn.oper_k(k_p), b)
        v = v + pb.gate_b * _mean(v_p, b)
    elif pb.injection == "attn":
        mixed = attn.dwc(attn.oper_q(q) + attn.oper_k(k)) * v
        c = q.shape[1]
        keys, values = k_p.reshape(b, -1, c), v_p.reshape(b, -1, c)
        weights = torch.softmax(torch.einsum("bchw,bnc->bhwn", q, keys) / math.sqrt(c), dim=-1)
        read = torch.einsum("bhwn,bnc->bchw", weights, values)
        return attn.proj_drop(attn.proj(mixed + pb.gate_b * read))
    else:
        q_mix = _pooled_gate(attn.oper_q, q, q_p, pb.gate_a, b)
        k_mix = _pooled_gate(attn.oper_k, k, k_p, pb.gate_b, b)
    return attn.proj_drop(attn.proj(attn.dwc(q_mix + k_mix) * v))


def _frozen_block(pb, block, x, task_emb, task_idx=None):
    x = x + block.local_perception(x)
    prompts = pb.generator(x, task_emb, task_idx)
    norm = block.norm1
    tokens = F.layer_norm(prompts.transpose(1, 2), prompts.shape[1:2], eps=1e-6) * norm.weight + norm.bias
    tokens = tokens.reshape(-1, tokens.shape[-1], 1, 1)
    x = x + block.drop_path(_frozen_mixer(pb, block.attn, block.norm1(x), tokens))
    return x + block.drop_path(block.mlp(block.norm2(x)))


def _run(model, fn, x, task):
    """Prompted features of ``x`` through ``fn`` per prompted block, and the gradients of a fixed loss."""
    model.zero_grad()
    bb = model.backbone
    with torch.no_grad():
        h = model._prefix(x)
    task_idx = torch.as_tensor(task).expand(len(x)) if isinstance(task, int) else task
    emb = model.dap_task_emb(task_idx)
    gen_task = task if model.task_generators else task_idx
    for s in range(model.stages[0], len(bb.layers)):
        prompted = model.dap_blocks[str(s)] if str(s) in model.dap_blocks else []
        for i, block in enumerate(bb.stages[s]):
            h = fn(prompted[i], block, h, emb, gen_task) if i < len(prompted) else block(h)
        if bb.downsample(s) is not None:
            h = bb.downsample(s)(h)
    feats = bb.forward_head(bb.norm(h), pre_logits=True)
    w = torch.linspace(-1.0, 1.0, feats.numel()).reshape(feats.shape)
    (feats * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return feats.detach(), grads


@pytest.mark.parametrize("injection", ["kv", "attn", "pool", "kv+mix", "attn+mix+task", "pool+task"])
def test_prompted_blocks_give_the_frozen_formulas_bit_for_bit(injection):
    name, *options = injection.split("+")
    model = CASDAP(_backbone(), num_classes=6, num_tasks=3, num_tokens=3, task_emb_dim=8, stages=(1, 3),
                   injection=name, channel_mix="mix" in options, task_generators="task" in options,
                   prompt_last_block=False)
    with torch.no_grad():  # open gates, non-zero maps: every prompt term counts
        for n, p in model.named_parameters():
            if not n.startswith("backbone."):
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    model.train()
    x = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    for task in (1, torch.tensor([0, 2, 1])) if "task" in options else (1,):
        new_feats, new_grads = _run(model, lambda pb, blk, h, e, t: pb(blk, h, e, t), x, task)
        old_feats, old_grads = _run(model, _frozen_block, x, task)
        assert torch.equal(new_feats, old_feats)
        assert new_grads.keys() == old_grads.keys() and new_grads
        for n in old_grads:
            assert torch.equal(new_grads[n], old_grads[n]), f"{n}: gradient differs from the frozen formula"


def test_plain_block_is_the_paper_block_and_keeps_its_keys():
    torch.manual_seed(0)
    block = AdditiveBlock(32).eval()
    x = torch.randn(2, 32, 9, 9)
    a = block.attn
    with torch.no_grad():
        y = x + block.local_perception(x)
        q, k, v = a.qkv(block.norm1(y)).chunk(3, dim=1)
        y = y + a.proj_drop(a.proj(a.dwc(a.oper_q(q) + a.oper_k(k)) * v))
        y = y + block.mlp(block.norm2(y))
        assert torch.equal(block(x), y)
    assert all(not k.startswith(("prompt", "gate")) for k in block.state_dict())

"""Inference-only forms of a CAS-ViT: BatchNorm folded away, channels-last layout, torch.compile.

Every transform returns a new module and leaves the trained model untouched. Each is exact up to
float rounding (the tests hold them to 1e-4 of the eager model):

* BatchNorm after a convolution (stem, downsampling embeddings, ``LocalIntegration``, the spatial
  gates) becomes a rescaled weight and a new bias of that convolution.
* ``norm1`` / ``norm2`` in every block only feed a 1x1 convolution (``attn.qkv``, ``mlp.fc1``), so
  they are folded into that *following* convolution (a per-input-channel scale and a bias term;
  exact because a 1x1 convolution has no zero padding that the BN shift could leak into).
* The final BN is per-channel affine and commutes with global average pooling, so it folds into
  the classifier; in eval mode the distillation head and the main head (whose logits are
  averaged) merge into one Linear.

The folded model keeps the ``CASViT`` interface, but it is for inference only: it has no
BatchNorm statistics to train, ``forward_features`` returns the map *before* the (folded) final
BN, and it always answers with the eval-mode logits.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from casdap.errors import CasdapError
from casdap.models.casvit import (
    AdditiveBlock,
    AdditiveTokenMixer,
    CASViT,
    Downsample,
    LocalIntegration,
    SpatialGate,
)

__all__ = [
    "FusedConv",
    "count_batchnorm",
    "fold_batchnorm",
    "fold_copy",
    "fuse_pointwise",
    "optimize_dap_for_inference",
    "optimize_for_inference",
]


def _require_running_stats(bn: nn.BatchNorm2d) -> None:
    if bn.running_mean is None or bn.running_var is None:
        raise CasdapError(
            f"cannot fold {bn}: it has no running statistics (track_running_stats=False); "
            "such a BatchNorm normalises with batch statistics and is not a fixed affine map"
        )


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``bn(x) == x * scale + shift`` per channel, from the running statistics."""
    _require_running_stats(bn)
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _new_conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    out = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode,
    ).to(device=weight.device, dtype=weight.dtype)
    out.weight.copy_(weight)
    out.bias.copy_(bias)
    return out


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one convolution (any kernel, stride or groups), for modules in eval mode."""
    _require_running_stats(bn)
    if conv.training or bn.training:
        raise CasdapError("fold_bn_into_conv folds eval-mode modules: call .eval() first")
    return fuse_conv_bn_eval(conv, bn)


@torch.no_grad()
def fold_bn_into_next_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """``conv(bn(x))`` as one convolution; only exact without padding and without groups."""
    if conv.groups != 1 or any(p != 0 for p in conv.padding) or conv.padding_mode != "zeros":
        raise CasdapError(f"cannot fold a BatchNorm into the following {conv}: it needs groups=1 and no padding")
    scale, shift = _bn_scale_shift(bn)
    weight = conv.weight * scale.reshape(1, -1, 1, 1)
    bias = conv.weight.sum(dim=(2, 3)) @ shift
    if conv.bias is not None:
        bias = bias + conv.bias
    return _new_conv_like(conv, weight, bias)


@torch.no_grad()
def _fold_bn_into_linear(bn: nn.BatchNorm2d, linear: nn.Linear) -> nn.Linear:
    """``linear(mean_hw(bn(x)))`` as ``linear'(mean_hw(x))``."""
    scale, shift = _bn_scale_shift(bn)
    out = nn.Linear(linear.in_features, linear.out_features).to(device=linear.weight.device,
                                                                 dtype=linear.weight.dtype)
    out.weight.copy_(linear.weight * scale)
    out.bias.copy_(linear.weight @ shift + (linear.bias if linear.bias is not None else 0))
    return out


@torch.no_grad()
def _merge_heads(a: nn.Linear, b: nn.Linear) -> nn.Linear:
    """One Linear equal to ``(a(x) + b(x)) / 2`` (the eval-mode output of a distilled model)."""
    out = nn.Linear(a.in_features, a.out_features).to(device=a.weight.device, dtype=a.weight.dtype)
    out.weight.copy_((a.weight + b.weight) / 2)
    out.bias.copy_((a.bias + b.bias) / 2)
    return out


def _fold_conv_bn_sequence(seq: nn.Sequential) -> None:
    """Fold every ``Conv2d -> BatchNorm2d`` pair inside a Sequential, in place."""
    for i in range(len(seq) - 1):
        if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
            seq[i] = fold_bn_into_conv(seq[i], seq[i + 1])
            seq[i + 1] = nn.Identity()


@torch.no_grad()
def fold_batchnorm(model: CASViT) -> CASViT:
    """A copy of ``model`` with no BatchNorm left, equal to ``model.eval()`` up to rounding."""
    if not isinstance(model, CASViT):
        raise CasdapError(f"fold_batchnorm expects a CASViT backbone, got {type(model).__name__}")
    return fold_copy(model, fold_norm1=True, fold_head=True)


def fold_copy(model: CASViT, fold_norm1: bool, fold_head: bool) -> CASViT:
    """An eval-mode copy of ``model`` with every BatchNorm folded into a neighbouring convolution,
    except ``norm1`` of the blocks unless ``fold_norm1`` and the final norm unless ``fold_head``
    (then folded into the classifier, whose distillation head is merged in). The copy does not fold
    again at run time (:mod:`casdap.models.frozen_fold`)."""
    fused = copy.deepcopy(model).eval()
    fused.runtime_fold = None
    _fold_conv_bn_sequence(fused.patch_embed)
    for module in fused.modules():
        if isinstance(module, Downsample) and isinstance(module.norm, nn.BatchNorm2d):
            module.proj = fold_bn_into_conv(module.proj, module.norm)
            module.norm = nn.Identity()
        elif isinstance(module, (LocalIntegration, SpatialGate)):
            _fold_conv_bn_sequence(module.network if isinstance(module, LocalIntegration) else module.block)
        elif isinstance(module, AdditiveBlock):
            if fold_norm1 and isinstance(module.norm1, nn.BatchNorm2d):
                module.attn.qkv = fold_bn_into_next_conv(module.norm1, module.attn.qkv)
                module.norm1 = nn.Identity()
            if isinstance(module.norm2, nn.BatchNorm2d):
                module.mlp.fc1 = fold_bn_into_next_conv(module.norm2, module.mlp.fc1)
                module.norm2 = nn.Identity()
    if fold_head and isinstance(fused.norm, nn.BatchNorm2d) and isinstance(fused.head, nn.Linear):
        fused.head = _fold_bn_into_linear(fused.norm, fused.head)
        if isinstance(fused.dist_head, nn.Linear):
            fused.dist_head = _fold_bn_into_linear(fused.norm, fused.dist_head)
        fused.norm = nn.Identity()
    if fold_head and isinstance(fused.dist_head, nn.Linear) and isinstance(fused.head, nn.Linear):
        fused.head = _merge_heads(fused.head, fused.dist_head)
        fused.dist_head = None
        fused.distillation = False
    fused.requires_grad_(False)
    return fused


def count_batchnorm(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class ChannelsLast(nn.Module):
    """Runs the wrapped model on channels-last (NHWC) memory; callers pass ordinary tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


# -- activations and residual adds fused into convolutions (CPU, oneDNN) ------------------------

_UNARY = {"none": lambda t: t, "relu": torch.relu, "gelu": nn.functional.gelu, "sigmoid": torch.sigmoid}
_BINARY = {"add": torch.add, "mul": torch.mul}


def _onednn_fusion_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedConv(nn.Module):
    """``unary(conv(x) <binary> other)`` in one oneDNN call on CPU (no intermediate tensor written
    and re-read); the same three steps in plain PyTorch anywhere else (CUDA, autograd, no oneDNN).

    ``unary`` is one of none/relu/gelu (exact erf)/sigmoid, ``binary`` one of None/add/mul.
    """

    def __init__(self, conv: nn.Conv2d, unary: str = "none", binary: str | None = None) -> None:
        super().__init__()
        if unary not in _UNARY or (binary is not None and binary not in _BINARY):
            raise ValueError(f"unsupported fusion {unary!r}/{binary!r}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("FusedConv needs explicit zero padding")
        self.conv, self.unary, self.binary = conv, unary, binary
        self.onednn = _onednn_fusion_available()
        # The fused call re-lays out the weights on every call, which only pays off over enough
        # output pixels (batch x H x W); measured break-even on a CPU: ~100-200 for a dense 1x1
        # conv + GELU, a few thousand for a depthwise conv + add/mul.
        self.min_pixels = 128 if conv.groups == 1 else 4096

    def _use_onednn(self, x: torch.Tensor) -> bool:
        return (
            self.onednn and x.device.type == "cpu" and x.dtype == torch.float32
            and x.shape[0] * x.shape[-2] * x.shape[-1] >= self.min_pixels
            and not (torch.is_grad_enabled() and (x.requires_grad or self.conv.weight.requires_grad))
        )

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        c = self.conv
        if self._use_onednn(x):
            args = (c.weight, c.bias, list(c.padding), list(c.stride), list(c.dilation), c.groups)
            algorithm = "none" if self.unary == "gelu" else None  # exact (erf) GELU, as nn.GELU()
            if self.binary is None:
                return torch.ops.mkldnn._convolution_pointwise(x, *args, self.unary, [], algorithm)
            unary = None if self.unary == "none" else self.unary
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, *args, self.binary, None, unary, [], algorithm
            )
        y = c(x)
        if self.binary is not None:
            y = _BINARY[self.binary](y, other)
        return _UNARY[self.unary](y)


class _FusedChannelGate(nn.Module):
    def __init__(self, gate: nn.Module) -> None:
        super().__init__()
        self.conv = gate.block[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x.mean((2, 3), keepdim=True)))


class _FusedGates(nn.Module):
    """``C(S(x))`` with the spatial gate's depthwise conv+ReLU fused (its one-channel 1x1 conv is
    left unfused: oneDNN's sigmoid post-op on a single output channel measured slower)."""

    def __init__(self, oper: nn.Sequential) -> None:
        super().__init__()
        spatial, channel = oper[0].block, oper[1]
        self.dw = FusedConv(spatial[0], "relu")
        self.gate = spatial[3]
        self.channel = _FusedChannelGate(channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel(x * torch.sigmoid(self.gate(self.dw(x))))


class FusedAdditiveBlock(nn.Module):
    """A BatchNorm-folded ``AdditiveBlock`` whose activations (GELU, ReLU, sigmoid), the ``* v`` of
    the mixer and the three residual adds run inside the convolutions that produce them."""

    def __init__(self, block: AdditiveBlock) -> None:
        super().__init__()
        li = block.local_perception.network
        self.li_in = li[0]
        self.li_dw = FusedConv(li[2], "gelu")
        self.li_out = FusedConv(li[4], binary="add")
        attn = block.attn
        self.qkv = attn.qkv
        self.oper_q, self.oper_k = _FusedGates(attn.oper_q), _FusedGates(attn.oper_k)
        self.dwc_times_v = FusedConv(attn.dwc, binary="mul")
        self.proj_add = FusedConv(attn.proj, binary="add")
        self.fc1 = FusedConv(block.mlp.fc1, "gelu")
        self.fc2_add = FusedConv(block.mlp.fc2, binary="add")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.li_out(self.li_dw(self.li_in(x)), x)
        q, k, v = self.qkv(x).chunk(3, dim=1)
        x = self.proj_add(self.dwc_times_v(self.oper_q(q) + self.oper_k(k), v), x)
        return self.fc2_add(self.fc1(x), x)


def _fusable(block: nn.Module) -> bool:
    """Only the plain block, folded and in eval mode: prompted subclasses keep their own forward."""
    return (
        type(block) is AdditiveBlock and type(block.attn) is AdditiveTokenMixer
        and isinstance(block.norm1, nn.Identity) and isinstance(block.norm2, nn.Identity)
        and isinstance(block.drop_path, nn.Identity)
        and isinstance(block.local_perception.network[1], nn.Identity)
        and isinstance(block.attn.oper_q[0].block[1], nn.Identity)
        and isinstance(block.attn.oper_k[0].block[1], nn.Identity)
    )


@torch.no_grad()
def fuse_pointwise(model: CASViT) -> CASViT:
    """A copy of a BatchNorm-folded backbone (:func:`fold_batchnorm`) with activations and residual
    adds fused into convolutions; blocks of other types are left as they are."""
    if count_batchnorm(model.patch_embed) or count_batchnorm(model.network):
        raise CasdapError("fuse_pointwise expects a BatchNorm-folded model: call fold_batchnorm first")
    fused = copy.deepcopy(model).eval()
    stem = fused.patch_embed
    for i in range(len(stem) - 2):
        if isinstance(stem[i], nn.Conv2d) and isinstance(stem[i + 1], nn.Identity) and isinstance(stem[i + 2], nn.ReLU):
            stem[i], stem[i + 2] = FusedConv(stem[i], "relu"), nn.Identity()
    for stage in fused.stages:
        for j, block in enumerate(stage):
            if _fusable(block):
                stage[j] = FusedAdditiveBlock(block)
    return fused


def optimize_for_inference(
    model: CASViT,
    *,
    fold_bn: bool = True,
    channels_last: bool = True,
    fuse: bool = False,
    compile: bool = False,
    backend: str = "inductor",
) -> nn.Module:
    """The fast inference form of a backbone, built from the optional transforms.

    ``fuse=True`` (needs ``fold_bn``) runs activations and residual adds inside the convolutions
    (oneDNN on CPU; plain PyTorch elsewhere). ``compile=True`` wraps the result in
    ``torch.compile`` (inductor with weight freezing, which pre-packs convolution weights and fuses
    activations into them when called under ``torch.no_grad``/``torch.inference_mode``). The first
    compiled call compiles, which takes minutes of CPU; measure with ``casdap bench`` whether it pays.
    """
    if fuse and not fold_bn:
        raise CasdapError("fuse=True needs fold_bn=True (fusion works on the BatchNorm-free graph)")
    out: nn.Module = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    if fuse:
        out = fuse_pointwise(out)
    if channels_last:
        out = ChannelsLast(out)
    if compile:
        options = {"freezing": True} if backend == "inductor" else None
        out = torch.compile(out, backend=backend, options=options)
    return out


# -- CAS-DAP ------------------------------------------------------------------------------------


@torch.no_grad()
def optimize_dap_for_inference(dap: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """A copy of a CAS-DAP model with its frozen backbone in inference form; same outputs.

    Every BatchNorm of the backbone is folded except the ones the prompts read: ``norm1`` of
    each block (prompt tokens take its affine and pass through it) and the final norm (the query
    and the prompted features are pooled after it). Stages before the first prompted stage (run
    once, shared by the query and the prompted pass) also get the fused convolutions; blocks of
    the prompted stages keep their structure because the prompt injection reaches into them.
    """
    from casdap.models.dap import CASDAP

    if not isinstance(dap, CASDAP):
        raise CasdapError(f"optimize_dap_for_inference expects a CASDAP model, got {type(dap).__name__}")
    fast = copy.deepcopy(dap).eval()
    backbone = fold_copy(fast.backbone, fold_norm1=False, fold_head=False)
    for s in range(fast.stages[0]):
        stage = backbone.stages[s]
        for j, block in enumerate(stage):
            if type(block) is AdditiveBlock and isinstance(block.norm1, nn.BatchNorm2d):
                block.attn.qkv = fold_bn_into_next_conv(block.norm1, block.attn.qkv)
                block.norm1 = nn.Identity()
            if _fusable(block):
                stage[j] = FusedAdditiveBlock(block)
    stem = backbone.patch_embed
    for i in range(len(stem) - 2):
        if isinstance(stem[i], nn.Conv2d) and isinstance(stem[i + 1], nn.Identity) and isinstance(stem[i + 2], nn.ReLU):
            stem[i], stem[i + 2] = FusedConv(stem[i], "relu"), nn.Identity()
    fast.backbone = backbone
    fast.requires_grad_(False)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    return fast

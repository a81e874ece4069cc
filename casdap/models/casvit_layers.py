"""The building blocks of CAS-ViT (arXiv 2408.03703): the convolutional stem, the downsampling
embeddings, the convolutional MLP, and the additive block with its convolutional additive token
mixer, which takes extra tokens in named roles (:class:`MixerPrompts`) for prompt methods.

Module and parameter names follow the official ``rcvit.py`` so that its checkpoints load strictly
into :class:`casdap.models.casvit.CASViT`, which assembles these blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import DropPath

__all__ = ["AdditiveBlock", "AdditiveTokenMixer", "ChannelGate", "ConvMlp", "Downsample", "LocalIntegration",
           "MixerPrompts", "SpatialGate"]


def _stem(in_chans: int, out_chans: int) -> nn.Sequential:
    """Two stride-2 3x3 convs: the image enters at 1/4 resolution."""
    mid = out_chans // 2
    return nn.Sequential(
        nn.Conv2d(in_chans, mid, 3, stride=2, padding=1),
        nn.BatchNorm2d(mid),
        nn.ReLU(),
        nn.Conv2d(mid, out_chans, 3, stride=2, padding=1),
        nn.BatchNorm2d(out_chans),
        nn.ReLU(),
    )


class Downsample(nn.Module):
    """Stride-2 3x3 conv + BN between stages."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, out_chans, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class ConvMlp(nn.Module):
    """Channel MLP as two 1x1 convs."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SpatialGate(nn.Module):
    """Per-pixel sigmoid gate from a depthwise-conv branch (the paper's spatial operation)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, 1, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.block(x)


class ChannelGate(nn.Module):
    """Per-channel sigmoid gate from global average pooling: the block's only global interaction."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, dim, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(
        self, x: torch.Tensor, context: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``context``, when given, rewrites the pooled context ``[B, C, 1, 1]`` before the gate
        (prompted mixers let other tokens join it)."""
        if context is None:
            return x * self.block(x)
        pool, conv, sigmoid = self.block
        return x * sigmoid(conv(context(pool(x))))


class LocalIntegration(nn.Module):
    """1x1 conv, BN, depthwise 3x3, GELU, 1x1 conv: local context added before mixing."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(dim, dim, 1),
            nn.BatchNorm2d(dim),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


@dataclass
class MixerPrompts:
    """Extra tokens (prompts) for one :class:`AdditiveTokenMixer` call, and the roles they play.

    ``tokens`` ``[B, N, C]``: N tokens per image, already normalised like the mixer's input. The
    mixer projects them with its own ``qkv`` as one-pixel maps (no neighbours), giving ``q_n, k_n,
    v_n``. Each role is a per-channel gate ``[C, 1, 1]`` (None: the role is not played); with every
    gate at zero the mixer's output is exactly its output without prompts:

    - ``key_gate``: extra keys, ``k' + key_gate * mean_n C(S(k_n))``;
    - ``value_gate``: extra values, ``v + value_gate * mean_n v_n``;
    - ``read_gate``: a softmax read of the tokens, ``dwc(q' + k') * v + read_gate * softmax_n(q . k_n /
      sqrt(C)) v_n``, as a ViT position reads prepended prompt tokens;
    - ``q_context_gate`` / ``k_context_gate``: the tokens join the pooled context of the channel gate
      ``C`` of q / k, ``ctx + gate * (mean_n S(t_n) - ctx)``.
    """

    tokens: torch.Tensor
    key_gate: torch.Tensor | None = None
    value_gate: torch.Tensor | None = None
    read_gate: torch.Tensor | None = None
    q_context_gate: torch.Tensor | None = None
    k_context_gate: torch.Tensor | None = None


def _token_mean(maps: torch.Tensor, batch: int) -> torch.Tensor:
    """``[B*N, C, 1, 1]`` -> ``[B, C, 1, 1]``: mean over each image's tokens."""
    return maps.reshape(batch, -1, maps.shape[1]).mean(1)[:, :, None, None]


class AdditiveTokenMixer(nn.Module):
    """Convolutional additive attention: ``proj(dwc(C(S(q)) + C(S(k))) * v)``.

    Given :class:`MixerPrompts`, extra tokens take part in the mixing in the roles it names; without
    them the plain path runs as is.
    """

    def __init__(self, dim: int, qkv_bias: bool = False, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=qkv_bias)
        self.oper_q = nn.Sequential(SpatialGate(dim), ChannelGate(dim))
        self.oper_k = nn.Sequential(SpatialGate(dim), ChannelGate(dim))
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = self.proj(self.dwc(self.oper_q(q) + self.oper_k(k)) * v)
        return self.proj_drop(out)

    def mix_prompted(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prompts: MixerPrompts) -> torch.Tensor:
        """:meth:`mix` with the extra tokens of ``prompts`` in their roles."""
        p = prompts
        b, c = p.tokens.shape[0], p.tokens.shape[-1]
        q_p, k_p, v_p = self.qkv(p.tokens.reshape(-1, c, 1, 1)).chunk(3, dim=1)  # [B*N, C, 1, 1] each
        q_mix = self._operate(self.oper_q, q, q_p, p.q_context_gate, b)
        k_mix = self._operate(self.oper_k, k, k_p, p.k_context_gate, b)
        if p.key_gate is not None:
            k_mix = k_mix + p.key_gate * _token_mean(self.oper_k(k_p), b)
        if p.value_gate is not None:
            v = v + p.value_gate * _token_mean(v_p, b)
        mixed = self.dwc(q_mix + k_mix) * v
        if p.read_gate is not None:
            mixed = mixed + p.read_gate * self._read_tokens(q, k_p.reshape(b, -1, c), v_p.reshape(b, -1, c))
        return self.proj_drop(self.proj(mixed))

    @staticmethod
    def _operate(oper: nn.Sequential, t: torch.Tensor, t_p: torch.Tensor, gate: torch.Tensor | None,
                 b: int) -> torch.Tensor:
        """``C(S(t))``; with a context gate the tokens' ``S(t_p)`` join the pooled context of ``C``."""
        if gate is None:
            return oper(t)
        spatial, channel = oper[0], oper[1]
        s = spatial(t)
        return channel(s, lambda ctx: ctx + gate * (_token_mean(spatial(t_p), b) - ctx))

    @staticmethod
    def _read_tokens(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]``: each position's softmax-weighted read of its image's token values ``[B, N, C]``."""
        weights = torch.softmax(torch.einsum("bchw,bnc->bhwn", q, keys) / math.sqrt(q.shape[1]), dim=-1)
        return torch.einsum("bhwn,bnc->bchw", weights, values)

    def forward(self, x: torch.Tensor, prompts: MixerPrompts | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=1)
        if prompts is None:
            return self.mix(q, k, v)
        return self.mix_prompted(q, k, v, prompts)


class AdditiveBlock(nn.Module):
    """``x + LI(x)``, then ``+ DropPath(Mixer(BN(x)))``, then ``+ DropPath(MLP(BN(x)))``.

    ``prompts``, when given, maps the stream that enters the mixer (after local integration) to the
    :class:`MixerPrompts` of this call: prompted models generate their tokens from it.
    """

    def __init__(
        self, dim: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.local_perception = LocalIntegration(dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = AdditiveTokenMixer(dim, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(
        self, x: torch.Tensor, prompts: Callable[[torch.Tensor], MixerPrompts] | None = None
    ) -> torch.Tensor:
        x = x + self.local_perception(x)
        if prompts is None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
        else:
            extra = prompts(x)
            x = x + self.drop_path(self.attn(self.norm1(x), extra))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x

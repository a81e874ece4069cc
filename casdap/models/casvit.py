"""CAS-ViT: Convolutional Additive Self-attention Vision Transformers (arXiv 2408.03703).

The module tree reproduces the official ``rcvit_*`` state-dict layout exactly (``patch_embed.N``,
``network.<i>.<j>.*`` with stages at even and downsampling embeddings at odd indices, ``norm``,
``head``, ``dist_head``), so Model Zoo checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath, trunc_normal_
from timm.models import register_model

__all__ = ["CASViT", "AdditiveBlock", "AdditiveTokenMixer", "VARIANTS"]

# name -> (blocks per stage, channels per stage)
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "rcvit_xs": ((2, 2, 4, 2), (48, 56, 112, 220)),
    "rcvit_s": ((3, 3, 6, 3), (48, 64, 128, 256)),
    "rcvit_m": ((3, 3, 6, 3), (64, 96, 192, 384)),
    "rcvit_t": ((3, 3, 6, 3), (96, 128, 256, 512)),
}


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.block(x)


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


class AdditiveTokenMixer(nn.Module):
    """Convolutional additive attention: ``proj(dwc(C(S(q)) + C(S(k))) * v)``.

    ``mix`` is split out so that prompted variants can alter q, k or v before the additive
    fusion without copying the rest of the block.
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=1)
        return self.mix(q, k, v)


class AdditiveBlock(nn.Module):
    """``x + LI(x)``, then ``+ DropPath(Mixer(BN(x)))``, then ``+ DropPath(MLP(BN(x)))``."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.local_perception(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class CASViT(nn.Module):
    """CAS-ViT classifier (the official ``RCViT``), with timm-style feature/head split.

    With ``distillation=True`` (the Model Zoo layout) training mode returns ``(head, dist_head)``
    logits and eval mode their mean.
    """

    def __init__(
        self,
        layers: Sequence[int],
        embed_dims: Sequence[int],
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        distillation: bool = True,
        classifier_dropout: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            unknown = ", ".join(sorted(kwargs))
            raise TypeError(f"CASViT got unknown arguments: {unknown}")
        self.layers = tuple(layers)
        self.embed_dims = tuple(embed_dims)
        self.num_classes = num_classes
        self.num_features = embed_dims[-1]
        self.distillation = distillation

        self.patch_embed = _stem(in_chans, embed_dims[0])
        total = sum(layers)
        network: list[nn.Module] = []
        block_idx = 0
        for i, (depth, dim) in enumerate(zip(layers, embed_dims)):
            blocks = []
            for _ in range(depth):
                dpr = drop_path_rate * block_idx / max(total - 1, 1)
                blocks.append(AdditiveBlock(dim, mlp_ratio, drop=drop_rate, drop_path=dpr))
                block_idx += 1
            network.append(nn.Sequential(*blocks))
            if i < len(layers) - 1:
                network.append(Downsample(dim, embed_dims[i + 1]))
        self.network = nn.ModuleList(network)

        self.norm = nn.BatchNorm2d(self.num_features)
        self.head_drop = nn.Dropout(classifier_dropout)
        self.head = self._make_head(num_classes)
        self.dist_head = self._make_head(num_classes) if distillation else None
        self.apply(self._init_weights)

    def _make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- structure helpers used by prompted models and dense tasks --------------------------
    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.network[i] for i in range(0, len(self.network), 2)]

    def downsample(self, stage_idx: int) -> nn.Module | None:
        """Embedding that follows stage ``stage_idx`` (None after the last stage)."""
        j = 2 * stage_idx + 1
        return self.network[j] if j < len(self.network) else None

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm parameter grouping (stem, then blocks/embeddings in depth order), used for
        layer-wise lr decay. ``coarse`` groups by stage instead of by block."""
        blocks = r"^network\.(\d+)" if coarse else [(r"^network\.(\d+)\.(\d+)\.", None), (r"^network\.(\d+)\.", None)]
        return {"stem": r"^patch_embed", "blocks": blocks}

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, distillation: bool | None = None) -> None:
        if distillation is not None:
            self.distillation = distillation
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)
        self.dist_head = self._make_head(num_classes) if self.distillation else None
        for m in (self.head, self.dist_head):
            if m is not None:
                self._init_weights(m)

    # -- forward ----------------------------------------------------------------------------
    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale mode: the output of every stage (strides 4, 8, 16, 32) for dense tasks."""
        x = self.patch_embed(x)
        outs = []
        for i, module in enumerate(self.network):
            x = module(x)
            if i % 2 == 0:
                outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map after the last BatchNorm, ``[B, C, H/32, W/32]``."""
        x = self.patch_embed(x)
        for module in self.network:
            x = module(x)
        return self.norm(x)

    @staticmethod
    def pool(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(-1)

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.pool(x)
        if pre_logits:
            return x
        x = self.head_drop(x)
        out = self.head(x)
        if self.dist_head is None:
            return out
        dist = self.dist_head(x)
        if self.training:
            return out, dist
        return (out + dist) / 2

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features ``[B, C]``: the query used by domain-adaptive prompting."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


def _create(name: str, pretrained: bool = False, **kwargs) -> CASViT:
    if pretrained:
        raise ValueError(
            f"{name}: weights cannot be fetched automatically; build the model and call "
            "casdap.load_checkpoint(model, '<path to the Model Zoo .pth>')"
        )
    # timm passes these generic keys to every entry point; CAS-ViT has no use for them.
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    layers, dims = VARIANTS[name]
    return CASViT(layers, dims, **kwargs)


@register_model
def rcvit_xs(pretrained: bool = False, **kwargs) -> CASViT:
    return _create("rcvit_xs", pretrained, **kwargs)


@register_model
def rcvit_s(pretrained: bool = False, **kwargs) -> CASViT:
    return _create("rcvit_s", pretrained, **kwargs)


@register_model
def rcvit_m(pretrained: bool = False, **kwargs) -> CASViT:
    return _create("rcvit_m", pretrained, **kwargs)


@register_model
def rcvit_t(pretrained: bool = False, **kwargs) -> CASViT:
    return _create("rcvit_t", pretrained, **kwargs)

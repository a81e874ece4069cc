"""CAS-ViT: Convolutional Additive Self-attention Vision Transformers (arXiv 2408.03703).

The module tree reproduces the official ``rcvit_*`` state-dict layout exactly (``patch_embed.N``,
``network.<i>.<j>.*`` with stages at even and downsampling embeddings at odd indices, ``norm``,
``head``, ``dist_head``), so Model Zoo checkpoints load with ``strict=True``.

The variants are timm models: each has a pretrained config (ImageNet-1k input: 224 px, ImageNet
mean/std, bicubic, crop 0.875), so ``timm.data.resolve_data_config({}, model=model)`` gives its
preprocessing, and a Model Zoo file loads through timm's own pretrained path::

    timm.create_model("rcvit_xs", pretrained=True, pretrained_cfg_overlay=dict(file="rcvit_xs.pth"))

(:func:`checkpoint_filter_fn` maps the official file onto the model). ``forward_intermediates``
and ``prune_intermediate_layers`` follow timm's feature-extraction interface, and
``features_only=True`` wraps the model in timm's ``FeatureGetterNet``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._features import feature_take_indices  # where timm's own models import it from

from casdap.checkpoint import drop_dense_only, extract_state_dict
from casdap.models.casvit_layers import (  # noqa: F401  (re-exported: the family's public names)
    AdditiveBlock,
    AdditiveTokenMixer,
    ChannelGate,
    ConvMlp,
    Downsample,
    LocalIntegration,
    MixerPrompts,
    SpatialGate,
    _stem,
)

__all__ = ["CASViT", "AdditiveBlock", "AdditiveTokenMixer", "MixerPrompts", "VARIANTS", "checkpoint_filter_fn"]

# name -> (blocks per stage, channels per stage)
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "rcvit_xs": ((2, 2, 4, 2), (48, 56, 112, 220)),
    "rcvit_s": ((3, 3, 6, 3), (48, 64, 128, 256)),
    "rcvit_m": ((3, 3, 6, 3), (64, 96, 192, 384)),
    "rcvit_t": ((3, 3, 6, 3), (96, 128, 256, 512)),
    # not a CAS-ViT of the paper: a narrow one for tests (as timm's test_* models), with the last
    # stage's two blocks where the prompts go; a tiny continual run on it takes half the CPU of rcvit_xs
    "rcvit_test": ((1, 1, 2, 2), (16, 16, 32, 32)),
}


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
        # timm's description of the stage outputs (for features_only and forward_intermediates)
        self.feature_info = [
            {"num_chs": dim, "reduction": 4 * 2**i, "module": f"network.{2 * i}"} for i, dim in enumerate(embed_dims)
        ]

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
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's multi-scale interface: the outputs of the stages (strides 4, 8, 16, 32).

        Args:
            x: images ``[B, C, H, W]``.
            indices: which stages: None for all, an int ``n`` for the last ``n``, a sequence for
                those indices (negative ones count from the end).
            norm: pass the last stage's output through the final BatchNorm (the only stage it fits).
            stop_early: run no further than the last stage asked for.
            output_fmt: only ``"NCHW"``.
            intermediates_only: return only the list.

        Returns:
            The list of stage outputs, or ``(final features, list)``; the final features equal
            :meth:`forward_features` when every stage ran.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        stages = self.stages
        take_indices, max_index = feature_take_indices(len(stages), indices)
        last = len(stages) - 1
        run_to = max_index if stop_early else last
        intermediates = []
        x = self.patch_embed(x)
        for i in range(run_to + 1):
            if i > 0:
                x = self.network[2 * i - 1](x)  # the embedding between stages i - 1 and i
            x = stages[i](x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm and i == last else x)
        if intermediates_only:
            return intermediates
        if run_to == last:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what :meth:`forward_intermediates` no longer needs for ``indices``: the stages
        after the last one taken, the final norm (when those went, or with ``prune_norm``) and
        the classifier (with ``prune_head``). Returns the absolute indices kept."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.network = self.network[: 2 * max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.embed_dims[max_index]
        if prune_head or prune_end:
            self.reset_classifier(0)
        return take_indices

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

    # A FoldedView (casdap.models.frozen_fold) when a run folds its frozen parts: while this backbone
    # is frozen, the three passes below run its BatchNorm-folded twin (never saved, never copied).
    runtime_fold = None

    def _twin(self, keep_norm1: bool = False) -> CASViT | None:
        return None if self.runtime_fold is None else self.runtime_fold.twin(self, keep_norm1)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features ``[B, C]``: the query used by domain-adaptive prompting."""
        twin = self._twin()
        if twin is not None:
            return twin.forward_pooled(x)
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def forward_to_stage(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """The input of stage ``stage``: the stem and every earlier stage with its embedding (the part a
        prompted model shares between its query and its prompted pass)."""
        twin = self._twin()
        if twin is not None:
            return twin.forward_to_stage(x, stage)
        x = self.patch_embed(x)
        for module in self.network[: 2 * stage]:
            x = module(x)
        return x

    def forward_from_stage(
        self, x: torch.Tensor, stage: int,
        block_fn: Callable[[int, int, nn.Module, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Pooled pre-logit features ``[B, C]`` from the input ``x`` of stage ``stage``. ``block_fn(s, i,
        block, x)``, when given, runs block ``i`` of stage ``s`` in place of ``block(x)`` (prompting)."""
        twin = self._twin(keep_norm1=block_fn is not None)
        if twin is not None:
            return twin.forward_from_stage(x, stage, block_fn)
        for s in range(stage, len(self.layers)):
            for i, block in enumerate(self.network[2 * s]):
                x = block(x) if block_fn is None else block_fn(s, i, block, x)
            down = self.downsample(s)
            if down is not None:
                x = down(x)
        return self.forward_head(self.norm(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: CASViT) -> dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn``: an official CAS-ViT checkpoint onto ``model``'s state dict.

    Reads every layout :func:`casdap.load_checkpoint` reads (a bare state dict or one nested under
    ``model``/``state_dict``/``module``, ``module.`` prefixes) and drops the extra norms of the
    official dense-prediction variant that ``model`` lacks; timm then loads the result (strictly,
    unless the class count differs and the classifiers are dropped). timm's file reader picks the
    container before this runs, and takes an EMA copy (``model_ema``) first where the file has one;
    ``casdap.load_checkpoint`` takes ``model`` unless asked for ``key="model_ema"``.
    """
    sd, _ = extract_state_dict(state_dict, path="<pretrained state dict>")
    drop_dense_only(sd, model.state_dict())
    return sd


def _cfg(**kwargs) -> dict:
    """ImageNet-1k preprocessing of the Model Zoo weights, as this repository trains and evaluates."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,  # 224 / 256
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.0",
        "classifier": ("head", "dist_head"),
        "paper_ids": "arXiv:2408.03703",
        "origin_url": "https://github.com/Tianfang-Zhang/CAS-ViT",
        **kwargs,
    }


# Read by timm's ``register_model`` below: one ImageNet-1k config per variant. The weights are not
# downloadable; pass the file with ``pretrained_cfg_overlay=dict(file=...)``.
default_cfgs = generate_default_cfgs({f"{name}.in1k": _cfg() for name in VARIANTS})


def _create(name: str, pretrained: bool = False, **kwargs) -> CASViT:
    if pretrained:
        overlay = kwargs.get("pretrained_cfg_overlay")
        cfg = resolve_pretrained_cfg(name, pretrained_cfg=kwargs.get("pretrained_cfg"), pretrained_cfg_overlay=overlay)
        if not (cfg.file or cfg.url or cfg.hf_hub_id or cfg.state_dict):
            raise ValueError(
                f"{name}: weights cannot be fetched automatically; pass the Model Zoo file, "
                f"timm.create_model('{name}', pretrained=True, pretrained_cfg_overlay=dict(file='<path>.pth')), "
                f"or build the model and call casdap.load_checkpoint(model, '<path>.pth')"
            )
        if cfg.file and not Path(cfg.file).is_file():
            raise FileNotFoundError(f"{name}: pretrained weights file '{cfg.file}' does not exist")
    layers, dims = VARIANTS[name]
    return build_model_with_cfg(
        CASViT,
        name,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg={"feature_cls": "getter", "out_indices": (0, 1, 2, 3)},
        layers=layers,
        embed_dims=dims,
        **kwargs,
    )


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


@register_model
def rcvit_test(pretrained: bool = False, **kwargs) -> CASViT:
    return _create("rcvit_test", pretrained, **kwargs)

"""Model definitions: the CAS-ViT backbone family (and, built on it, prompted variants)."""

from __future__ import annotations

import difflib

import torch.nn as nn

from casdap.errors import CasdapError
from casdap.models.casvit import VARIANTS, AdditiveBlock, AdditiveTokenMixer, CASViT

__all__ = ["CASViT", "AdditiveBlock", "AdditiveTokenMixer", "create_model", "list_models"]


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` (all also registered with timm)."""
    return sorted(VARIANTS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a backbone by name, e.g. ``create_model("rcvit_xs", num_classes=100)``."""
    if name not in VARIANTS:
        close = difflib.get_close_matches(name, list_models(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise CasdapError(
            f"unknown model '{name}'. Valid models: {', '.join(list_models())}.{hint}"
        )
    from casdap.models import casvit

    return getattr(casvit, name)(**kwargs)

from casdap.models.build import build_backbone, build_dap_model  # noqa: E402
from casdap.models.dap import CASDAP, DAPOutput, restrict_logits  # noqa: E402

__all__ += ["CASDAP", "DAPOutput", "build_backbone", "build_dap_model", "restrict_logits"]

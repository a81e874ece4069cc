"""Deterministic pseudo-random weights in a given state-dict layout.

Official CAS-ViT weights cannot be downloaded everywhere, so parity with the official model is
checked on weights built by this fixed recipe from a manifest of ``(key, shape, dtype)`` entries
(see ``tests/fixtures/casvit_official/``). Any seed gives a valid, well-scaled network.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

ManifestEntry = tuple[str, Sequence[int], str]


def manifest_of(model: nn.Module) -> list[ManifestEntry]:
    """The ``(key, shape, dtype)`` list of a model's state dict, in ``state_dict()`` order."""
    return [
        (k, list(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    ]


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    return [tuple(e) for e in json.loads(Path(path).read_text())]


def synthetic_state_dict(entries: Iterable[ManifestEntry], seed: int = 0) -> OrderedDict:
    """Walk ``entries`` in order with one generator seeded by ``seed``:

    integer buffers are 0; ``running_var`` is ``0.5 + U(0,1)``; ``running_mean`` is
    ``0.1 N(0,1)``; 1-D ``.weight`` is ``1 + 0.1 N``; other 1-D is ``0.1 N``; the rest is
    ``0.5 N / sqrt(fan_in)``.
    """
    g = torch.Generator().manual_seed(seed)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape, dtype in entries:
        shape = list(shape)
        if dtype == "int64":
            sd[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            sd[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1 and key.endswith(".weight"):
            sd[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            sd[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            sd[key] = 0.5 * torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return sd

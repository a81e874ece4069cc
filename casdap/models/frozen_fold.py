"""Frozen backbones run BatchNorm-folded during continual training and evaluation.

Once a backbone is frozen (no parameter requires a gradient, eval mode) its BatchNorm layers are
fixed per-channel affine maps, yet they would still run as separate operations in every query and
prompted pass, forward and backward. :func:`fold_frozen_parts` gives every CAS-ViT of a model a
:class:`FoldedView`: a cached twin with those BatchNorms folded into the neighbouring convolutions
(:func:`casdap.deploy.fold_copy`), which ``forward_to_stage``, ``forward_from_stage`` and
``forward_pooled`` of the backbone run instead of its own modules while it stays frozen.

What makes this safe to switch on for a run:

* the backbone's own modules are left as they are, so ``state_dict()`` and checkpoints keep the
  unfolded layout exactly, and loading one works as before; the twin is never saved (it is not a
  submodule) and never copied (:func:`copy.deepcopy` of a backbone gives an empty view);
* the twin is rebuilt whenever the backbone's tensors change (a loaded checkpoint, a first-session
  adaptation that ended, a move to another device or dtype: :class:`FoldedView`); while any
  parameter requires a gradient, or the backbone is in train mode, the backbone runs its own
  modules;
* the twins run on channels-last memory (the image is converted as it enters the stem): measured
  faster for the frozen convolutions on a CPU, forward and backward (docs/performance.md);
* the blocks a prompted pass hands to its ``block_fn`` keep ``norm1``: the prompt injection reads
  its affine and the prompt tokens go through the block's ``qkv`` after it. Every other BatchNorm
  (stem, embeddings, local integration, spatial gates, ``norm2``) is folded; the final norm, which
  the pooled features are read after, stays.

Folding changes float rounding (measured: logits within 1e-5 of the unfolded path), so it is
opt-in (``MODEL.FOLD_FROZEN_BN``); results are per image and do not depend on the batch either way.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from casdap.models.casvit import CASViT

__all__ = ["FoldedView", "fold_frozen_parts", "folded_views", "unfold_frozen_parts"]


class _ToChannelsLast(nn.Module):
    """Puts the image into channels-last memory as it enters the folded twin's stem."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


class FoldedView:
    """The BatchNorm-folded twins of one frozen CAS-ViT, built on first use and kept until its tensors
    change: ``full`` (every BatchNorm folded but the final norm) for the stem, the query and every
    un-prompted pass, ``prompted`` (``norm1`` of each block kept) for a pass with a ``block_fn``.
    ``channels_last``: the twins run on channels-last memory.

    A change is seen through the version counter of every parameter and buffer (bumped by a loaded
    state dict, an optimizer step, any in-place change outside ``.data``) and the first parameter's
    identity, device and dtype (a move); the tensors are listed once per build, as walking the module
    tree at every call would cost more than the folding saves."""

    def __init__(self, channels_last: bool = False) -> None:
        self.channels_last = bool(channels_last)
        self._twins: dict[bool, CASViT] = {}
        self._params: list[torch.Tensor] = []
        self._tensors: list[torch.Tensor] = []
        self._key: tuple | None = None
        self.builds = 0  # how often a twin was (re)built: tests and diagnostics read it

    def __deepcopy__(self, memo: dict) -> FoldedView:
        return FoldedView(self.channels_last)  # a copied backbone folds its own tensors when first used

    def __getstate__(self) -> dict[str, Any]:
        return {"channels_last": self.channels_last}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["channels_last"])

    def _current(self, backbone: CASViT) -> bool:
        """Whether the cached twins fold the backbone's current tensors (False also drops them)."""
        first = next(backbone.parameters(), None)
        fresh = (self._key is not None and bool(self._params) and first is self._params[0]
                 and first.device == self._key[0] and first.dtype == self._key[1]
                 and tuple(t._version for t in self._tensors) == self._key[2])
        if not fresh:
            self._twins, self._key = {}, None
        return fresh

    def twin(self, backbone: CASViT, keep_norm1: bool = False) -> CASViT | None:
        """The folded twin to run in place of ``backbone`` (``keep_norm1`` for a prompted pass), or None
        while the backbone is not frozen (train mode, or a parameter that requires a gradient)."""
        if backbone.training or any(p.requires_grad for p in (self._params or backbone.parameters())):
            self._twins, self._key = {}, None
            return None
        if not self._current(backbone):
            self._params = list(backbone.parameters())
            self._tensors = [*self._params, *backbone.buffers()]
            if any(p.requires_grad for p in self._params):
                self._key = None
                return None
            first = self._params[0]
            self._key = (first.device, first.dtype, tuple(t._version for t in self._tensors))
        if keep_norm1 not in self._twins:
            self._twins[keep_norm1] = self._build(backbone, keep_norm1)
        return self._twins[keep_norm1]

    @torch.no_grad()
    def _build(self, backbone: CASViT, keep_norm1: bool) -> CASViT:
        from casdap.deploy import fold_copy

        twin = fold_copy(backbone, fold_norm1=not keep_norm1, fold_head=False)
        if self.channels_last:
            twin = twin.to(memory_format=torch.channels_last)
            twin.patch_embed.insert(0, _ToChannelsLast())
        self.builds += 1
        return twin


def fold_frozen_parts(model: nn.Module, channels_last: bool = True) -> list[CASViT]:
    """Give every CAS-ViT inside ``model`` (the model itself, CAS-DAP's backbone and query backbone, a
    prompt pool's, a baseline's frozen feature extractor) a :class:`FoldedView`; returns them. A
    backbone that is trained (a parameter requires a gradient, or train mode) keeps running its own
    modules until it is frozen; its state dict is unchanged either way. ``channels_last`` (measured
    to pay on a CPU, docs/performance.md): the twins run on channels-last memory."""
    backbones = [m for m in model.modules() if isinstance(m, CASViT)]
    for backbone in backbones:
        backbone.runtime_fold = FoldedView(channels_last)
    return backbones


def unfold_frozen_parts(model: nn.Module) -> None:
    """Undo :func:`fold_frozen_parts`: every CAS-ViT inside ``model`` runs its own modules again."""
    for m in model.modules():
        if isinstance(m, CASViT):
            m.runtime_fold = None


def folded_views(model: nn.Module) -> list[FoldedView]:
    """The views :func:`fold_frozen_parts` gave the CAS-ViTs inside ``model``."""
    return [m.runtime_fold for m in model.modules() if isinstance(m, CASViT) and m.runtime_fold is not None]

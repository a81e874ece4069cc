"""The model side of a first-session adaptation (APER's): a backbone and a linear head trained on the
first task, then frozen for good. CAS-DAP's adapted query, ``aper`` and every classifier run with
``BASELINES.FIRST_SESSION`` mix it in; the training itself is
:class:`casdap.continual.first_session.FirstSessionTraining`.

A model that mixes in :class:`FirstSessionModel` holds an ``adapted`` buffer (saved with it, so a
resumed run neither adapts twice nor forgets that it did), sets ``_adapting = False`` in its
``__init__`` and names its two trained parts in :meth:`~FirstSessionModel.adaptation_modules`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from casdap.errors import CasdapError

__all__ = ["FirstSessionModel"]


class FirstSessionModel:
    """Start, finish or cancel the adaptation of :meth:`adaptation_modules` (put before ``nn.Module``)."""

    _adapting: bool = False
    adapted: torch.Tensor

    def adaptation_modules(self) -> tuple[nn.Module, nn.Module]:
        """(backbone, linear head): what the first session trains; the backbone's pooled features
        through the head are the adaptation's logits."""
        raise NotImplementedError

    @property
    def needs_adaptation(self) -> bool:
        """The model is to be adapted and has not been yet (one read of a buffer)."""
        return not bool(self.adapted)

    def start_adaptation(self) -> None:
        """The backbone and its linear head train (in train mode where the model trains) until
        :meth:`finish_adaptation` or :meth:`cancel_adaptation`."""
        if not self.needs_adaptation:
            raise CasdapError("this model is not to be adapted (its query is frozen, or it was adapted already)")
        self._adapting = True
        for p in self._adaptation_parameters():
            p.requires_grad_(True)
        self.train(self.training)

    def finish_adaptation(self) -> None:
        """Freeze the adapted backbone and its head for good (``adapted`` is saved with the model)."""
        self.adapted.fill_(True)
        self._stop_adaptation()

    def cancel_adaptation(self) -> None:
        """Freeze the backbone again after an adaptation that did not complete (an error, Ctrl-C): the
        model is not marked adapted, so the next first-task training adapts it anew."""
        self._stop_adaptation()

    def _stop_adaptation(self) -> None:
        self._adapting = False
        for p in self._adaptation_parameters():
            p.requires_grad_(False)
            p.grad = None
        self.train(self.training)

    def _adaptation_parameters(self) -> list[nn.Parameter]:
        backbone, head = self.adaptation_modules()
        return [*backbone.parameters(), *head.parameters()]

    def adaptation_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The adapting backbone's pooled features through its linear head (first-task training)."""
        backbone, head = self.adaptation_modules()
        return head(backbone.forward_pooled(x))

"""The model side of a first-session adaptation (APER's): a backbone and a linear head trained on the
first task, then frozen for good. CAS-DAP's adapted query mixes in :class:`FirstSessionModel`;
``aper`` and every classifier run with ``BASELINES.FIRST_SESSION`` mix in :class:`FirstSessionMixin`
(:func:`with_first_session`). The training itself is :mod:`casdap.continual.first_session`.

A model that mixes in :class:`FirstSessionModel` holds an ``adapted`` buffer (saved with it, so a
resumed run neither adapts twice nor forgets that it did), sets ``_adapting = False`` in its
``__init__`` and names its two trained parts in :meth:`~FirstSessionModel.adaptation_modules`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from casdap.errors import CasdapError

__all__ = ["FirstSessionMixin", "FirstSessionModel", "with_first_session"]


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


class FirstSessionMixin(FirstSessionModel):
    """Model mixin: the backbone (``self.backbone``) and a linear ``head`` over all classes are trained on
    the first task, then frozen for good (APER's first-session adaptation,
    :class:`~casdap.models.first_session.FirstSessionModel`; ``aper`` and every classifier run with
    ``BASELINES.FIRST_SESSION``).

    ``adapted`` is a buffer, so checkpoints and resuming keep it. Until it is set, the model's output is
    the head's logits of the backbone's pooled features; after, the classifier's own ``forward``. Put
    the mixin before the classifier in the bases; its ``__init__`` calls :meth:`_init_adaptation`.
    """

    def _init_adaptation(self, num_features: int, num_classes: int) -> None:
        self.head = nn.Linear(num_features, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("adapted", torch.zeros((), dtype=torch.bool))
        self._adapting = False

    def adaptation_modules(self) -> tuple[nn.Module, nn.Module]:
        return self.backbone, self.head

    @property
    def is_adapted(self) -> bool:
        return bool(self.adapted)

    def train(self, mode: bool = True):
        super().train(mode)  # the classifier's own: its frozen parts in eval mode
        self.backbone.train(mode and not self.is_adapted)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_adapted:  # first task: the backbone and its linear head are being trained
            return self.adaptation_logits(x)
        return super().forward(x)


def with_first_session(classifier: type[nn.Module]) -> type[nn.Module]:
    """``classifier`` (built as ``classifier(backbone, num_classes, ...)``) on a backbone that is first
    adapted on the first task (:class:`FirstSessionMixin`); the classifier's statistics start after."""

    class FirstSession(FirstSessionMixin, classifier):
        def __init__(self, backbone: nn.Module, num_classes: int, *args, **kwargs) -> None:
            super().__init__(backbone, num_classes, *args, **kwargs)
            self.backbone.requires_grad_(True)
            self._init_adaptation(backbone.num_features, num_classes)

    FirstSession.__name__ = FirstSession.__qualname__ = f"FirstSession{classifier.__name__}"
    return FirstSession

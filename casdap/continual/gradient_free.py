"""Strategies that take no gradient step: one pass over each experience adds up statistics of frozen
features (the shared constructor of the prototype and discriminant methods), and nearest class mean."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from casdap.continual.strategy_mixin import CasdapStrategyMixin
from casdap.models.class_statistics import sum_over_ranks

__all__ = ["GradientFreeStrategy", "NCMStrategy", "add_class_means"]


class GradientFreeStrategy(CasdapStrategyMixin, SupervisedTemplate):
    """A strategy whose "training" is one pass that adds up statistics of frozen features (no
    gradient step): the shared constructor of the prototype methods (ncm, ranpac, and aper after
    its first task, which trains with the optimizer it is given)."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        train_mb_size: int = 128,
        train_epochs: int = 1,
        eval_mb_size: int | None = None,
        device: str | torch.device = "cpu",
        plugins: Sequence | None = None,
        evaluator: EvaluationPlugin | None = None,
        eval_every: int = -1,
    ) -> None:
        kwargs = {} if evaluator is None else {"evaluator": evaluator}
        # Avalanche expects an optimizer; nothing is optimised (every parameter is frozen).
        optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.0)
        super().__init__(
            model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), train_mb_size=train_mb_size,
            train_epochs=1, eval_mb_size=eval_mb_size or train_mb_size, device=device,
            plugins=list(plugins or []), eval_every=eval_every, **kwargs,
        )

    def statistics_pass(self, **kwargs) -> Iterator[None]:
        """One pass over the training dataloader that yields at every batch (``mb_x``, ``mb_y``
        set) between Avalanche's iteration hooks; the loss is zero, no gradient step is taken."""
        for batch in self.dataloader:
            self.mbatch = batch
            if self._stop_training:
                break
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            yield
            self.loss = self._make_empty_loss()
            self._after_training_iteration(**kwargs)


class NCMStrategy(GradientFreeStrategy):
    """Nearest class mean on frozen features: each experience adds its classes' prototypes.

    No gradient step happens; the "epoch" is one pass that accumulates class sums. Under
    ``torchrun`` the sums are added over ranks. The training ``mb_output`` of each batch is the
    logits of the classifier being built (the prototypes so far, this batch included, on this
    rank), so the training accuracy metric scores the classifier, not raw features; the training
    loss is zero (nothing is optimised).
    """

    def training_epoch(self, **kwargs):
        add_class_means(self, **kwargs)


@torch.no_grad()
def add_class_means(strategy: GradientFreeStrategy, **kwargs) -> None:
    """One pass over the strategy's dataloader adding each class's feature sum and count to the
    model's ``class_sums`` / ``class_counts`` (summed over ``torchrun`` ranks). Each batch's
    ``mb_output`` is the logits of the prototypes so far, this batch included; the loss is zero."""
    model = strategy.model
    sums = torch.zeros_like(model.class_sums)
    counts = torch.zeros_like(model.class_counts)
    for _ in strategy.statistics_pass(**kwargs):
        feats = model.features(strategy.mb_x)
        sums.index_add_(0, strategy.mb_y, feats)
        counts.index_add_(0, strategy.mb_y, torch.ones_like(strategy.mb_y, dtype=counts.dtype))
        strategy.mb_output = model.logits_from(feats, model.class_sums + sums, model.class_counts + counts)
    sum_over_ranks([sums, counts])
    model.class_sums += sums
    model.class_counts += counts

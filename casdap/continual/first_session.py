"""The training side of a first-session adaptation (APER's), one component for every method that has
one: CAS-DAP's adapted query (``MODEL.DAP.QUERY adapted``), ``aper`` and the classifiers run with
``BASELINES.FIRST_SESSION``. The model side is :class:`casdap.models.first_session.FirstSessionModel`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch.distributed as dist
from avalanche.core import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate

__all__ = ["FirstSessionAdaptation", "FirstSessionTraining", "with_first_session_strategy"]


class FirstSessionTraining:
    """Strategy mixin: :meth:`adapt_first_session` runs the adaptation's epochs; ``adapting`` says
    whether they are running (the strategy's forward and loss read it).

    An adaptation cut short (an error, Ctrl-C) freezes the model's backbone again without marking it
    adapted, so the next training of the first task adapts it anew. One that completes is frozen for
    good; under ``torchrun`` rank 0's BatchNorm statistics are then broadcast, so every rank holds the
    same backbone.
    """

    adapting: bool = False

    def adapt_first_session(self, train_epochs: Callable[[], None]) -> None:
        """``train_epochs()`` (the template's gradient epochs over the experience) with the model's
        backbone and linear head as the trained parts, then freeze them for good."""
        model = self.model
        model.start_adaptation()
        self.adapting = True
        try:
            train_epochs()
        except BaseException:
            model.cancel_adaptation()
            raise
        finally:
            self.adapting = False
        model.finish_adaptation()
        if dist.is_available() and dist.is_initialized():
            for b in model.adaptation_modules()[0].buffers():
                dist.broadcast(b, src=0)

    def keep_optimizer_groups(self, named_parameters: dict, reset_optimizer_state: bool = False) -> None:
        """Avalanche's ``make_optimizer`` in its place: the runner's parameter groups are kept as they are
        (no parameter is added while a run trains). Avalanche finds a parameter's group by its name and
        puts every parameter it does not know into one group; a model with a second backbone (a query
        copy, a frozen pretrained one) would get that one's parameters optimised too."""
        if reset_optimizer_state:
            self.optimizer.state = defaultdict(dict)
        self.optimized_param_id = dict(named_parameters)


class _FirstSessionCallbacks(SupervisedPlugin):
    """:class:`FirstSessionAdaptation`'s own callback, first among its strategy's plugins: the
    experience's epochs are set at the first callback of its set-up."""

    def before_train_dataset_adaptation(self, strategy, *args, **kwargs):
        strategy.start_task()


class FirstSessionAdaptation(FirstSessionTraining):
    """Strategy mixin: APER's first session before a statistics-only classifier.

    First experience: ``train_epochs`` epochs of the template's gradient training of the model's
    backbone and head (the optimizer's parameters; :class:`~casdap.continual.first_session.
    FirstSessionTraining`), then they are frozen and one more pass, the classifier's own statistics
    pass (:meth:`_accumulate`), follows. Every later experience is that pass only (no gradient step).
    Put the mixin before the statistics strategy in the bases; by default :meth:`_accumulate` is that
    strategy's ``training_epoch`` with the model in eval mode.
    """

    def __init__(self, *, train_epochs: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.adapt_epochs = int(train_epochs)
        self.plugins.insert(0, _FirstSessionCallbacks())  # first: before every other plugin's callbacks

    def make_optimizer(self, reset_optimizer_state: bool = False, **kwargs):
        """The runner's groups (the adapted backbone, the head) are kept: Avalanche's default would put
        every model parameter, a frozen pretrained backbone's too, into one of them."""
        named = {n: p for n, p in self.model.named_parameters() if not n.startswith("pretrained.")}
        self.keep_optimizer_groups(named, reset_optimizer_state)

    def start_task(self) -> None:
        """Before the experience is set up (:class:`_FirstSessionCallbacks`): its epochs, the adaptation's
        or the one statistics pass; an adapted model stays frozen (also after resuming)."""
        if self.model.is_adapted:
            self.model.finish_adaptation()
        self.train_epochs = 1 if self.model.is_adapted else self.adapt_epochs

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        if not self.model.needs_adaptation:
            return super()._train_exp(experience, eval_streams, **kwargs)
        self.adapt_first_session(lambda: super(FirstSessionAdaptation, self)._train_exp(
            experience, eval_streams, **kwargs))
        self._accumulate(**kwargs)

    def training_epoch(self, **kwargs):
        if self.adapting:
            return SupervisedTemplate.training_epoch(self, **kwargs)  # the gradient epoch
        self._accumulate(**kwargs)

    def _accumulate(self, **kwargs):
        self.model.eval()
        super().training_epoch(**kwargs)


def with_first_session_strategy(strategy: type) -> type:
    """``strategy`` (a statistics-only one) after APER's first session (:class:`FirstSessionAdaptation`)."""
    cls = type(f"FirstSession{strategy.__name__}", (FirstSessionAdaptation, strategy), {})
    cls.__qualname__ = cls.__name__
    return cls

"""The training side of a first-session adaptation (APER's), one component for every method that has
one: CAS-DAP's adapted query (``MODEL.DAP.QUERY adapted``), ``aper`` and the classifiers run with
``BASELINES.FIRST_SESSION``. The model side is :class:`casdap.models.first_session.FirstSessionModel`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch.distributed as dist

__all__ = ["FirstSessionTraining"]


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

"""The continual-learning methods (``MODEL.TRANSFER_TYPE``): one module each, found by name.

This table is all that is read to know the names (``casdap.config.validate`` checks a config
against it before torch is imported); a method's module is imported only when a run uses it.
Each module defines ``METHOD``, an instance of :class:`casdap.continual.methods.base.Method`,
which gives the runner everything that differs between methods: the model, the optimizer's
parameter groups, the Avalanche strategy (and the plugins only it needs), the lines
``final_results.txt`` adds, the method's own ``metrics.json`` fields and evaluation metrics.

Adding a method ``mymethod``:

1. ``casdap/continual/methods/mymethod.py``::

       from casdap.continual.methods.base import Method, ResumableNaive

       class MyMethod(Method):
           name = "mymethod"

           def build_strategy(self, cfg, model, optimizer, plugins, **common):
               return ResumableNaive(model=model, optimizer=optimizer, criterion=self.criterion(),
                                     plugins=plugins, **common)

       METHOD = MyMethod()

   The defaults of :class:`~casdap.continual.methods.base.Method` give a pretrained backbone with
   one linear head, the backbone at ``BASELINES.BACKBONE_LR_SCALE`` of the head's rate, and
   gradient training with the shared schedule, gradient sync and clipping plugins.
2. One line in :data:`METHOD_MODULES` below.

A strategy keeps its own state for resuming (``state_dict`` / ``load_state_dict`` of
:class:`casdap.continual.strategy_mixin.CasdapStrategyMixin`); the run directory, checkpoints,
resume and ``casdap compare`` then work with no other change.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from casdap.errors import CasdapError

if TYPE_CHECKING:
    from casdap.continual.methods.base import Method

__all__ = ["FIRST_SESSION_METHODS", "METHOD_MODULES", "METHOD_NAMES", "PROMPT_METHOD_SELECTIONS", "get_method"]

# name (MODEL.TRANSFER_TYPE, lower case) -> the module that defines its METHOD
METHOD_MODULES: dict[str, str] = {
    name: f"casdap.continual.methods.{name}"
    for name in ("dap", "finetune", "linear", "ewc", "lwf", "replay", "ncm", "ranpac", "slda", "fecam", "aper",
                 "joint", "l2p", "dualprompt", "coda_prompt")
}
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_MODULES)
# the methods that accept BASELINES.FIRST_SESSION (a frozen-feature classifier on a backbone adapted first)
FIRST_SESSION_METHODS: tuple[str, ...] = ("ncm", "ranpac", "slda", "fecam")
# the learned-prompt methods (MODEL.PROMPT) and the prompt selections each accepts (MODEL.DAP.SELECTION)
PROMPT_METHOD_SELECTIONS: dict[str, tuple[str, ...]] = {
    "l2p": ("per_image", "batch_majority"),
    "dualprompt": ("per_image", "batch_majority", "oracle"),
    "coda_prompt": ("per_image",),
}


def get_method(name: str) -> Method:
    """The method called ``name`` (any case); its module is imported here, on first use."""
    key = str(name).lower()
    if key not in METHOD_MODULES:
        raise CasdapError(f"unknown method MODEL.TRANSFER_TYPE '{name}' (use one of {', '.join(METHOD_NAMES)})")
    return import_module(METHOD_MODULES[key]).METHOD

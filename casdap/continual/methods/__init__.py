"""The continual-learning methods (``MODEL.TRANSFER_TYPE``): one module each, found by name, with the
config keys each reads.

This table is all that is read to know the names and what each method reads (``casdap cl`` checks
a config against it before torch is imported); a method's module is imported only when a run uses
it. Each module defines ``METHOD``, an instance of :class:`casdap.continual.methods.base.Method`,
which gives the runner everything that differs between methods: the model, the optimizer's
parameter groups, the Avalanche strategy (and the plugins only it needs), the lines
``final_results.txt`` adds, the method's own ``metrics.json`` fields and evaluation metrics.

Each entry of :data:`METHODS` declares the keys its method reads beyond :data:`SHARED_KEYS` (the
stream, protocol, solver and backbone settings every run reads), and its own torch-free checks
(:mod:`casdap.continual.methods.checks`). A setting the method does not read is refused on the
command line and named in a notice (and not applied) when a config file sets it
(:mod:`casdap.config.schema`); the run's saved ``config.yaml`` states only what it read. A test
records every key each method's code reads and holds it to this table.

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
2. One entry in :data:`METHODS` below: ``"mymethod": MethodSchema(reads=(BACKBONE_LR,))``.

A strategy keeps its own state for resuming (``state_dict`` / ``load_state_dict`` of
:class:`casdap.continual.strategy_mixin.CasdapStrategyMixin`); the run directory, checkpoints,
resume and ``casdap compare`` then work with no other change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

from casdap.config import COMPAT_KEYS
from casdap.config.schema import MethodKeys, section_keys
from casdap.continual.methods import checks
from casdap.errors import CasdapError

if TYPE_CHECKING:
    from yacs.config import CfgNode

    from casdap.continual.methods.base import Method

__all__ = ["FIRST_SESSION_METHODS", "METHODS", "METHOD_NAMES", "PROMPT_METHOD_SELECTIONS", "SHARED_KEYS",
           "MethodSchema", "check_config", "get_method", "method_keys", "prompt_source_of"]


def _settings(*keys: str) -> tuple[str, ...]:
    return tuple(k for k in keys if k not in COMPAT_KEYS)


# Read by every run (casdap.continual.runner, benchmarks, models.build.build_backbone): the stream, the
# continual protocol, the solver, the backbone and where the run goes.
SHARED_KEYS: frozenset[str] = frozenset(_settings(
    *section_keys(""), *section_keys("DATA"), *section_keys("CONTINUAL"), *section_keys("SOLVER"),
    "MODEL.TRANSFER_TYPE", "MODEL.BACKBONE", "MODEL.WEIGHT_PATH", "MODEL.MODEL_ROOT", "MODEL.RANDOM_INIT",
    "MODEL.SAVE_CKPT", "MODEL.FOLD_FROZEN_BN",
))


@dataclass(frozen=True)
class MethodSchema:
    """What one method reads beyond :data:`SHARED_KEYS`, its own checks, and its module (default
    ``casdap.continual.methods.<name>``)."""

    reads: tuple[str, ...] = ()
    check: Callable[[CfgNode], None] | None = None
    module: str = ""
    # the prompt pool of casdap.dap_registry.POOL_SOURCES the method runs in the one prompted CAS-ViT
    # (models.prompt_pools.PromptPoolModel): its MODEL.TRANSFER_TYPE is the user-facing name of that
    # source, which MODEL.DAP.PROMPT_SOURCE (a key of dap alone) refuses
    prompt_source: str = ""


BACKBONE_LR = "BASELINES.BACKBONE_LR_SCALE"  # a backbone trained at a share of the base rate
# a frozen-feature classifier, optionally on a backbone adapted on the first task
FIRST_SESSION = ("BASELINES.FIRST_SESSION", BACKBONE_LR)
# a prompt pool's prompted blocks and prompt selection (models.prompt_pools), and the shared pipeline's
# query, prediction over every seen class and its fusion with the query's class Gaussians
# (continual.prompt_methods, continual.fusion); MODEL.DAP.PROMPT_SOURCE is not read: the method's
# schema names its source (prompt_source)
PROMPTED = ("MODEL.DAP.STAGES", "MODEL.DAP.INJECTION", "MODEL.DAP.PROMPT_LAST_BLOCK", "MODEL.DAP.SELECTION",
            "MODEL.PROMPT.LENGTH", "MODEL.DAP.PREDICTION", "MODEL.DAP.ALL_CLASS_HEAD", "MODEL.DAP.SHRINKAGE",
            "MODEL.DAP.QUERY", "MODEL.DAP.PROMPT_BACKBONE", "MODEL.DAP.FUSION_WEIGHT", BACKBONE_LR)

# name (MODEL.TRANSFER_TYPE, lower case) -> what it reads
METHODS: dict[str, MethodSchema] = {
    "dap": MethodSchema(_settings(*section_keys("MODEL.DAP"), BACKBONE_LR), checks.check_dap),
    "finetune": MethodSchema((BACKBONE_LR,)),
    "linear": MethodSchema(),
    "ewc": MethodSchema((BACKBONE_LR, "BASELINES.EWC_LAMBDA")),
    "lwf": MethodSchema((BACKBONE_LR, "BASELINES.LWF_ALPHA", "BASELINES.LWF_TEMPERATURE")),
    "replay": MethodSchema((BACKBONE_LR, "BASELINES.REPLAY_MEM_SIZE"), checks.check_replay),
    "ncm": MethodSchema(FIRST_SESSION, checks.check_first_session),
    "ranpac": MethodSchema((*FIRST_SESSION, "BASELINES.RANPAC_PROJ_DIM", "BASELINES.RANPAC_RIDGE"),
                           checks.check_first_session),
    "slda": MethodSchema((*FIRST_SESSION, "BASELINES.SLDA_SHRINKAGE"), checks.check_slda),
    "fecam": MethodSchema((*FIRST_SESSION, "BASELINES.FECAM_SHRINKAGE"), checks.check_fecam),
    "aper": MethodSchema((BACKBONE_LR,)),
    "joint": MethodSchema((BACKBONE_LR,)),
    "l2p": MethodSchema((*PROMPTED, "MODEL.PROMPT.POOL_SIZE", "MODEL.PROMPT.TOP_N", "MODEL.PROMPT.PULL_LAMBDA"),
                        checks.check_l2p, prompt_source="l2p"),
    "dualprompt": MethodSchema((*PROMPTED, "MODEL.PROMPT.G_LENGTH", "MODEL.PROMPT.G_BLOCKS",
                                "MODEL.PROMPT.PULL_LAMBDA", "MODEL.DAP.TASK_INFERENCE"), checks.check_dualprompt,
                               prompt_source="dualprompt"),
    "coda_prompt": MethodSchema((*PROMPTED, "MODEL.PROMPT.COMPONENTS", "MODEL.PROMPT.ORTHO_LAMBDA"),
                                checks.check_coda_prompt, prompt_source="coda_prompt"),
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
# the methods that accept BASELINES.FIRST_SESSION (a frozen-feature classifier on a backbone adapted first)
FIRST_SESSION_METHODS: tuple[str, ...] = tuple(n for n, s in METHODS.items() if "BASELINES.FIRST_SESSION" in s.reads)
# the learned-prompt methods (MODEL.PROMPT) and the prompt selections each accepts (MODEL.DAP.SELECTION)
PROMPT_METHOD_SELECTIONS = checks.PROMPT_METHOD_SELECTIONS


def _schema(name: str) -> MethodSchema:
    key = str(name).lower()
    if key not in METHODS:
        raise CasdapError(f"unknown method MODEL.TRANSFER_TYPE '{name}' (use one of {', '.join(METHODS)})")
    return METHODS[key]


def method_keys(name: str) -> MethodKeys:
    """The keys a run of method ``name`` reads (every run's and its own); an unknown name is one error."""
    own = frozenset(_schema(name).reads)
    return MethodKeys(str(name).lower(), SHARED_KEYS | own, own)


def check_config(cfg: CfgNode) -> MethodKeys:
    """Every check a config can fail without data or a model, torch-free: the settings every run
    reads (:func:`casdap.config.validate.validate`), then the method's own. Returns what it reads."""
    from casdap.config.validate import validate

    schema, keys = _schema(cfg.MODEL.TRANSFER_TYPE), method_keys(cfg.MODEL.TRANSFER_TYPE)
    validate(cfg)
    if schema.check is not None:
        schema.check(cfg)
    return keys


def prompt_source_of(name: str) -> str:
    """The prompt pool that method ``name`` runs (``l2p`` -> ``l2p``); an error for a method that runs none."""
    source = _schema(name).prompt_source
    if not source:
        pools = ", ".join(n for n, s in METHODS.items() if s.prompt_source)
        raise CasdapError(f"method {name} runs no prompt pool (these do: {pools})")
    return source


def get_method(name: str) -> Method:
    """The method called ``name`` (any case); its module is imported here, on first use."""
    key = str(name).lower()
    module = _schema(key).module or f"casdap.continual.methods.{key}"
    return import_module(module).METHOD

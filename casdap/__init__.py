"""CAS-DAP: domain-adaptive prompts on the CAS-ViT backbone, for class-incremental learning.

The names below load torch on first use, so the command line answers ``--help`` and input errors
without importing it.
"""

from casdap.errors import CasdapError
from casdap.lazy import lazy_getattr

__version__ = "0.1.0"

__all__ = ["CasdapError", "create_model", "list_models", "load_checkpoint", "save_checkpoint"]

_LAZY = {
    "create_model": "casdap.models",
    "list_models": "casdap.models",
    "load_checkpoint": "casdap.checkpoint",
    "save_checkpoint": "casdap.checkpoint",
}


__getattr__ = lazy_getattr("casdap", _LAZY)

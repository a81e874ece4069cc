"""CAS-DAP: domain-adaptive prompts on the CAS-ViT backbone, for class-incremental learning."""

from casdap.checkpoint import load_checkpoint, save_checkpoint
from casdap.errors import CasdapError
from casdap.models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["CasdapError", "create_model", "list_models", "load_checkpoint", "save_checkpoint"]

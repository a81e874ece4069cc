"""The models a benchmark times: the backbone (random or from a checkpoint), its inference forms,
CAS-DAP on it, and a reference implementation imported from a model file and given our weights."""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
import torch.nn as nn

from casdap.bench.config import AMP_PATHS, BenchConfig, reference_variant
from casdap.errors import CasdapError

__all__ = ["ChannelsLast", "build_dap", "build_model", "import_model_file", "infer_variants", "load_reference",
           "reference_variants"]


def build_model(cfg: BenchConfig, name: str, device: torch.device) -> nn.Module:
    """Backbone ``name`` with ``cfg.checkpoint``'s weights, or seeded random weights with
    non-trivial BatchNorm statistics (so folding is exercised as it is on trained weights)."""
    from casdap import create_model, load_checkpoint

    torch.manual_seed(cfg.seed)
    model = create_model(name, num_classes=cfg.num_classes)
    if cfg.checkpoint:
        load_checkpoint(model, cfg.checkpoint)
    else:
        gen = torch.Generator().manual_seed(cfg.seed)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.to(device)


class ChannelsLast(nn.Module):
    """``model`` in channels-last memory format, with ``dtype`` run under ``torch.autocast`` in that
    dtype: the mixed-precision paths (``amp_bf16``, ``amp_fp16``). Outputs come back in fp32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)
        self.dtype = dtype

    def forward(self, x: torch.Tensor):
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.model(x)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def reference_variants(cfg: BenchConfig, reference: nn.Module) -> dict[str, nn.Module]:
    """The reference model in the inference forms of ``cfg.reference_paths``, by variant name."""
    variants: dict[str, nn.Module] = {}
    for path in cfg.reference_paths:
        model = copy.deepcopy(reference).eval()
        if path != "eager":
            model = ChannelsLast(model, getattr(torch, AMP_PATHS[path]) if path in AMP_PATHS else None)
        variants[reference_variant(path)] = model
    return variants


def infer_variants(cfg: BenchConfig, model: nn.Module) -> dict[str, nn.Module]:
    """The inference forms named in ``cfg.infer_paths`` (see :data:`casdap.bench.config.INFER_PATHS`)."""
    from casdap.deploy import optimize_for_inference

    variants: dict[str, nn.Module] = {}
    for path in cfg.infer_paths:
        if path == "eager":
            variants[path] = copy.deepcopy(model).eval()
        elif path == "folded":
            variants[path] = optimize_for_inference(model, channels_last=False)
        elif path == "folded_cl":
            variants[path] = optimize_for_inference(model, channels_last=True)
        elif path == "fused_cl":
            variants[path] = optimize_for_inference(model, channels_last=True, fuse=True)
        elif path == "compiled":
            variants[path] = optimize_for_inference(model, channels_last=True, compile=True)
        elif path in AMP_PATHS:
            variants[path] = ChannelsLast(copy.deepcopy(model).eval(), getattr(torch, AMP_PATHS[path]))
    return variants


def build_dap(model: nn.Module, num_classes: int) -> nn.Module:
    """CAS-DAP with the CIFAR-100 config's settings (configs/dap/cifar.yaml: prompted stages 2 and
    3, kv injection, 10 tokens, pool of 10 keys) on a frozen copy of ``model``; initial prompt
    weights cost the same as trained ones."""
    from casdap.config import load_config, shipped_config
    from casdap.models.build import dap_settings
    from casdap.models.dap import CASDAP

    settings = dap_settings(load_config(shipped_config("cifar")))
    return CASDAP(copy.deepcopy(model), num_classes=num_classes, **settings).eval()


# -- a model file from elsewhere ----------------------------------------------------------------


@contextmanager
def _timm_entries_kept() -> Iterator[None]:
    """Model files register their builders with timm (``@register_model``), which replaces any
    entry of the same name, such as this package's ``rcvit_*``. Put back every entry the block
    replaced, through timm's own ``register_model`` (which also restores its pretrained configs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import timm.models
    before: dict[str, Callable] = {name: timm.models.model_entrypoint(name) for name in timm.models.list_models()}
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm warns on every overwritten name
            for name, fn in before.items():
                if timm.models.is_model(name) and timm.models.model_entrypoint(name) is not fn:
                    timm.models.register_model(fn)


def import_model_file(path: str | os.PathLike) -> ModuleType:
    """Import a Python model file by path as a module of its own, leaving timm's existing entries
    as they were; any failure is one :class:`CasdapError` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise CasdapError(f"reference model file '{p}' does not exist")
    module_name = f"casdap_reference_{p.stem}_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, p)
    if spec is None or spec.loader is None:
        raise CasdapError(f"reference model file '{p}' cannot be imported (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # registries (timm's among them) look the module up by name
    try:
        with _timm_entries_kept(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        sys.modules.pop(module_name, None)
        missing = (e.name or str(e)).split(".")[0]
        hint = (
            f"install it: pip install {missing}"
            if missing != "timm"
            else f"it needs '{e.name}', which this timm version does not provide; use timm 1.x"
        )
        raise CasdapError(f"reference model file '{p}' imports '{e.name}', which is not available: {hint}") from None
    except ImportError as e:
        sys.modules.pop(module_name, None)
        raise CasdapError(f"reference model file '{p}' failed to import: {e}") from None
    except Exception as e:
        sys.modules.pop(module_name, None)
        raise CasdapError(f"reference model file '{p}' failed to import: {type(e).__name__}: {e}") from None
    return module


def load_reference(path: str | os.PathLike, name: str, donor: nn.Module, num_classes: int = 1000) -> nn.Module:
    """Build model ``name`` from a reference model file and give it ``donor``'s weights.

    The file is imported from its path (for example the official CAS-ViT ``rcvit.py``); its state
    dict layout must equal ours, which is checked with ``strict=True``.
    """
    p = Path(path)
    module = import_model_file(p)
    builder = getattr(module, name, None)
    if not callable(builder):
        found = sorted(k for k in vars(module) if k.startswith("rcvit"))
        raise CasdapError(
            f"reference model file '{p}' defines no '{name}'" + (f" (it has: {', '.join(found)})" if found else "")
        )
    distillation = getattr(donor, "dist_head", None) is not None
    try:
        model = builder(num_classes=num_classes, distillation=distillation)
    except TypeError as e:
        raise CasdapError(f"reference '{name}' in '{p}' does not accept num_classes/distillation: {e}") from None
    try:
        model.load_state_dict(donor.state_dict(), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CasdapError(f"reference '{name}' in '{p}' has a different parameter layout from ours: {first}") from None
    return model

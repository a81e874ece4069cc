"""Loading run settings: defaults, ``_BASE_``-inherited YAML files, ``KEY VALUE`` overrides.

Built on yacs (detectron2's format). Every problem is one :class:`CasdapError` that names the
key and, for a misspelt one, the closest valid key.
"""

from __future__ import annotations

import ast
import difflib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode

from casdap.config.defaults import get_defaults
from casdap.config.schema import MethodKeys, drop_unread, flat_settings, refuse_unread
from casdap.errors import CasdapError, yaml_problem

__all__ = ["CfgNode", "load_config", "config_file_settings", "config_keys", "resolve_config_file", "shipped_config",
           "shipped_config_dir", "shipped_configs"]

BASE_KEY = "_BASE_"


def config_keys(cfg: CfgNode | None = None, prefix: str = "") -> list[str]:
    """All full keys, e.g. ``MODEL.DAP.SIM_LAMBDA``."""
    cfg = get_defaults() if cfg is None else cfg
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        keys.extend(config_keys(v, full + ".") if isinstance(v, CfgNode) else [full])
    return keys


def _unknown_key(full_key: str, where: str) -> CasdapError:
    close = difflib.get_close_matches(full_key, config_keys(), n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return CasdapError(f"unknown config key '{full_key}' in {where}.{hint}")


def _coerce(value: Any, default: Any, full_key: str, where: str) -> Any:
    """Accept a value of the default's type (ints for floats, lists for tuples, anything for None)."""
    if default is None or value is None or type(value) is type(default):
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    raise CasdapError(
        f"config key '{full_key}' in {where} must be {type(default).__name__} "
        f"(default {default!r}), got {type(value).__name__} {value!r}"
    )


def _merge(cfg: CfgNode, data: dict, where: str, prefix: str = "") -> None:
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in cfg:
            raise _unknown_key(full, where)
        if isinstance(cfg[key], CfgNode):
            if not isinstance(value, dict):
                raise CasdapError(f"config key '{full}' in {where} is a section; give it a mapping of keys")
            _merge(cfg[key], value, where, full + ".")
        else:
            cfg[key] = _coerce(value, cfg[key], full, where)


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The file and its ``_BASE_`` ancestors, base first."""
    if not path.is_file():
        raise CasdapError(f"config file '{path}' does not exist")
    if path in chain:
        raise CasdapError(f"config file '{path}' inherits from itself through {BASE_KEY}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise CasdapError(f"config file '{path}' is not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise CasdapError(f"config file '{path}' must hold a mapping of keys, not a {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return [(path, data)]
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    if not base_path.is_file():
        raise CasdapError(f"config file '{path}' names {BASE_KEY} '{base}', but '{base_path}' does not exist")
    return [*_read_yaml(base_path, (*chain, path)), (path, data)]


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                reads: Callable[[str], MethodKeys] | None = None) -> CfgNode:
    """Defaults, then the YAML file (after its ``_BASE_`` chain), then ``KEY VALUE`` pairs; frozen.

    ``reads`` (``casdap cl`` gives :func:`casdap.continual.methods.method_keys`) names the keys the
    method of ``MODEL.TRANSFER_TYPE`` reads: a ``KEY VALUE`` pair it does not read is refused, and
    a key the file sets that it does not read is named in one notice and left at its default
    (:mod:`casdap.config.schema`)."""
    cfg = get_defaults()
    if path is not None:
        for file, data in _read_yaml(resolve_config_file(path)):
            _merge(cfg, data, f"'{file}'")
    overrides = list(overrides)
    if len(overrides) % 2:
        raise CasdapError(
            f"overrides come in KEY VALUE pairs; '{overrides[-1]}' has no value "
            "(e.g. SOLVER.BASE_LR 0.005 MODEL.DAP.STAGES [2,3])"
        )
    for key, text in zip(overrides[0::2], overrides[1::2]):
        node, parts = cfg, key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], CfgNode):
                raise _unknown_key(key, "the command line")
            node = node[part]
        if parts[-1] not in node or isinstance(node[parts[-1]], CfgNode):
            raise _unknown_key(key, "the command line")
        node[parts[-1]] = _coerce(_parse_value(text), node[parts[-1]], key, "the command line")
    if reads is not None:
        keys = reads(cfg.MODEL.TRANSFER_TYPE)
        refuse_unread(overrides[0::2], keys.method, keys.reads | COMPAT_KEYS, keys.own)
        drop_unread(cfg, keys.method, keys.reads, COMPAT_KEYS, f"'{path}'")
    resolve_reference_defaults(cfg)
    ignored = ignored_settings(cfg)
    if ignored:
        print("casdap: accepted from DAP's config layout, no effect in CAS-DAP: " + ", ".join(ignored),
              file=sys.stderr, flush=True)
    cfg.freeze()
    return cfg


def config_file_settings(path: str | Path) -> dict[str, Path]:
    """Every key that a config file or one of its ``_BASE_`` ancestors sets, with the file that sets it last."""
    return {key: file for file, data in _read_yaml(resolve_config_file(path)) for key in flat_settings(data)}


# Keys of DAP's (ViT) config layout that CAS-DAP accepts, so that DAP's YAML files load unchanged,
# and never reads: DAP's model and loss options, and its launcher's settings (here processes and
# their backend come from torchrun and the device). Setting one to anything but its default gets a
# notice, never silence. Every other key is read by the run.
COMPAT_KEYS = frozenset({
    "RUN_N_TIMES", "MODEL.NUM_HEAD", "MODEL.MLP_NUM", "MODEL.LINEAR.MLP_SIZES", "MODEL.LINEAR.DROPOUT",
    "MODEL.DAP.DROPOUT", "MODEL.DAP.INIT", "SOLVER.LOSS", "SOLVER.LOSS_ALPHA", "SOLVER.WEIGHT_DECAY_BIAS",
    "SOLVER.PATIENCE", "SOLVER.BIAS_MULTIPLIER", "DATA.FEATURE", "DATA.MULTILABEL", "DATA.CLASS_WEIGHTS_TYPE",
    "DATA.NO_TEST", "CONTINUAL.RESPLIT", "DBG", "NUM_GPUS", "NUM_SHARDS", "DIST_BACKEND", "DIST_INIT_PATH",
    "DIST_INIT_FILE", "MODEL.TYPE",
})


def _value(cfg: CfgNode, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def ignored_settings(cfg: CfgNode) -> list[str]:
    """``KEY value`` for every :data:`COMPAT_KEYS` entry set to something other than its default."""
    defaults = get_defaults()
    return [f"{k} {_value(cfg, k)!r}" for k in sorted(COMPAT_KEYS) if _value(cfg, k) != _value(defaults, k)]


# DAP's reference code changes two things by data set (``vit_models.py`` restricts the logits to
# the selected key's task, ``vit_dap/vit.py`` leaves the last block unprompted for ImageNet-R). A
# key left at None takes the reference's value for DATA.NAME, so DAP's own YAML files keep their
# meaning; a file or override that sets the key wins.
REFERENCE_DATASET_DEFAULTS: dict[str, dict[str, bool]] = {
    "imagenet_r": {"RESTRICT_TO_TASK": True, "PROMPT_LAST_BLOCK": False},
}
REFERENCE_DEFAULTS: dict[str, bool] = {"RESTRICT_TO_TASK": False, "PROMPT_LAST_BLOCK": True}


def resolve_reference_defaults(cfg: CfgNode) -> None:
    """Fill the ``MODEL.DAP`` keys left at None with the reference's value for ``DATA.NAME``."""
    name = str(cfg.DATA.NAME).lower().replace("-", "_")
    name = "imagenet_r" if name == "imagenetr" else name
    _resolve_prediction(cfg)
    defaults = {**REFERENCE_DEFAULTS, **REFERENCE_DATASET_DEFAULTS.get(name, {})}
    for key, value in defaults.items():
        current = cfg.MODEL.DAP[key]
        if current is None:
            cfg.MODEL.DAP[key] = value
        elif not isinstance(current, bool):
            raise CasdapError(f"config key 'MODEL.DAP.{key}' must be True or False (or None: the reference's "
                              f"choice for DATA.NAME), got {current!r}")


def _resolve_prediction(cfg: CfgNode) -> None:
    """``MODEL.DAP.PREDICTION`` decides ``RESTRICT_TO_TASK`` when set (``restrict`` is True, the
    others False); both set and disagreeing is one error."""
    from casdap.dap_registry import PREDICTION_NAMES, checked

    d = cfg.MODEL.DAP
    if "PREDICTION" not in d or d.PREDICTION is None:
        return
    key = checked("MODEL.DAP.PREDICTION", d.PREDICTION, PREDICTION_NAMES)
    if d.RESTRICT_TO_TASK is not None and bool(d.RESTRICT_TO_TASK) != (key == "restrict"):
        raise CasdapError(f"MODEL.DAP.RESTRICT_TO_TASK {d.RESTRICT_TO_TASK} contradicts MODEL.DAP.PREDICTION "
                          f"'{d.PREDICTION}': set PREDICTION alone (RESTRICT_TO_TASK True is PREDICTION restrict)")
    d.PREDICTION = key
    d.RESTRICT_TO_TASK = key == "restrict"


def shipped_config_dir() -> Path:
    """The folder of the shipped configs: ``casdap/configs/`` inside an installed wheel, the
    checkout's ``configs/`` when the package runs from a checkout (editable install, PYTHONPATH)."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "configs", package.parent / "configs"):
        if (folder / "base-dap.yaml").is_file():
            return folder
    raise CasdapError(f"casdap's shipped configs are missing (looked in '{package / 'configs'}' and "
                      f"'{package.parent / 'configs'}'); reinstall casdap or pass --config-file with a path")


def shipped_configs() -> list[str]:
    """Names of the shipped configs relative to their folder, e.g. ``dap/digits.yaml``."""
    folder = shipped_config_dir()
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.yaml"))


def shipped_config(name: str) -> Path:
    """Path of a config shipped with casdap, by name: ``"digits"``, ``"digits.yaml"``,
    ``"dap/digits.yaml"`` or ``"configs/dap/digits.yaml"`` (as in the checkout)."""
    folder = shipped_config_dir()
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise CasdapError(f"'{name}' is not the name of a shipped config (available: {', '.join(shipped_configs())})")
    if rel.parts[:1] == ("configs",):
        rel = Path(*rel.parts[1:]) if len(rel.parts) > 1 else Path()
    if not rel.name:
        raise CasdapError(f"'{name}' is not the name of a shipped config (available: {', '.join(shipped_configs())})")
    if rel.suffix not in (".yaml", ".yml"):
        rel = rel.with_name(rel.name + ".yaml")
    for path in (folder / rel, folder / "dap" / rel):
        if path.is_file():
            return path
    raise CasdapError(f"no shipped config '{name}' (available: {', '.join(shipped_configs())}); "
                      "pass --config-file with the path of your own file")


def resolve_config_file(path: str | Path) -> Path:
    """A config file named on the command line: the user's own existing file wins; otherwise the
    shipped config of that name (``configs/dap/digits.yaml`` works from any directory)."""
    p = Path(path)
    if p.is_file():
        return p
    try:
        return shipped_config(str(path))
    except CasdapError:
        raise CasdapError(f"config file '{path}' does not exist, and no shipped config has that name "
                          f"(shipped: {', '.join(shipped_configs())})") from None

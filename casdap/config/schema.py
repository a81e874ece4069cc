"""Which settings a run reads: a setting its method does not read is refused or named, never silent.

The method that runs declares the keys it reads (its schema, :mod:`casdap.continual.methods`); this
module only applies such a set of keys to a config and knows nothing of any method:

- a key set on the command line that the method does not read is refused
  (:func:`refuse_unread`);
- a key set elsewhere (a config file written for another method, a config built in Python) is
  named once in a notice and put back to its default, so it takes no effect
  (:func:`drop_unread`);
- the saved ``config.yaml`` states only the keys the method reads (:func:`dump_read`).
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterable
from typing import Any, NamedTuple

import yaml
from yacs.config import CfgNode

from casdap.config.defaults import get_defaults
from casdap.errors import CasdapError

__all__ = ["MethodKeys", "brief_keys", "drop_unread", "dump_read", "flat_settings", "refuse_unread", "section_keys",
           "unread_settings"]


def flat_settings(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"MODEL.DAP.QUERY": "adapted", ...}``: every leaf of a config (or of a plain nested dict)."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flat_settings(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def section_keys(section: str) -> tuple[str, ...]:
    """Every key under ``section`` of the defaults (``"MODEL.PROMPT"`` -> ``MODEL.PROMPT.LENGTH``, ...);
    ``""`` gives the top-level keys that are not sections."""
    node = get_defaults()
    for part in filter(None, section.split(".")):
        node = node[part]
    prefix = f"{section}." if section else ""
    return tuple(f"{prefix}{k}" for k, v in node.items() if not isinstance(v, CfgNode))


def brief_keys(keys: Iterable[str]) -> str:
    """``MODEL.PROMPT.{LENGTH, TOP_N}, SOLVER.BASE_LR``: keys grouped by their section, for one line."""
    groups: dict[str, list[str]] = {}
    for key in sorted(keys):
        parent, _, leaf = key.rpartition(".")
        groups.setdefault(parent, []).append(leaf)
    parts = []
    for parent, leaves in groups.items():
        dot = f"{parent}." if parent else ""
        parts.append(f"{dot}{leaves[0]}" if len(leaves) == 1 else f"{dot}{{{', '.join(leaves)}}}")
    return ", ".join(parts)


def _reference_defaults(cfg: CfgNode) -> dict[str, Any]:
    """The defaults as DAP's reference resolves them for this config's data set (the ``MODEL.DAP``
    keys left at None take a value by ``DATA.NAME``)."""
    from casdap.config import resolve_reference_defaults

    defaults = get_defaults()
    defaults.DATA.NAME = cfg.DATA.NAME
    resolve_reference_defaults(defaults)
    return flat_settings(defaults)


def unread_settings(cfg: CfgNode, reads: Collection[str], ignore: Collection[str] = ()) -> list[str]:
    """The keys outside ``reads`` (and ``ignore``) whose value is not their default, sorted. A value
    equal to the default as DAP's reference resolves it by data set counts as the default."""
    raw, resolved = flat_settings(get_defaults()), _reference_defaults(cfg)
    return sorted(k for k, v in flat_settings(cfg).items()
                  if k not in reads and k not in ignore and v != raw[k] and v != resolved[k])


def refuse_unread(keys: Iterable[str], method: str, reads: Collection[str], own: Collection[str]) -> None:
    """One :class:`CasdapError` naming every key of ``keys`` (set on the command line) that ``method``
    does not read; ``own``: the keys it reads beyond every run's, named in the message."""
    unread = sorted(k for k in dict.fromkeys(keys) if k not in reads)
    if not unread:
        return
    verb = "is" if len(unread) == 1 else "are"
    mine = f"{brief_keys(own)}, and " if own else ""
    raise CasdapError(f"{', '.join(unread)} {verb} not read by method {method} (it reads: {mine}every run's DATA, "
                      f"CONTINUAL and SOLVER settings); remove it from the command line")


def drop_unread(cfg: CfgNode, method: str, reads: Collection[str], ignore: Collection[str] = (),
                source: str = "the config file") -> list[str]:
    """Put every setting ``method`` does not read back to its default, and name them in one notice
    line on stderr (``source``: where they came from). Returns the keys, sorted; ``cfg`` must be
    mutable."""
    unread = unread_settings(cfg, reads, ignore)
    if not unread:
        return []
    defaults, values = flat_settings(get_defaults()), flat_settings(cfg)
    print(f"casdap: not read by method {method}, so not applied (from {source}): "
          + ", ".join(f"{k} {values[k]!r}" for k in unread), file=sys.stderr, flush=True)
    for key in unread:
        node, parts = cfg, key.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = defaults[key]
    return unread


def dump_read(cfg: CfgNode, reads: Collection[str]) -> str:
    """The config as YAML with only the keys in ``reads``: what a run's ``config.yaml`` states.
    Loading it gives every other key its default, which the run never read."""
    def keep(node: CfgNode, prefix: str = "") -> dict:
        out = {}
        for k, v in node.items():
            full = f"{prefix}{k}"
            if isinstance(v, CfgNode):
                child = keep(v, full + ".")
                if child:
                    out[k] = child
            elif full in reads:
                out[k] = list(v) if isinstance(v, tuple) else v
        return out

    return yaml.safe_dump(keep(cfg), default_flow_style=False, sort_keys=True)


class MethodKeys(NamedTuple):
    """The keys a run of one method reads (``reads``), and those of them beyond every run's (``own``)."""

    method: str
    reads: frozenset[str]
    own: frozenset[str]

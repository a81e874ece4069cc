"""Argument types shared by the subcommands (kept free of heavy imports for fast ``--help``)."""

from __future__ import annotations

import argparse


def str2bool(value: str | bool) -> bool:
    """``True``/``False`` as the CAS-ViT scripts spell them (also yes/no, t/f, y/n, on/off, 1/0)."""
    if isinstance(value, bool):
        return value
    v = value.lower()
    if v in ("yes", "true", "t", "y", "on", "1"):
        return True
    if v in ("no", "false", "f", "n", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got '{value}'")

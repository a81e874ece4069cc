"""The ``casdap`` command line: one subcommand per job, each in its own module.

Every module listed in ``SUBCOMMANDS`` provides ``add_parser(subparsers)`` (which registers its
arguments and sets ``func``). Errors about the user's input surface as one line, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from casdap.errors import CasdapError

# subcommand -> module under casdap.cli
SUBCOMMANDS: dict[str, str] = {
    "bench": "casdap.cli.bench",
    "cl": "casdap.cli.cl",
    "compare": "casdap.cli.compare",
    "demo": "casdap.cli.demo",
    "export": "casdap.cli.export",
    "pretrain": "casdap.cli.pretrain",
    "train": "casdap.cli.train",
}


def build_parser() -> argparse.ArgumentParser:
    from casdap import __version__

    parser = argparse.ArgumentParser(
        prog="casdap",
        description="Domain-adaptive prompts on CAS-ViT: continual learning, supervised training, "
        "comparison and benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"casdap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def run(func, args) -> int:
    """Call a subcommand, turning input errors into one clear line."""
    try:
        return int(func(args) or 0)
    except CasdapError as e:
        print(f"casdap: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("casdap: interrupted", file=sys.stderr)
        return 130


def _skip_jax() -> None:
    """Keep jax out of this process: avalanche-lib requires every open-source back-end of qpsolvers,
    which imports jax when it is installed; that is about 1.0 of the 5.6 CPU seconds the package and
    Avalanche take to import, at every start of a command, for quadratic programs no casdap command solves. Only the
    command line does this (a process of its own, nothing imported yet); ``import casdap`` does not."""
    sys.modules.setdefault("jax", None)  # qpsolvers, finding no jax, leaves that back-end out


def main(argv: Sequence[str] | None = None) -> int:
    _skip_jax()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return run(args.func, args)


def seed_main(argv: Sequence[str] | None = None) -> int:
    """Entry of the root ``main.py``: CAS-ViT flags train a backbone; ``--config-file`` runs the
    continual-learning path."""
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_cl = any(a == "--config-file" or a.startswith("--config-file=") for a in argv)
    command = "cl" if wants_cl else "train"
    if command not in SUBCOMMANDS:
        print(f"casdap: error: the '{command}' path is not part of this installation", file=sys.stderr)
        return 2
    return main([command, *argv])

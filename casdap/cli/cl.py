"""``casdap cl --config-file F [KEY VALUE ...]``: one continual-learning experiment.

Also reached from the root ``main.py`` whenever ``--config-file`` is given, so the CAS-ViT flags
below are accepted too. Precedence: defaults < the YAML file (and its ``_BASE_`` chain) < CAS-ViT
flags the user typed < ``KEY VALUE`` pairs.
"""

from __future__ import annotations

import argparse

from casdap.cli.argtypes import str2bool
from casdap.errors import CasdapError

# CAS-ViT flag -> (config key, type)
FLAG_TO_KEY: dict[str, tuple[str, type]] = {
    "model": ("MODEL.BACKBONE", str),
    "lr": ("SOLVER.BASE_LR", float),
    "batch_size": ("DATA.BATCH_SIZE", int),
    "epochs": ("SOLVER.TOTAL_EPOCH", int),
    "output_dir": ("OUTPUT_DIR", str),
    "data_path": ("DATA.DATAPATH", str),
    "input_size": ("DATA.CROPSIZE", int),
    "use_amp": ("USE_AMP", bool),
    "seed": ("SEED", int),
    "auto_resume": ("SOLVER.AUTO_RESUME", bool),
    "device": ("DEVICE", str),
    "num_workers": ("DATA.NUM_WORKERS", int),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cl",
        help="run a class-incremental continual-learning experiment (DAP or a baseline)",
        description="Run one continual-learning experiment. MODEL.TRANSFER_TYPE picks the method: dap, finetune, "
        "linear, ewc, lwf, replay, ncm, joint. CAS-ViT flags override the file; KEY VALUE pairs override both.",
    )
    p.add_argument("--config-file", required=True, metavar="FILE", help="YAML settings (DAP layout, _BASE_ allowed)")
    for flag, (key, typ) in FLAG_TO_KEY.items():
        if typ is bool:
            p.add_argument(f"--{flag}", type=str2bool, nargs="?", const=True, default=None, metavar="BOOL",
                           help=f"sets {key}")
        else:
            p.add_argument(f"--{flag}", type=typ, default=None, help=f"sets {key}")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (per-task lines still print)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.TRANSFER_TYPE finetune SOLVER.TOTAL_EPOCH 2")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    """Defaults < file < typed CAS-ViT flags < KEY VALUE pairs."""
    from casdap.config import load_config

    cfg = load_config(args.config_file, args.opts)
    explicit = set(args.opts[0::2])
    cfg.defrost()
    for flag, (key, _) in FLAG_TO_KEY.items():
        value = getattr(args, flag)
        if value is None or key in explicit:
            continue
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    cfg.freeze()
    return cfg


def run(args: argparse.Namespace) -> int:
    from casdap.continual.runner import run_continual

    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    stray = [o for o in args.opts[0::2] if o.startswith("--")]
    if stray:
        raise CasdapError(f"unknown flag {stray[0]} (flags go before KEY VALUE pairs; see casdap cl --help)")
    cfg = resolve_config(args)
    run_continual(cfg, progress=not args.no_progress)
    return 0

"""``casdap cl --config-file F [FLAGS] [KEY VALUE ...]``: one continual-learning experiment.

Also reached from the root ``main.py`` whenever ``--config-file`` is given (anywhere in the line),
so every flag of the official CAS-ViT ``main.py`` is accepted: those that mean something for a
frozen-backbone continual run become ``KEY VALUE`` pairs (:data:`FLAG_TO_KEY`), the others are
named once in a notice. Precedence: defaults < the YAML file (and its ``_BASE_`` chain) < CAS-ViT
flags < ``KEY VALUE`` pairs; the file is read once, and every value is type-checked.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from casdap.cli.casvit_args import OneLineParser, add_casvit_flags
from casdap.continual.methods import METHOD_NAMES
from casdap.errors import CasdapError

# CAS-ViT's --data_set names -> DATA.NAME
DATA_SETS = {"CIFAR": "cifar100", "CIFAR100": "cifar100", "CIFAR10": "cifar10", "IMNET": "folder",
             "image_folder": "folder"}


def _pairs(key: str) -> Callable[[object], list[str]]:
    return lambda value: [key, value if isinstance(value, str) else repr(value)]


def _betas(value: Sequence[float]) -> list[str]:
    if len(value) != 2:
        raise CasdapError(f"--opt_betas takes two numbers (beta1 beta2), got {len(value)}")
    return ["SOLVER.BETA1", repr(float(value[0])), "SOLVER.BETA2", repr(float(value[1]))]


# CAS-ViT flag -> the KEY VALUE pairs it stands for
FLAG_TO_KEY: dict[str, Callable[[object], list[str]]] = {
    "data_set": lambda v: ["DATA.NAME", DATA_SETS[v]],
    "data_path": _pairs("DATA.DATAPATH"),
    "input_size": _pairs("DATA.CROPSIZE"),
    "model": _pairs("MODEL.BACKBONE"),
    "finetune": _pairs("MODEL.WEIGHT_PATH"),
    "nb_classes": _pairs("DATA.NUMBER_CLASSES"),
    "lr": _pairs("SOLVER.BASE_LR"),
    "batch_size": _pairs("DATA.BATCH_SIZE"),
    "epochs": _pairs("SOLVER.TOTAL_EPOCH"),
    "warmup_epochs": _pairs("SOLVER.WARMUP_EPOCH"),
    "warmup_steps": _pairs("SOLVER.WARMUP_STEPS"),
    "opt": _pairs("SOLVER.OPTIMIZER"),
    "opt_betas": _betas,
    "momentum": _pairs("SOLVER.MOMENTUM"),
    "weight_decay": _pairs("SOLVER.WEIGHT_DECAY"),
    "clip_grad": lambda v: ["SOLVER.GRAD_CLIP", repr(float(v)), "SOLVER.GRAD_CLIP_APPLY", "True"],
    "color_jitter": _pairs("CONTINUAL.COLOR_JITTER"),
    "aa": lambda v: ["CONTINUAL.AA", repr(v or None)],
    "reprob": _pairs("CONTINUAL.REPROB"),
    "remode": _pairs("CONTINUAL.REMODE"),
    "recount": _pairs("CONTINUAL.RECOUNT"),
    "multi_scale_sampler": lambda v: ["CONTINUAL.MULTI_SCALE", repr(bool(v))],
    "use_amp": _pairs("USE_AMP"),
    "seed": _pairs("SEED"),
    "device": _pairs("DEVICE"),
    "output_dir": _pairs("OUTPUT_DIR"),
    "num_workers": _pairs("DATA.NUM_WORKERS"),
    "pin_mem": _pairs("DATA.PIN_MEMORY"),
    "auto_resume": _pairs("SOLVER.AUTO_RESUME"),
    "save_ckpt": _pairs("MODEL.SAVE_CKPT"),
}
# Flags that only steer the console, not the run.
DISPLAY_FLAGS = ("print_verbose",)
# Set by the launcher: never worth a notice.
LAUNCHER_FLAGS = ("local_rank", "world_size", "dist_url", "dist_on_itp")


def build_cl_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="casdap cl",
        description="Run one continual-learning experiment. MODEL.TRANSFER_TYPE picks the method: "
        f"{', '.join(METHOD_NAMES)}. Every flag of the CAS-ViT main.py is accepted: those that matter "
        "for a frozen-backbone run set config keys (e.g. --lr SOLVER.BASE_LR, --data_set CIFAR DATA.NAME "
        "cifar100), the others are named in a notice. KEY VALUE pairs override the file and the flags.",
        epilog="example: casdap cl --config-file configs/dap/digits.yaml MODEL.TRANSFER_TYPE ncm SEED 1",
    )
    p.add_argument("--config-file", dest="config_file", required=True, metavar="FILE",
                   help="YAML settings (DAP layout, _BASE_ allowed)")
    p.add_argument("--no-progress", dest="no_progress", action="store_true",
                   help="no progress bars (per-task lines still print); also --print_verbose 0")
    add_casvit_flags(p, typed_only=True)
    return p


def add_parser(sub: argparse._SubParsersAction) -> None:
    # Parsed by build_cl_parser() so that --config-file may stand anywhere and KEY VALUE pairs may
    # follow or precede flags; '+' as prefix hands every argument through untouched.
    p = sub.add_parser("cl", help="run a class-incremental continual-learning experiment (DAP or a baseline)",
                       add_help=False, prefix_chars="+")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)


def parse_cl_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The typed flags and the ``KEY VALUE`` pairs, in their order; an unknown flag is one error."""
    argv = [a for a in argv if a != "--"]
    args, rest = build_cl_parser().parse_known_args(argv)
    stray = [a for a in rest if a.startswith("-") and not _is_number(a)]
    if stray:
        import difflib

        known = [s for a in build_cl_parser()._actions for s in a.option_strings]
        close = difflib.get_close_matches(stray[0], known, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise CasdapError(f"unknown flag {stray[0]}.{hint} (see 'casdap cl --help')")
    return args, rest


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def flag_overrides(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """KEY VALUE pairs for the typed CAS-ViT flags, and the typed flags that change nothing here."""
    pairs, unused = [], []
    for name, value in vars(args).items():
        if name in ("config_file", "no_progress", *DISPLAY_FLAGS, *LAUNCHER_FLAGS):
            continue
        if name in FLAG_TO_KEY:
            pairs += FLAG_TO_KEY[name](value)
        elif name == "eval":
            if value:
                raise CasdapError("--eval True (evaluation only) has no continual counterpart: a continual run "
                                  "trains task by task; evaluate a finished run with 'casdap compare RUN_DIR'")
        elif name == "resume":
            if value:
                raise CasdapError("--resume FILE is for supervised runs: a continual run resumes from its own "
                                  "OUTPUT_DIR with --auto_resume True")
        else:
            unused.append(f"--{name}")
    return pairs, unused


def _load(argv: Sequence[str]):
    """The run's config, the typed flags, and the typed flags that change nothing here. A setting
    the method does not read is refused when given here, and named (not applied) when the file sets it."""
    from casdap.config import load_config
    from casdap.continual.methods import method_keys

    cl_args, opts = parse_cl_args(argv)
    pairs, unused = flag_overrides(cl_args)
    return load_config(cl_args.config_file, [*pairs, *opts], reads=method_keys), cl_args, unused


def resolve_config(args: argparse.Namespace):
    """Defaults < file < typed CAS-ViT flags < KEY VALUE pairs, loaded once and type-checked."""
    return _load(args.argv)[0]


def run(args: argparse.Namespace) -> int:
    cfg, cl_args, unused = _load(args.argv)
    from casdap.continual.methods import check_config

    check_config(cfg)
    if unused:
        print(f"casdap cl: accepted with no effect on a frozen-backbone continual run: {', '.join(unused)}",
              file=sys.stderr)
    from casdap.continual.runner import prepare_backbone, run_continual

    prepare_backbone(cfg)  # an embedded benchmark's backbone, pretrained once if missing
    progress = not cl_args.no_progress and getattr(cl_args, "print_verbose", 1) != 0
    run_continual(cfg, progress=progress)
    return 0

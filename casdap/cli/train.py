"""``casdap train`` (and the root ``main.py``): supervised CAS-ViT training and evaluation.

Accepts the flags of the official CAS-ViT classification ``main.py`` with the same defaults and
``True``/``False`` spelling, plus ``--data_set CIFAR``/``CIFAR10`` and ``--print_verbose``. Runs
alone or under ``python -m torch.distributed.run`` (DDP on gloo for CPU, nccl for CUDA).
"""

from __future__ import annotations

import argparse

from casdap.cli.casvit_args import FIXED_FLAGS, OneLineParser, add_casvit_flags
from casdap.errors import CasdapError


def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="casdap train",
        description="Supervised CAS-ViT training and evaluation (the CAS-ViT classification main.py flags). "
        "Boolean flags take True/False.",
    )
    add_casvit_flags(p)
    p.add_argument("--config-file", dest="config_file", default=None, help="continual-learning config: use "
                   "main.py --config-file (routes to 'casdap cl')")
    return p


def add_parser(sub: argparse._SubParsersAction) -> None:
    # The training flags are parsed by get_args_parser() so that its errors stay one line and
    # `casdap train --help` shows them; '+' as prefix hands every argument through untouched.
    p = sub.add_parser("train", help="supervised CAS-ViT training / evaluation (CAS-ViT main.py flags)",
                       add_help=False, prefix_chars="+")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)


def parse_args(argv: list[str]) -> argparse.Namespace:
    return get_args_parser().parse_args(argv)


def run(ns: argparse.Namespace) -> int:
    args = parse_args(ns.argv)
    try:
        main(args)
    except CasdapError as e:
        raise CasdapError(_worker_message(str(e))) from None
    return 0


def _worker_message(message: str) -> str:
    """A CasdapError raised inside a DataLoader worker arrives wrapped in its traceback: keep the message."""
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split("CasdapError: ", 1)[-1]


def check_flags(args: argparse.Namespace) -> None:
    """Refuse flags that would otherwise be silently ignored."""
    for name, (default, why) in FIXED_FLAGS.items():
        if getattr(args, name) != default:
            raise CasdapError(f"--{name} {getattr(args, name)} is not supported: {why}")
    if args.config_file:
        raise CasdapError("--config-file runs the continual-learning path: use 'main.py --config-file ...' or "
                          "'casdap cl --config-file ...'")
    if args.usi_eval and not args.eval:
        raise CasdapError("--usi_eval True only applies to evaluation: add --eval True --resume <checkpoint>")
    if (args.model_ema_eval or args.model_ema_force_cpu) and not args.model_ema:
        raise CasdapError("--model_ema_eval / --model_ema_force_cpu need --model_ema True")
    if args.eval_data_path and args.data_set != "image_folder":
        raise CasdapError("--eval_data_path is used with --data_set image_folder only (IMNET reads <data_path>/val, "
                          "CIFAR its test batch)")
    for name in ("batch_size", "epochs", "update_freq", "save_ckpt_freq", "save_ckpt_num"):
        if getattr(args, name) < 1:
            raise CasdapError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.input_size < 32:
        raise CasdapError(f"--input_size must be at least 32 (CAS-ViT downsamples 32x), got {args.input_size}")
    if args.num_workers < 0:
        raise CasdapError(f"--num_workers must be >= 0, got {args.num_workers}")
    from casdap.models import list_models

    if args.model not in list_models():
        from casdap.models import create_model

        create_model(args.model)  # raises the CasdapError that lists the valid names


def main(args: argparse.Namespace):
    """Check the flags, then train (or evaluate) as they say; returns the trainer's ``TrainResult``."""
    from casdap.engine.supervised import train

    check_flags(args)
    return train(args)

"""Optimizer, learning-rate and weight-decay schedules for supervised training (timm-based).

The optimizer comes from timm's ``create_optimizer_v2`` (no weight decay on 1-D parameters,
layer-wise lr decay through ``CASViT.group_matcher``). The learning rate follows timm's cosine
schedule updated every optimizer step, after a linear warmup given in epochs or, overriding
that, in steps; weight decay follows its own per-step cosine from ``--weight_decay`` to
``--weight_decay_end``, as in ConvNeXt/CAS-ViT training.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import CosineLRScheduler

from casdap.errors import CasdapError


def build_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    """``--opt`` (any timm optimizer, ``lookahead_`` prefix allowed) over decay/no-decay groups."""
    name = args.opt.lower()
    if name.split("_")[-1] not in list_optimizers() and name not in list_optimizers():
        raise CasdapError(f"unknown optimizer '--opt {args.opt}' (timm knows: {', '.join(list_optimizers())})")
    kwargs: dict = {}
    if args.opt_eps is not None:
        kwargs["eps"] = args.opt_eps
    if args.opt_betas is not None:
        kwargs["betas"] = tuple(args.opt_betas)
    try:
        optimizer = create_optimizer_v2(
            model,
            opt=name,
            lr=args.lr,
            weight_decay=args.weight_decay,
            momentum=args.momentum,
            layer_decay=args.layer_decay if args.layer_decay != 1.0 else None,
            **kwargs,
        )
    except (TypeError, ValueError, AssertionError) as e:
        raise CasdapError(f"cannot build optimizer '--opt {args.opt}' with these settings: {e}") from None
    for group in optimizer.param_groups:
        # Groups excluded from decay (biases, norms) stay at 0 under the weight-decay schedule.
        group["wd_scheduled"] = group.get("weight_decay", 0.0) > 0
    return optimizer


def warmup_steps(args: argparse.Namespace, steps_per_epoch: int) -> int:
    return args.warmup_steps if args.warmup_steps > 0 else args.warmup_epochs * steps_per_epoch


def build_lr_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer,
                       steps_per_epoch: int) -> CosineLRScheduler:
    """Per-step cosine from ``--lr`` to ``--min_lr`` after a linear warmup from ``--warmup_start_lr``."""
    total = args.epochs * steps_per_epoch
    warm = min(warmup_steps(args, steps_per_epoch), total)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total - warm, 1),
        lr_min=args.min_lr,
        warmup_t=warm,
        warmup_lr_init=args.warmup_start_lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )


class WeightDecaySchedule:
    """Cosine from ``start`` to ``end`` over ``total_steps``, applied to the decayed groups."""

    def __init__(self, start: float, end: float, total_steps: int) -> None:
        self.start, self.end, self.total = start, end, max(total_steps, 1)

    def value(self, step: int) -> float:
        t = min(step, self.total) / self.total
        return self.end + 0.5 * (self.start - self.end) * (1 + math.cos(math.pi * t))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        wd = self.value(step)
        for group in optimizer.param_groups:
            if group.get("wd_scheduled"):
                group["weight_decay"] = wd

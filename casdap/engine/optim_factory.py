"""Optimizer, learning-rate and weight-decay schedules of both training paths (timm-based).

The optimizer comes from timm's ``create_optimizer_v2`` (no weight decay on 1-D parameters,
layer-wise lr decay through ``CASViT.group_matcher``). The learning rate follows timm's cosine
schedule updated every optimizer step, after a linear warmup given in epochs or, overriding
that, in steps; weight decay follows its own per-step cosine from ``--weight_decay`` to
``--weight_decay_end``, as in ConvNeXt/CAS-ViT training.

The continual path (:func:`build_group_optimizer`, :func:`build_task_lr_scheduler`) takes DAP's
optimizer names over the method's own parameter groups, and a schedule that restarts with every
task.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import CosineLRScheduler, PolyLRScheduler

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


# DAP's optimizer names -> timm's: DAP's "sgd" is plain momentum SGD (timm's "sgd" is Nesterov)
DAP_OPTIMIZERS = {"sgd": "momentum", "adam": "adam", "adamw": "adamw"}
# Per-iteration schedules of a continual task: DAP's "linear" is a warmup, then the base rate.
TASK_SCHEDULES = ("linear", "linear_decay", "cosine", "constant")


def build_group_optimizer(groups: list[dict], name: str, lr: float, weight_decay: float, momentum: float = 0.9,
                          betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """DAP's ``sgd`` / ``adam`` / ``adamw`` (any case) over ``groups`` (each with its own ``lr``);
    empty groups are dropped. ``momentum`` is used by sgd, ``betas`` by the others."""
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise CasdapError("the method has no trainable parameters")
    timm_name = DAP_OPTIMIZERS.get(name.lower())
    if timm_name is None:
        raise CasdapError(f"unknown SOLVER.OPTIMIZER '{name}' (use {', '.join(DAP_OPTIMIZERS)})")
    extra = {"momentum": momentum} if timm_name == "momentum" else {"betas": tuple(betas)}
    return create_optimizer_v2(groups, opt=timm_name, lr=lr, weight_decay=weight_decay, **extra)


def build_task_lr_scheduler(kind: str, optimizer: torch.optim.Optimizer, total_steps: int,
                            warmup: int) -> PolyLRScheduler | CosineLRScheduler | None:
    """The per-iteration schedule of one continual task (``step_update(i)`` before iteration ``i``).

    Every group restarts from its base rate. ``linear`` is DAP's (its ``WarmupConstantSchedule``):
    ``warmup`` steps from zero, then the base rate; ``constant`` is the same; ``linear_decay`` decays
    linearly to zero over ``total_steps`` and ``cosine`` follows a half cosine, both after the warmup.
    None where the rate never changes (linear or constant with no warmup).
    """
    kind = kind.lower()
    if kind not in TASK_SCHEDULES:
        raise CasdapError(f"unknown SOLVER.SCHEDULER '{kind}' (use {', '.join(TASK_SCHEDULES)})")
    for group in optimizer.param_groups:  # timm reads the base rate from initial_lr
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"]
    common = dict(t_initial=total_steps, warmup_t=warmup, warmup_lr_init=0.0, t_in_epochs=False, lr_min=0.0)
    if kind == "linear_decay":
        return PolyLRScheduler(optimizer, power=1.0, **common)
    if kind == "cosine":
        return CosineLRScheduler(optimizer, **common)
    if warmup > 0:
        return PolyLRScheduler(optimizer, power=0.0, **common)
    return None


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

"""Layer-wise lr decay, the warmup + cosine lr schedule and the weight-decay schedule."""

import math

import pytest

from casdap.cli.train import parse_args
from casdap.engine.optim_factory import WeightDecaySchedule, build_lr_scheduler, build_optimizer
from casdap.errors import CasdapError
from casdap.models import create_model


def _scale_of(optimizer, param):
    return next(g["lr_scale"] for g in optimizer.param_groups if any(p is param for p in g["params"]))


def test_layer_decay_scales_lr_by_depth_and_skips_decay_on_1d():
    model = create_model("rcvit_xs", num_classes=10, distillation=False)
    opt = build_optimizer(parse_args(["--layer_decay", "0.8"]), model)
    stem = _scale_of(opt, model.patch_embed[0].weight)
    first = _scale_of(opt, model.network[0][0].mlp.fc1.weight)
    last = _scale_of(opt, model.network[6][1].mlp.fc1.weight)
    head = _scale_of(opt, model.head.weight)
    assert stem < first < last <= head == 1.0
    assert math.isclose(stem, 0.8 ** round(math.log(stem, 0.8)))
    for g in opt.param_groups:
        if all(p.ndim <= 1 for p in g["params"]):
            assert g["weight_decay"] == 0.0 and not g["wd_scheduled"]
    with pytest.raises(CasdapError, match="unknown optimizer"):
        build_optimizer(parse_args(["--opt", "adamz"]), model)


def test_warmup_in_steps_then_cosine_to_min_lr():
    model = create_model("rcvit_xs", num_classes=10, distillation=False)
    args = parse_args(["--epochs", "2", "--warmup_steps", "4", "--warmup_epochs", "50", "--lr", "1e-2",
                       "--min_lr", "1e-4", "--warmup_start_lr", "1e-3"])
    opt = build_optimizer(args, model)
    sched = build_lr_scheduler(args, opt, steps_per_epoch=10)
    lrs = []
    for step in range(20):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert math.isclose(lrs[0], 1e-3) and lrs[0] < lrs[1] < lrs[2] < lrs[3] < lrs[4]
    assert math.isclose(lrs[4], 1e-2)  # --warmup_steps overrides --warmup_epochs
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] > 1e-4

    epochs = parse_args(["--epochs", "4", "--warmup_epochs", "1", "--lr", "1e-2"])
    sched = build_lr_scheduler(epochs, opt, steps_per_epoch=10)
    sched.step_update(10)
    assert math.isclose(opt.param_groups[0]["lr"] / opt.param_groups[0].get("lr_scale", 1.0), 1e-2)


def test_weight_decay_cosine_schedule():
    sched = WeightDecaySchedule(0.05, 0.5, total_steps=100)
    assert math.isclose(sched.value(0), 0.05) and math.isclose(sched.value(100), 0.5)
    assert math.isclose(sched.value(50), 0.275)

"""Training and evaluation time of a prompted model with its frozen backbone BatchNorm-folded or not.

    python benchmarks/frozen_fold_cost.py --config configs/dap/embedded_shift.yaml \
        --opts MODEL.MODEL_ROOT /work/cache/model/embedded

The model is built from the config as a run builds it and put where a run is after its first task
(an adapted query adapted, tasks 0..``--task`` selectable, the token-axis maps frozen); then a
training step (forward under the task, cross-entropy and the key pull, backward, gradient clipping
at ``SOLVER.GRAD_CLIP``, the solver's Adam step) and an evaluation batch (per-image task inference,
no grad) of ``DATA.BATCH_SIZE`` random images are timed for three forms of the same model:
``unfolded`` (the backbone's own modules), ``folded`` (the BatchNorm-folded twin of
:mod:`casdap.models.frozen_fold`) and ``folded_cl`` (the twin on channels-last memory, what
``MODEL.FOLD_FROZEN_BN`` runs). Every
repeat times each form in turn (``--steps`` back-to-back calls); figures are medians [min-max] of
the repeats, wall and CPU (process) time, and ratios are medians of the per-repeat ratios, on one
thread by default.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from casdap.config import load_config
from casdap.continual.methods import get_method
from casdap.models.frozen_fold import fold_frozen_parts

FORMS = ("unfolded", "folded", "folded_cl")


def _later_task(model: torch.nn.Module, task: int) -> None:
    """Where a run stands while it trains task ``task`` (> 0): first session done, earlier tasks trained."""
    if getattr(model, "query_mode", "frozen") == "adapted":
        model.adapted.fill_(True)
    for t in range(task + 1):
        model.mark_trained(t)
    if task >= 1 and hasattr(model, "freeze_token_axis"):
        model.freeze_token_axis()


def _timed(fn, steps: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def _line(name: str, samples: list[float]) -> str:
    return f"{name} {1e3 * statistics.median(samples):.1f} [{1e3 * min(samples):.1f}-{1e3 * max(samples):.1f}] ms"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/dap/embedded_shift.yaml")
    parser.add_argument("--opts", nargs="*", default=[], help="KEY VALUE config overrides")
    parser.add_argument("--task", type=int, default=1, help="the task whose training is timed (>= 1)")
    parser.add_argument("--steps", type=int, default=8, help="back-to-back calls per timed sample")
    parser.add_argument("--reps", type=int, default=5, help="timed samples per form")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.config, args.opts)
    method = get_method(cfg.MODEL.TRANSFER_TYPE)
    base = method.build_model(cfg, int(cfg.DATA.NUMBER_CLASSES))
    _later_task(base, args.task)
    models = {name: copy.deepcopy(base) for name in FORMS}
    fold_frozen_parts(models["folded"], channels_last=False)
    fold_frozen_parts(models["folded_cl"], channels_last=True)
    solver = cfg.SOLVER
    optimizers = {name: torch.optim.Adam([p for p in m.trainable_parameters() if p.requires_grad], lr=solver.BASE_LR,
                                         betas=(solver.BETA1, solver.BETA2)) for name, m in models.items()}
    size, batch = int(cfg.DATA.CROPSIZE), int(cfg.DATA.BATCH_SIZE)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen)
    per_task = int(cfg.CONTINUAL.INCREMENT)
    y = args.task * per_task + torch.randint(per_task, (batch,), generator=gen)
    lam, sim = float(cfg.MODEL.DAP.CURRENT_LAMBDA), float(cfg.MODEL.DAP.SIM_LAMBDA)

    def train_step(name: str) -> None:
        model, opt = models[name], optimizers[name]
        model.train()
        opt.zero_grad(set_to_none=True)
        out = model(x, args.task)
        (lam * F.cross_entropy(out.logits, y) - sim * out.pull).backward()
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), float(solver.GRAD_CLIP))
        opt.step()

    @torch.no_grad()
    def eval_batch(name: str) -> None:
        models[name].eval()(x)

    with torch.no_grad():  # the forms compute the same model
        ref = models["unfolded"].eval()(x).logits
        for name in FORMS[1:]:
            diff = (models[name].eval()(x).logits - ref).abs().max().item()
            print(f"{name}: max abs logit difference to unfolded {diff:.1e}")
    for name in FORMS:  # warm-up: builds the twins, first-call allocations
        train_step(name)
        eval_batch(name)
    samples = {(kind, name, clock): [] for kind in ("train", "eval") for name in FORMS for clock in ("wall", "cpu")}
    for _ in range(args.reps):
        for name in FORMS:
            for kind, fn in (("train", train_step), ("eval", eval_batch)):
                wall, cpu = _timed(lambda fn=fn, name=name: fn(name), args.steps)
                samples[kind, name, "wall"].append(wall)
                samples[kind, name, "cpu"].append(cpu)
    print(f"{cfg.MODEL.TRANSFER_TYPE} {cfg.MODEL.BACKBONE} {size} px, batch {batch}, task {args.task}, "
          f"{args.reps} repeats of {args.steps} calls, {args.threads} thread(s); per call, median [min-max]")
    for kind in ("train", "eval"):
        for name in FORMS:
            wall, cpu = samples[kind, name, "wall"], samples[kind, name, "cpu"]
            ratio = ""
            if name != "unfolded":
                rw = [a / b for a, b in zip(wall, samples[kind, "unfolded", "wall"])]
                rc = [a / b for a, b in zip(cpu, samples[kind, "unfolded", "cpu"])]
                ratio = (f"  / unfolded: wall {statistics.median(rw):.2f} [{min(rw):.2f}-{max(rw):.2f}], "
                         f"cpu {statistics.median(rc):.2f} [{min(rc):.2f}-{max(rc):.2f}]")
            print(f"{kind:5s} {name:9s} {_line('wall', wall)}, {_line('cpu', cpu)}{ratio}")


if __name__ == "__main__":
    main()

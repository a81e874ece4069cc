"""Cost of CAS-DAP (or another prompt method) against its plain backbone: parameters and eval forward time.

    python benchmarks/dap_cost.py --config configs/dap/cifar.yaml --sizes 32 224 --opts MODEL.DAP.STAGES [3]
    python benchmarks/dap_cost.py --config configs/dap/l2p_embedded_shift.yaml   (any prompt method's config)
    python benchmarks/dap_cost.py --config configs/dap/embedded_shift.yaml --opts MODEL.FOLD_FROZEN_BN True
    python benchmarks/dap_cost.py --config configs/dap/embedded_shift.yaml --tasks 10 --gathered

Times come from ``casdap bench``'s harness (:func:`casdap.bench.time_interleaved`: every repeat
times both models in turn, each sample at least ``--min-time`` seconds of back-to-back calls), one
thread, eval mode, no grad; the ratio CAS-DAP / backbone is the median of the per-repeat ratios of
the same run, so it is the number to compare across machines. ``casdap bench --dap`` measures the
CIFAR-100 settings on every backbone; this script measures any config and its overrides.

The randomly initialised task predictor picks one task for every image, so by default the prompted
pass sees one-task batches. ``--tasks N`` gives CAS-DAP the images' tasks (image i: task i mod N,
as the true task of an oracle selection, which costs what inferring it does), a batch of N tasks as
at a stream's end; ``--gathered`` also times, in the same repeats, the prompted pass that gathers
each image's per-task maps instead of grouping the images by task (``CASDAP.group_tasks`` False).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from casdap.bench import Stats, time_interleaved
from casdap.config import load_config
from casdap.continual.methods import get_method
from casdap.models.build import build_backbone


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/dap/cifar.yaml")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=15, help="timed samples per model")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per timed sample")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--opts", nargs="*", default=[], help="KEY VALUE config overrides, e.g. MODEL.DAP.STAGES [3]")
    parser.add_argument("--tasks", type=int, default=0,
                        help="CAS-DAP only: image i is of task i mod TASKS (0: the predictor's own choice)")
    parser.add_argument("--gathered", action="store_true",
                        help="CAS-DAP only: also time the prompted pass that gathers per-image task maps")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, ["MODEL.RANDOM_INIT", "True", *args.opts])  # weights do not change the cost
    dap = cfg.MODEL.DAP
    method = get_method(cfg.MODEL.TRANSFER_TYPE)  # dap, or another prompt method (l2p, dualprompt, coda_prompt)
    model = method.build_model(cfg, int(cfg.DATA.NUMBER_CLASSES)).eval()
    if cfg.MODEL.FOLD_FROZEN_BN:  # the frozen backbone BatchNorm-folded, as in a continual run with the key
        from casdap.models.frozen_fold import fold_frozen_parts

        fold_frozen_parts(model)
    plain = build_backbone(cfg).eval()  # the same backbone with its own head over all classes
    trained = getattr(model, "trained", None)
    if trained is None:
        trained = getattr(getattr(model, "dap_task_predictor", None), "trained", None)
    if trained is not None:  # every task trained: the selection considers them all, as at the stream's end
        trained.fill_(True)
    grouping = hasattr(model, "group_tasks")
    if (args.tasks or args.gathered) and not grouping:
        raise SystemExit(f"--tasks and --gathered time CAS-DAP's prompted pass; {method.name} has none")
    if not 0 <= args.tasks <= getattr(model, "num_tasks", 0):
        raise SystemExit(f"--tasks must be 0..{model.num_tasks} (the model's tasks), got {args.tasks}")
    trainable = method.trainable_params(model)
    label = "CAS-DAP" if method.name == "dap" else method.name
    total = sum(p.numel() for p in model.parameters())
    print(f"{method.name} on {cfg.MODEL.BACKBONE} stages={list(dap.STAGES)} injection={dap.INJECTION} "
          f"tokens={dap.NUM_DAP_TOKENS} task_emb={dap.TASK_EMB} pool={dap.PROMPT_POOL}x{dap.KEYS_PER_TASK} keys "
          f"classes={cfg.DATA.NUMBER_CLASSES}")
    print(f"params: trainable {trainable:,} / total {total:,} ({100 * trainable / total:.2f}%); "
          f"plain backbone with head {sum(p.numel() for p in plain.parameters()):,}")
    with torch.no_grad():
        for size in args.sizes:
            x = torch.randn(args.batch, 3, size, size)
            task = torch.arange(args.batch) % args.tasks if args.tasks else None
            fns = {label: lambda x=x, t=task: model(x, task_id=t) if grouping else model(x),
                   "backbone": lambda x=x: plain(x)}
            if args.gathered:
                fns[f"{label} gathered"] = lambda x=x, t=task: gathered(model, x, t)
            samples, _ = time_interleaved(fns, args.reps, warmup=1, min_time=args.min_time, sync=lambda: None)
            tasks = f", {args.tasks} tasks" if args.tasks else ""
            print(f"{size}px batch {args.batch}{tasks}: {label} {ms(samples[label])}, backbone "
                  f"{ms(samples['backbone'])}, ratio {ratio(samples, label, 'backbone')} (median of {args.reps})")
            if args.gathered:
                name = f"{label} gathered"
                print(f"  {name} {ms(samples[name])}, ratio {ratio(samples, name, 'backbone')}; "
                      f"{label} / {name} {ratio(samples, label, name)}")


def ms(samples: list[float]) -> str:
    return f"{1e3 * statistics.median(samples):.1f} ms"


def ratio(samples: dict[str, list[float]], a: str, b: str) -> str:
    """Median [min-max] of the per-repeat ratios of ``a``'s time to ``b``'s."""
    r = Stats.of(x / y for x, y in zip(samples[a], samples[b]))
    return f"{r.median:.2f} [{r.min:.2f}-{r.max:.2f}]"


def gathered(model: torch.nn.Module, x: torch.Tensor, task: torch.Tensor | None) -> object:
    """CAS-DAP's pass with each image's per-task maps gathered, not grouped by task."""
    model.group_tasks = False
    try:
        return model(x, task_id=task)
    finally:
        model.group_tasks = True


if __name__ == "__main__":
    main()

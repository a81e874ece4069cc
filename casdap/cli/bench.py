"""``casdap bench``: training/inference speed, latency and memory of the backbones (and a reference)."""

from __future__ import annotations

import argparse

from casdap.errors import CasdapError


def _csv(kind: type = str):
    def parse(text: str) -> list:
        try:
            return [kind(t) for t in text.split(",") if t.strip()]
        except ValueError:
            msg = f"expected a comma-separated list of {kind.__name__}, got '{text}'"
            raise argparse.ArgumentTypeError(msg) from None

    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from casdap.bench.config import INFER_PATHS, MODES, REFERENCE_PATHS, TRAIN_PATHS, BenchConfig

    d = BenchConfig()
    p = sub.add_parser(
        "bench",
        help="measure training/inference images/s, batch-1 latency and peak memory",
        description="Interleaved, same-process timings of the CAS-ViT backbones: medians over repeats "
        "with their spread, the run's fp32 matmul rate, and speed ratios between variants "
        "(and against a reference model file with --reference).",
    )
    p.add_argument("--models", type=_csv(), default=list(d.models), help="comma-separated (default: all four)")
    p.add_argument("--sizes", type=_csv(int), default=list(d.sizes), help="input sizes in pixels (default: 32,224)")
    p.add_argument("--modes", type=_csv(), default=list(d.modes), help=f"any of {','.join(MODES)}")
    p.add_argument("--paths", type=_csv(), default=list(d.infer_paths),
                   help=f"inference variants, any of {','.join(INFER_PATHS)} (compiled: torch.compile, slow warm-up)")
    p.add_argument("--train-paths", type=_csv(), default=list(d.train_paths),
                   help=f"training variants, any of {','.join(TRAIN_PATHS)}")
    p.add_argument("--batch", type=int, default=None, help="batch for train/infer (default: 128 at <=64 px, else 16)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed samples per variant (median reported)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed calls before timing")
    p.add_argument("--min-time", type=float, default=d.min_time, help="seconds per timed sample")
    p.add_argument("--device", default=d.device, help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--num-classes", type=int, default=d.num_classes)
    p.add_argument("--checkpoint", default=None, help="weights to load (default: random weights)")
    p.add_argument("--reference", default=None, metavar="FILE.py",
                   help="reference model file (e.g. the official CAS-ViT rcvit.py) to compare against, "
                   "built with the same variant name and given our weights")
    p.add_argument("--reference-paths", type=_csv(), default=list(d.reference_paths),
                   help=f"forms the reference is timed in, training and inference: any of {','.join(REFERENCE_PATHS)} "
                   "(default: eager; the others are reported as reference_<path>)")
    p.add_argument("--dap", action="store_true",
                   help="also time CAS-DAP (per-image key selection, default settings) against its backbone")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", default="benchmark.json", help="where to write the results (default: benchmark.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from casdap.bench import BenchConfig, format_table, run_benchmark, write_json

    if args.batch is not None and args.batch < 1:
        raise CasdapError("--batch must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise CasdapError("--threads must be >= 1")
    cfg = BenchConfig(
        models=args.models, sizes=args.sizes, modes=args.modes, infer_paths=args.paths,
        train_paths=args.train_paths, batch=args.batch, repeats=args.repeats, warmup=args.warmup,
        min_time=args.min_time, device=args.device, threads=args.threads, num_classes=args.num_classes,
        checkpoint=args.checkpoint, reference=args.reference, reference_paths=args.reference_paths,
        memory=not args.no_memory, dap=args.dap, seed=args.seed,
    )
    result = run_benchmark(cfg)
    write_json(result, args.json)
    print()
    print(format_table(result))
    print(f"\nwrote {args.json}")
    return 0

"""``casdap demo``: the whole pipeline on the embedded digits, with no download and no flag.

Pretrain the backbone offline (rendered glyphs, never a digit), run DAP and the non-DAP methods on
the same class-incremental stream from that same frozen start, then compare them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from casdap.errors import CasdapError

# Quick methods first, so the first accuracy lines come soon after the backbone is ready.
DEFAULT_METHODS = ("ncm", "linear", "dap", "finetune", "joint")
# Wall seconds of each stage on an idle 2-core machine, one thread (README, "What the demo shows"):
# the basis of the demo's estimate, rescaled by how fast the machine turns out to be.
IDLE_SECONDS = {"pretrain": 77.0, "dap": 30.0, "finetune": 37.0, "linear": 10.0, "ncm": 4.0, "joint": 38.0}
DEFAULT_IDLE_SECONDS = 35.0  # a method not measured above: about what the training methods take


class Eta:
    """Remaining time from the measured idle cost of each stage, scaled by the speed seen so far."""

    def __init__(self, stages: list[str]) -> None:
        self.left = list(stages)
        self.expected_done = 0.0
        self.spent = 0.0

    @staticmethod
    def idle(stage: str) -> float:
        return IDLE_SECONDS.get(stage, DEFAULT_IDLE_SECONDS)

    def done(self, stage: str, seconds: float) -> None:
        self.left.remove(stage)
        if seconds > 0.25 * self.idle(stage):  # not a finished run found and reused
            self.expected_done += self.idle(stage)
            self.spent += seconds

    def remaining(self) -> float:
        speed = self.spent / self.expected_done if self.expected_done else 1.0
        return speed * sum(self.idle(s) for s in self.left)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _methods(text: str) -> list[str]:
    from casdap.continual.methods import METHOD_NAMES as METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(METHODS)}")
    return methods


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, got '{text}'") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="pretrain, run DAP and baselines on the embedded digits, compare them",
        description="End-to-end demo on scikit-learn's digits (5 tasks of 2 classes): offline pretraining of the "
        "frozen backbone, DAP and non-DAP methods on the same stream, then `casdap compare`.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo folder (default: runs/demo)")
    p.add_argument("--methods", type=_methods, default=list(DEFAULT_METHODS),
                   help=f"comma-separated methods (default: {','.join(DEFAULT_METHODS)})")
    p.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds (default: 0)")
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help="epochs of offline backbone pretraining (default: the measured protocol)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides for every method, e.g. SOLVER.TOTAL_EPOCH 2")
    p.set_defaults(func=run)


def _backbone(out: Path, epochs: int | None, cfg, eta: Eta) -> Path:
    """The pretrained backbone of the demo; reused when an earlier run already made it.

    By the documented protocol it is the cache that ``casdap cl`` on the digits uses too
    (``MODEL.MODEL_ROOT`` of digits.yaml); a demo with its own ``--pretrain-epochs`` keeps its own.
    """
    from casdap.engine.threads import set_threads
    from casdap.pretrain.train import DEFAULT_PROTOCOL, pretrain_backbone, sidecar_path

    set_threads("casdap demo", int(cfg.DATA.CROPSIZE))

    if epochs is None:
        path = Path(cfg.MODEL.MODEL_ROOT) / f"{cfg.MODEL.BACKBONE}.pth"
    else:
        path = out / "model" / f"{cfg.MODEL.BACKBONE}.pth"
    if path.is_file() and sidecar_path(path).is_file():
        print(f"[1/3] backbone: reusing {path} (delete it to pretrain again)")
        eta.left.remove("pretrain")
        return path
    print(f"[1/3] backbone: pretraining {cfg.MODEL.BACKBONE} offline on rendered glyphs (no digit is ever shown)")
    start = time.perf_counter()
    info = pretrain_backbone(cfg.MODEL.BACKBONE, path, **{**DEFAULT_PROTOCOL, **({} if epochs is None else
                                                                                    {"epochs": epochs})})
    seconds = time.perf_counter() - start
    eta.done("pretrain", seconds)
    print(f"      {info.get('head_classes', '?')} classes, {info.get('epochs', '?')} epochs, "
          f"{seconds:.0f} s -> {path}")
    return path


def run_folder(out: Path, method: str, seed: int, opts: list[str]) -> Path:
    """``out/<method>/seed<seed>``; with overrides, a folder of their own (so no run made with other
    settings is ever reused or mixed into the comparison)."""
    if not opts:
        return out / method / f"seed{seed}"
    import hashlib

    tag = hashlib.sha1("\0".join(opts).encode()).hexdigest()[:8]
    return out / method / f"seed{seed}-{tag}"


def run(args: argparse.Namespace) -> int:
    from casdap.compare import report
    from casdap.config import load_config, shipped_config
    from casdap.continual.runner import run_continual

    if args.pretrain_epochs is not None and args.pretrain_epochs < 1:
        raise CasdapError("--pretrain-epochs must be at least 1")
    start = time.perf_counter()
    out: Path = args.out
    config = shipped_config("digits")
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    runs = [(s, m) for s in args.seeds for m in args.methods]
    eta = Eta(["pretrain", *(m for _, m in runs)])
    print(f"casdap demo: about {_minutes(sum(eta.idle(s) for s in eta.left))} on an idle 2-core machine "
          "(less when the backbone or runs exist already, longer while other jobs run)", flush=True)
    t0 = time.perf_counter()
    weights = _backbone(out, args.pretrain_epochs, load_config(config, args.opts), eta)
    stage_times = [("backbone", time.perf_counter() - t0)]

    # AUTO_RESUME: a demo run again with the same settings reuses finished runs and completes broken ones.
    run_dirs = []
    total = len(runs)
    print(f"[2/3] continual learning: {total} runs on {config.name} (5 tasks of 2 digits)")
    for i, (seed, method) in enumerate(runs, 1):
        run_dir = run_folder(out, method, seed, args.opts)
        cfg = load_config(config, [
            "MODEL.TRANSFER_TYPE", method, "SEED", str(seed), "OUTPUT_DIR", str(run_dir),
            "MODEL.WEIGHT_PATH", str(weights), "SOLVER.AUTO_RESUME", "True", *args.opts,
        ])
        print(f"--- run {i}/{total}: {method}, seed {seed} -> {run_dir}")
        t0 = time.perf_counter()
        result = run_continual(cfg)
        seconds = time.perf_counter() - t0
        eta.done(method, seconds)
        stage_times.append((f"{method} seed {seed}", seconds))
        m = result.metrics
        forgetting = "-" if m["forgetting"] is None else f"{m['forgetting']:.3f}"
        left = f", about {_minutes(eta.remaining())} left" if eta.left else ""
        print(f"    final acc {m['final_acc']:.3f}, forgetting {forgetting}, {seconds:.0f} s{left}", flush=True)
        run_dirs.append(run_dir)

    print("[3/3] comparison")
    written = report(run_dirs, out / "compare", skipped_prefix="")
    plots = sorted(p for p in written if p.suffix == ".png")
    print(f"\ntables: {out / 'compare' / 'summary.md'}, {out / 'compare' / 'summary.csv'}")
    print(f"plots:  {len(plots)} PNG files under {out / 'compare'}")
    print(f"TensorBoard: tensorboard --logdir {out}")
    print("stage times: " + ", ".join(f"{name} {s:.0f} s" for name, s in stage_times))
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0

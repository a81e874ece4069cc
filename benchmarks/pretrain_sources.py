"""Measure pretraining protocols for the embedded digits stream (the table in docs/pretraining.md).

Each run pretrains a backbone on one source and records, after every epoch, the frozen-feature
quality on the digits (nearest class mean over 10 digits, nearest task mean over the 5 tasks);
``--random-init`` rows measure untrained backbones. One JSON line per run is appended to --out.

    python benchmarks/pretrain_sources.py --source glyphs --epochs 8 --images-per-class 26 --seeds 0 1 2
    python benchmarks/pretrain_sources.py --table   # the markdown table of everything in --out
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from casdap import create_model
from casdap.pretrain.evaluate import digits_feature_quality
from casdap.pretrain.sources import SOURCES
from casdap.pretrain.train import DEFAULT_PROTOCOL, pretrain_backbone

QUALITY_KEYS = ("ncm_acc", "ncm_acc_cosine", "task_acc", "task_acc_euclidean", "mean_cosine", "task_margin")


def _cell(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _measured_cell(rows: list[dict], key: str) -> str:
    """Mean over the rows that have ``key``; says how many seeds that is when some lack it."""
    values = [r[key] for r in rows if key in r]
    if not values:
        return "n/m"
    return _cell(values, 0) + ("" if len(values) == len(rows) else f" ({len(values)} of {len(rows)} seeds)")


def table(path: Path) -> str:
    """Markdown table, one row per protocol, mean ± std over the seeds measured."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for line in path.read_text().splitlines():
        r = json.loads(line)
        groups[(r["source"], r.get("classes", 0), r["epochs"], r.get("images_per_class", 0))].append(r)
    head = ("| source | classes | epochs x images/class | images seen | seeds | pretrain CPU s | pretrain wall s "
            "| digits NCM | digits NCM (cos) | task proxy (cos) | mean cosine | task margin |")
    rows = [head, "|" + "---|" * 12]
    for (source, classes, epochs, ipc), rs in groups.items():
        rows.append("| " + " | ".join([
            source, str(classes or "-"), f"{epochs} x {ipc}" if epochs else "-", str(rs[0].get("images_seen", 0)),
            ",".join(str(r["seed"]) for r in rs),
            _measured_cell(rs, "pretrain_cpu_s") if epochs else "0",
            _cell([r["pretrain_s"] for r in rs], 0) if epochs else "0",
            _cell([r["ncm_acc"] for r in rs]), _cell([r["ncm_acc_cosine"] for r in rs]),
            _cell([r["task_acc"] for r in rs]), _cell([r["mean_cosine"] for r in rs]),
            _cell([r["task_margin"] for r in rs], 4),
        ]) + " |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="rcvit_xs")
    p.add_argument("--source", choices=sorted(SOURCES), default=DEFAULT_PROTOCOL["source"])
    p.add_argument("--random-init", action="store_true", help="measure untrained backbones instead")
    p.add_argument("--epochs", type=int, default=DEFAULT_PROTOCOL["epochs"])
    p.add_argument("--images-per-class", type=int, default=DEFAULT_PROTOCOL["images_per_class"])
    p.add_argument("--lr", type=float, default=DEFAULT_PROTOCOL["lr"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--eval-every", type=int, default=1, help="measure the digits features every N epochs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="output/pretrain_sources.jsonl")
    p.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    args = p.parse_args()
    if args.table:
        print(table(Path(args.out)))
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        if args.random_init:
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            q = digits_feature_quality(create_model(args.model, num_classes=10, distillation=False))
            row = {"source": "random init", "seed": seed, "epochs": 0, "pretrain_s": 0.0, **q,
                   "eval_s": round(time.perf_counter() - t0, 1)}
        else:
            def measure(epoch: int, model: torch.nn.Module) -> dict | None:
                if epoch % args.eval_every == 0 or epoch == args.epochs:
                    return digits_feature_quality(model)
                return None

            with tempfile.TemporaryDirectory() as tmp:
                side = pretrain_backbone(args.model, Path(tmp) / f"{args.model}.pth", epochs=args.epochs, seed=seed,
                                         source=args.source, images_per_class=args.images_per_class, lr=args.lr,
                                         progress=False, on_epoch_end=measure)
            last = side["log"][-1]
            row = {"source": args.source, "seed": seed, "epochs": args.epochs,
                   "images_per_class": args.images_per_class, "classes": side["head_classes"], "lr": args.lr,
                   "images_seen": side["images_seen"], "pretrain_s": side["wall_time_s"],
                   "pretrain_cpu_s": side["cpu_time_s"],
                   "threads": args.threads,
                   **{k: last[k] for k in QUALITY_KEYS},
                   "per_epoch": [{k: round(v, 3) if isinstance(v, float) else v for k, v in e.items()}
                                 for e in side["log"]]}
        print(json.dumps({k: v for k, v in row.items() if k != "per_epoch"}), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

"""Choose MODEL.DAP.SHRINKAGE for ``TASK_INFERENCE gaussian`` / ``head`` / ``lda`` on the validation split.

The query is the frozen backbone's pooled feature, so task inference from class statistics does
not depend on DAP's training (with ``MODEL.DAP.QUERY adapted``, on the first task's adaptation
only: ``--query-checkpoint`` takes the adapted backbone from a validation run's ``task_000.pth``):
this script builds the stream with ``DATA.VALIDATION`` (a held-out
share of each class's training images replaces the test set), gathers each class's statistics of
the clean training queries task by task, as a run does, and reports the task-identity accuracy on
the held-out images after every task (and its mean) for each shrinkage. Never reads the test set.

    python benchmarks/dap_task_inference_validation.py --config-file configs/dap/embedded_shift.yaml \\
        --opts MODEL.MODEL_ROOT /work/model_cache DATA.VALIDATION 0.2
    python benchmarks/dap_task_inference_validation.py --config-file configs/dap/embedded_shift.yaml \
        --predictor lda --query-checkpoint runs/val/qa/checkpoints/task_000.pth --opts DATA.VALIDATION 0.2 ...
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.data import DataLoader

from casdap.config import load_config
from casdap.continual.benchmarks import build_benchmark, clean_training_views
from casdap.dap_registry import TASK_PREDICTORS, load
from casdap.models.build import build_backbone
from casdap.models.class_statistics import add_moments, statistics_from_moments

GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


@torch.no_grad()
def _queries(backbone, dataset, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    with clean_training_views():
        for x, y, *_ in DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=0):
            feats.append(backbone.forward_pooled(x))
            labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


def adapted_query(path: str) -> dict[str, torch.Tensor]:
    """The adapted query backbone's state in a run's checkpoint (``query_backbone.*``, else the
    backbone the prompts run on, ``backbone.*``)."""
    from casdap.checkpoint import read_checkpoint

    state = read_checkpoint(path)["model"]
    if not bool(state.get("adapted", False)):
        raise SystemExit(f"{path}: no adapted query in this checkpoint (a run with MODEL.DAP.QUERY adapted, "
                         "after its first task)")
    prefix = "query_backbone." if any(k.startswith("query_backbone.") for k in state) else "backbone."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--predictor", default="gaussian", choices=[n for n in TASK_PREDICTORS if n != "keys"])
    ap.add_argument("--query-checkpoint", default=None,
                    help="a checkpoint of a DATA.VALIDATION run with MODEL.DAP.QUERY adapted: its query backbone")
    ap.add_argument("--grid", type=float, nargs="+", default=list(GRID))
    ap.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = ap.parse_args()
    cfg = load_config(args.config_file, args.opts)
    if not cfg.DATA.VALIDATION > 0:
        raise SystemExit("set DATA.VALIDATION > 0: shrinkage is chosen on the validation split, never on test")
    torch.manual_seed(0)
    bench = build_benchmark(cfg)
    backbone = build_backbone(cfg, num_classes=0).eval()
    if args.query_checkpoint:
        backbone.load_state_dict(adapted_query(args.query_checkpoint))
    train = [_queries(backbone, e.dataset.eval()) for e in bench.scenario.train_stream]
    held = [_queries(backbone, e.dataset.eval()) for e in bench.scenario.test_stream]
    k, c, n_tasks = bench.num_classes, backbone.num_features, len(train)
    cls = load("task_predictor", TASK_PREDICTORS, args.predictor)
    results = {}
    for s in args.grid:
        count, total, outer = (torch.zeros(k, dtype=torch.float64), torch.zeros(k, c, dtype=torch.float64),
                               torch.zeros(k, c, c, dtype=torch.float64))
        class_task = torch.full((k,), -1, dtype=torch.long)
        pred = cls(n_tasks, c, num_classes=k, shrinkage=s)
        per_step = []
        for t, (f, y) in enumerate(train):
            add_moments(count, total, outer, f, y)
            class_task[y.unique()] = t
            pred.fit(statistics_from_moments(count, total, outer, class_task))
            hits = n = 0
            for u in range(t + 1):  # the held-out images of the tasks trained so far
                hf, hy = held[u]
                hits += int((pred(hf).argmax(1) == class_task[hy]).sum())
                n += len(hy)
            per_step.append(round(100 * hits / n, 2))
        results[s] = {"final_tii": per_step[-1], "mean_tii": round(sum(per_step) / len(per_step), 2),
                      "per_task": per_step}
        print(f"shrinkage {s}: final TII {per_step[-1]:.2f}%, mean over tasks {results[s]['mean_tii']:.2f}%",
              flush=True)
    best = max(results, key=lambda s: (results[s]["final_tii"], results[s]["mean_tii"]))
    print(json.dumps({"predictor": args.predictor, "best_shrinkage": best, "results": results}))


if __name__ == "__main__":
    main()

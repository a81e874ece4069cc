"""Choose MODEL.DAP.FUSION_WEIGHT (fused prediction, casdap/continual/fusion.py) on the validation split.

The weight changes no training: a run trains the same model whatever it is, and only the final
class scores move. So one run on the validation split (``DATA.VALIDATION``: a held-out share of each
class's training images replaces the test set) serves every candidate: this script runs it (or
finds it finished) with the query's class Gaussians kept, reloads the checkpoint of every task, and
scores the validation images of the tasks trained so far under each candidate weight, per image, as
a run with that weight would (the same fused scores: ``casdap.continual.fusion.fused_scores``). It
reports each weight's accuracy matrix and final accuracy, and the query's Gaussians alone, and
picks the weight with the best final validation accuracy (the smallest such weight on a tie). The
test set is never read. The result also goes to ``fusion_weights.json`` in the run folder.

    python benchmarks/fusion_weight_validation.py --config-file configs/dap/embedded_shift.yaml \\
        --opts MODEL.MODEL_ROOT /work/model_cache DATA.VALIDATION 0.2 OUTPUT_DIR runs/fusion_val/dap
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from casdap.config import load_config
from casdap.continual.fusion import Fused, check_fusion_weight, fused_scores
from casdap.errors import CasdapError

GRID = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
__all__ = ["GRID", "score_weights"]


class _Parts(Fused):
    """The wrapped mode's class scores and the query Gaussians' scores of a batch, recorded as a fused
    prediction reads them; the unfused scores are returned."""

    def fuse(self, strategy, x, out, logits):
        self.parts = (logits.float().cpu(), self.query_scores(strategy, x, out).float().cpu())
        return logits


def _strategy(cfg, out: Path, task: int, bench):
    """The run's strategy as it was after ``task`` (its checkpoint), with the recording mode."""
    from casdap.checkpoint import read_checkpoint
    from casdap.continual.methods import get_method
    from casdap.continual.runner import eval_batch_size

    ckpt = read_checkpoint(out / "checkpoints" / f"task_{task:03d}.pth")
    method = get_method(cfg.MODEL.TRANSFER_TYPE).for_config(cfg)
    model = method.build_model(cfg, bench.num_classes)
    model.load_state_dict(ckpt["model"])
    strategy = method.build_strategy(cfg, model, None, [], train_mb_size=cfg.DATA.BATCH_SIZE, train_epochs=1,
                                     eval_mb_size=eval_batch_size(cfg), device="cpu", evaluator=None)
    strategy.load_state_dict(ckpt["strategy"], train_stream=bench.scenario.train_stream,
                             task_classes=bench.task_classes, done=int(ckpt["tasks_done"]))
    strategy.prediction_mode = _Parts(strategy.prediction_mode.base, 0.0)
    return strategy


@torch.no_grad()
def score_weights(cfg, out: Path, weights) -> dict:
    """Accuracy matrices ``A[i][j]`` (validation images of task ``j`` after task ``i``) of the finished
    run in ``out`` under each fusion weight, and of the query's class Gaussians alone."""
    from casdap.continual.benchmarks import build_benchmark
    from casdap.continual.runner import eval_batch_size

    weights = [check_fusion_weight(w) for w in weights]
    bench = build_benchmark(cfg)
    names = [*map(str, weights), "query_alone"]
    matrices: dict[str, list[list[float]]] = {n: [] for n in names}
    for t in range(bench.n_tasks):
        strategy = _strategy(cfg, out, t, bench)
        rows = {n: [] for n in names}
        for exp in bench.scenario.test_stream[: t + 1]:
            hits = dict.fromkeys(names, 0)
            total = 0
            loader = DataLoader(exp.dataset.eval(), batch_size=eval_batch_size(cfg), shuffle=False, num_workers=0)
            for batch in loader:
                x, y = batch[0], batch[1]
                strategy.predict(x, y)
                logits, query = strategy.prediction_mode.parts
                for w, n in zip(weights, names):
                    hits[n] += int((fused_scores(logits, query, w).argmax(1) == y).sum())
                hits["query_alone"] += int((query.argmax(1) == y).sum())
                total += len(y)
            for n in names:
                rows[n].append(hits[n] / total)
        for n in names:
            matrices[n].append(rows[n])
    final = {n: sum(m[-1]) / len(m[-1]) for n, m in matrices.items()}
    best = max(weights, key=lambda w: (final[str(w)], -w))
    return {"weights": weights, "final_acc": final, "acc_matrix": matrices, "best_weight": best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--weights", type=float, nargs="+", default=list(GRID))
    ap.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = ap.parse_args()
    from casdap.continual.runner import prepare_backbone, run_continual

    cfg = load_config(args.config_file, args.opts)
    if not cfg.DATA.VALIDATION > 0:
        raise CasdapError("set DATA.VALIDATION above 0: the fusion weight is chosen on the validation split, "
                          "never on the test set")
    if not cfg.OUTPUT_DIR:
        raise CasdapError("set OUTPUT_DIR: the validation run's folder (its checkpoints are scored)")
    cfg.defrost()
    cfg.SOLVER.AUTO_RESUME = True  # a finished validation run is scored as it is
    cfg.CONTINUAL.KEEP_TASK_CHECKPOINTS = True  # every task's model is scored
    if not float(cfg.MODEL.DAP.FUSION_WEIGHT) > 0:  # the model keeps the Gaussians; training is unchanged
        cfg.MODEL.DAP.FUSION_WEIGHT = 1.0
    cfg.freeze()
    prepare_backbone(cfg)
    run = run_continual(cfg, progress=False)
    result = score_weights(load_config(str(run.output_dir / "config.yaml"), []), run.output_dir, args.weights)
    for w in result["weights"]:
        print(f"fusion weight {w:g}: final validation accuracy {100 * result['final_acc'][str(w)]:.2f}%")
    print(f"query's class Gaussians alone: {100 * result['final_acc']['query_alone']:.2f}%")
    print(f"best: MODEL.DAP.FUSION_WEIGHT {result['best_weight']:g}")
    (run.output_dir / "fusion_weights.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"best_weight": result["best_weight"], "final_acc": result["final_acc"]}))


if __name__ == "__main__":
    main()

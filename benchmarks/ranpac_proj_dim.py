"""How large a random projection for ``ranpac``? Accuracy on held-out training images, never the test set.

    python benchmarks/ranpac_proj_dim.py --config configs/dap/digits.yaml --dims 250 500 1000 2000 4000 --seeds 0 1 2

For every seed, the pooled backbone features of each task's training images are computed once; a
seeded fifth of each class is set aside (``--holdout``). On the rest, ``ranpac`` runs as in a
continual run (task by task: statistics added, the ridge strength chosen on a fifth of the images
seen so far, the classifier fitted), and after the last task the set-aside images of every class
are classified. Prints that accuracy, the chosen ridge strengths and the fitting time per size.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from casdap.config import load_config
from casdap.continual.benchmarks import build_benchmark
from casdap.continual.prototypes import HOLDOUT_EVERY, RanPACClassifier
from casdap.models.build import build_backbone


def _split(labels: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Boolean mask: a seeded ``fraction`` of each class's rows."""
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        mask[idx[: max(1, round(len(idx) * fraction))]] = True
    return mask


@torch.no_grad()
def _features(backbone, dataset, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False)
    feats, labels = [], []
    for x, y, *_ in loader:
        feats.append(backbone.forward_pooled(x))
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/dap/digits.yaml")
    ap.add_argument("--dims", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--opts", nargs="*", default=[], help="KEY VALUE config overrides")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results: dict[int, list[float]] = {m: [] for m in args.dims}
    times: dict[int, list[float]] = {m: [] for m in args.dims}
    for seed in args.seeds:
        cfg = load_config(args.config, [*args.opts, "SEED", str(seed), "DEVICE", "cpu"])
        bench = build_benchmark(cfg)
        backbone = build_backbone(cfg, num_classes=0).eval()
        tasks = [_features(backbone, e.dataset) for e in bench.scenario.train_stream]
        gen = torch.Generator().manual_seed(seed)
        masks = [_split(y, args.holdout, gen) for _, y in tasks]
        test_f = torch.cat([f[m] for (f, _), m in zip(tasks, masks)])
        test_y = torch.cat([y[m] for (_, y), m in zip(tasks, masks)])
        for dim in args.dims:
            model = RanPACClassifier(backbone, bench.num_classes, dim, seed=seed)
            t0 = time.perf_counter()
            ridges = []
            for (f, y), m in zip(tasks, masks):
                f, y = f[~m], y[~m]
                h = F.relu(f @ model.projection).double()
                onehot = F.one_hot(y, bench.num_classes).double()
                val = _split(y, 1 / HOLDOUT_EVERY, gen)  # the runner's held-out fifth for the ridge strength
                hv, ov = h[val], onehot[val]
                model.add_statistics(h.t() @ h, h.t() @ onehot, onehot.sum(0), hv.t() @ hv, hv.t() @ ov, ov.sum(0))
                ridges.append(model.fit()[0])
            times[dim].append(time.perf_counter() - t0)
            acc = float((model.logits_from(F.relu(test_f @ model.projection)).argmax(1) == test_y).float().mean())
            results[dim].append(acc)
            print(f"seed {seed} M {dim:5d}: held-out accuracy {100 * acc:.2f}%  ridges {ridges}  "
                  f"fit {times[dim][-1]:.1f}s", flush=True)
    print("\nM      held-out acc (mean ± std over seeds)   fit time per run")
    for dim in args.dims:
        r = results[dim]
        sd = statistics.stdev(r) if len(r) > 1 else 0.0
        print(f"{dim:5d}  {100 * statistics.mean(r):.2f} ± {100 * sd:.2f}                  "
              f"{statistics.mean(times[dim]):.1f}s")


if __name__ == "__main__":
    main()

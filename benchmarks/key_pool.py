"""How many keys per task? Task selection on held-out training images, never the test set.

    python benchmarks/key_pool.py --config configs/dap/digits.yaml --keys 1 2 4 8 16 32 --seeds 0 1 2

DAP's keys get gradients only from the pull term, which depends on the frozen queries alone, so the
keys a DAP run learns can be reproduced on cached queries: for every task in stream order, the
task's keys are seeded from its first batch and trained with the run's optimiser settings
(``SOLVER.BASE_LR``, betas, linear decay, ``SOLVER.TOTAL_EPOCH`` epochs of ``DATA.BATCH_SIZE``) on
a seeded share of the task's training images; every task's held-out share is then matched against
all keys (``CASDAP.task_similarity``). Prints the task-selection accuracy per setting and seed.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from casdap.config import load_config
from casdap.continual.benchmarks import build_benchmark
from casdap.models.build import build_dap_model


def _queries(model, dataset, batch: int = 256) -> torch.Tensor:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False)
    return torch.cat([model.forward_query(x) for x, *_ in loader])


def _split(n: int, holdout: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    n_out = max(1, round(n * holdout))
    return perm[n_out:], perm[:n_out]


def _fit_keys(model, queries: list[torch.Tensor], cfg, gen: torch.Generator) -> None:
    """Train each task's keys on its queries with the pull term only, as a DAP run does."""
    s = cfg.SOLVER
    batch = cfg.DATA.BATCH_SIZE
    for t, q in enumerate(queries):
        # a fresh optimiser state per task, as the runner resets it for every experience
        opt = torch.optim.Adam([model.dap_keys], lr=s.BASE_LR, betas=(s.BETA1, s.BETA2))
        steps = s.TOTAL_EPOCH * -(-len(q) // batch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i, steps=steps: 1.0 - i / steps)
        for epoch in range(s.TOTAL_EPOCH):
            order = torch.randperm(len(q), generator=gen)
            if epoch == 0:  # as DAPStrategy: seed the task's keys from its first batch
                model.seed_keys(t, q[order[:batch]], generator=gen)
            for i in range(0, len(q), batch):
                pull = model.task_similarity(q[order[i:i + batch]])[:, t].mean()
                opt.zero_grad()
                (-cfg.MODEL.DAP.SIM_LAMBDA * pull).backward()
                opt.step()
                sched.step()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/dap/digits.yaml")
    parser.add_argument("--keys", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--holdout", type=float, default=0.2, help="share of each task's training images held out")
    parser.add_argument("--opts", nargs="*", default=[], help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    results: dict[int, list[float]] = {m: [] for m in args.keys}
    for seed in args.seeds:
        cfg = load_config(args.config, [*args.opts, "SEED", str(seed)])
        bench = build_benchmark(cfg)
        gen = torch.Generator().manual_seed(1000 + seed)
        model = build_dap_model(cfg).eval()
        fit, held = [], []
        for exp in bench.scenario.train_stream:
            with torch.no_grad():
                q = _queries(model, exp.dataset)
            a, b = _split(len(q), args.holdout, gen)
            fit.append(q[a])
            held.append(q[b])
        held_task = torch.cat([torch.full((len(h),), t) for t, h in enumerate(held)])
        for m in args.keys:
            torch.manual_seed(seed)
            model = build_dap_model(load_config(args.config, [*args.opts, "MODEL.DAP.KEYS_PER_TASK", str(m)]))
            _fit_keys(model, fit, cfg, torch.Generator().manual_seed(seed))
            with torch.no_grad():
                picks = model.task_similarity(torch.cat(held)).argmax(1)
            results[m].append(100.0 * (picks == held_task).float().mean().item())
            print(f"seed {seed} keys/task {m:3d}: held-out task selection {results[m][-1]:.1f}%", flush=True)
    print("\nkeys/task | held-out task selection (mean ± std over seeds)")
    for m, accs in results.items():
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{m:9d} | {statistics.mean(accs):.1f} ± {spread:.1f}")


if __name__ == "__main__":
    main()

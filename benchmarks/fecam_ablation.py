"""What FeCAM's ingredients cost on a run's frozen features: a factorial of them on cached features.

``fecam`` scores each class by the Mahalanobis distance of the L2-normalised feature to the
L2-normalised class mean under the class's shrunk covariance normalised to a correlation matrix,
with no log-determinant (docs/prototype_baselines.md). This script takes the frozen (after
``BASELINES.FIRST_SESSION``: adapted) backbone of a finished ``slda``/``fecam`` run, extracts the
pooled features of the run's training images (evaluation transform) and test images once, then
scores the test set in the class-incremental protocol's final state (all classes, per image) for
every combination of

* L2 normalisation: ``off`` (raw features), ``query`` (``fecam``'s: covariances of the raw
  features, the query and the class mean L2-normalised; FeCAM's ResNet code), ``stats`` (every
  feature L2-normalised before the means and covariances; FeCAM's ViT script);
* covariance normalised to a correlation matrix: on / off;
* the log-determinant term of the Gaussian log-likelihood: on / off;
* shrinkage form: ``fecam`` ``Sigma + s (V1 I + V2 (1 - I))``, ``ridge`` ``Sigma + s V1 I`` and
  ``convex`` ``(1 - s) Sigma + s V1 I`` (``V1``/``V2``: mean diagonal / off-diagonal entry), over a
  grid of ``s``;

plus anchors computed with the project's own classes: ``FeCAMClassifier`` (``fecam``),
``SLDAClassifier`` (``slda``: one pooled covariance) and ``GaussianTaskPredictor``'s class scores
(CAS-DAP's class Gaussians of the query). Every shrinkage is chosen on a held-out fifth of the
training features of each class (seeded; fitted on the other four fifths, scored over all
classes); the test numbers are for the value so chosen, refitted on all training features. Test
images are never used to choose anything.

    python benchmarks/fecam_ablation.py extract RUN_DIR FEATURES.pt   # once (about a minute)
    python benchmarks/fecam_ablation.py ablate FEATURES.pt [--json OUT.json]   # seconds
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
HOLDOUT = 0.2
HOLDOUT_SEED = 0


# -- features ------------------------------------------------------------------------------------


@torch.no_grad()
def extract(run_dir: Path, out: Path) -> None:
    """Pooled features of the run's training (evaluation transform) and test images under the
    backbone of its last checkpoint (``backbone.*``: the adapted one after a first session)."""
    from torch.utils.data import DataLoader

    from casdap.checkpoint import read_checkpoint
    from casdap.config import load_config
    from casdap.continual.benchmarks import build_benchmark, clean_training_views
    from casdap.models.build import build_backbone

    cfg = load_config(run_dir / "config.yaml")
    ckpts = sorted((run_dir / "checkpoints").glob("task_*.pth"))
    if not ckpts:
        raise SystemExit(f"{run_dir}: no checkpoints/task_*.pth")
    state = read_checkpoint(ckpts[-1])["model"]
    backbone = build_backbone(cfg, num_classes=0).eval()
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    bench = build_benchmark(cfg)

    def pooled(streams) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        with clean_training_views():
            for exp in streams:
                for x, y, *_ in DataLoader(exp.dataset.eval(), batch_size=256, shuffle=False, num_workers=0):
                    feats.append(backbone.forward_pooled(x).float())
                    labels.append(torch.as_tensor(y))
        return torch.cat(feats), torch.cat(labels)

    train_x, train_y = pooled(bench.scenario.train_stream)
    test_x, test_y = pooled(bench.scenario.test_stream)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
                "task_classes": bench.task_classes, "checkpoint": str(ckpts[-1]), "seed": int(cfg.SEED),
                "first_session": bool(cfg.BASELINES.FIRST_SESSION), "method": cfg.MODEL.TRANSFER_TYPE}, out)
    print(f"{out}: train {tuple(train_x.shape)}, test {tuple(test_x.shape)} from {ckpts[-1]}")


def holdout_split(y: torch.Tensor, share: float = HOLDOUT, seed: int = HOLDOUT_SEED) -> torch.Tensor:
    """A seeded ``share`` of each class's rows (bool mask)."""
    gen = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(y), dtype=torch.bool)
    for c in y.unique():
        idx = torch.nonzero(y == c).flatten()
        held[idx[torch.randperm(len(idx), generator=gen)[: max(1, round(share * len(idx)))]]] = True
    return held


# -- the factorial ---------------------------------------------------------------------------------


def class_stats(x: torch.Tensor, y: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means ``[K, d]`` and unbiased covariances ``[K, d, d]`` (float64)."""
    x = x.double()
    means, covs = [], []
    for c in classes.tolist():
        r = x[y == c]
        means.append(r.mean(0))
        covs.append(torch.cov(r.t()))
    return torch.stack(means), torch.stack(covs)


def shrink(cov: torch.Tensor, form: str, s: float) -> torch.Tensor:
    d = cov.shape[-1]
    eye = torch.eye(d, dtype=cov.dtype)
    v1 = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)[:, None, None]
    v2 = ((cov * (1 - eye)).sum((-2, -1)) / (d * (d - 1)))[:, None, None]
    if form == "fecam":
        return cov + s * (v1 * eye + v2 * (1 - eye))
    if form == "ridge":
        return cov + s * v1 * eye
    if form == "convex":
        return (1 - s) * cov + s * v1 * eye
    raise ValueError(form)


def correlation(cov: torch.Tensor) -> torch.Tensor:
    sd = torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(1e-12).sqrt()
    return cov / (sd[:, :, None] * sd[:, None, :])


def gaussian_scores(q: torch.Tensor, means: torch.Tensor, metric: torch.Tensor, logdet: bool) -> torch.Tensor:
    """``-(x - mu_k)' M_k^-1 (x - mu_k) [- log det M_k]`` for queries ``[B, d]``: ``[B, K]``."""
    chol = torch.linalg.cholesky(metric)  # [K, d, d]
    diff = (q.double()[None] - means[:, None, :]).transpose(1, 2)  # [K, d, B]
    z = torch.linalg.solve_triangular(chol, diff, upper=False)
    out = -(z ** 2).sum(1).t()  # [B, K]
    if logdet:
        out = out - 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)[None]
    return out


def variant_scores(tx, ty, q, classes, l2: str, corr: bool, logdet: bool, form: str, s: float) -> torch.Tensor:
    if l2 == "stats":
        tx, q = F.normalize(tx, dim=-1), F.normalize(q, dim=-1)
    means, covs = class_stats(tx, ty, classes)
    if l2 == "query":
        means, q = F.normalize(means, dim=-1), F.normalize(q, dim=-1)
    metric = shrink(covs, form, s)
    if corr:
        metric = correlation(metric)
    return gaussian_scores(q, means, metric, logdet)


def accuracy(scores: torch.Tensor, y: torch.Tensor, classes: torch.Tensor) -> float:
    return 100.0 * float((classes[scores.argmax(1)] == y).double().mean())


# -- anchors: the project's own classes ------------------------------------------------------------


class _Stub(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.num_features = d


def project_scores(name: str, tx, ty, q, num_classes: int, s: float) -> torch.Tensor:
    """Class scores ``[B, num_classes]`` of ``fecam``/``slda`` (casdap.continual.discriminants) or
    CAS-DAP's ``GaussianTaskPredictor`` fitted on ``(tx, ty)`` under shrinkage ``s``."""
    from casdap.continual.discriminants import FeCAMClassifier, SLDAClassifier
    from casdap.models.class_statistics import add_moments, statistics_from_moments
    from casdap.models.task_inference import GaussianTaskPredictor

    d = tx.shape[1]
    if name == "gaussian":
        k = num_classes
        count, total = torch.zeros(k, dtype=torch.float64), torch.zeros(k, d, dtype=torch.float64)
        outer = torch.zeros(k, d, d, dtype=torch.float64)
        add_moments(count, total, outer, tx, ty)
        pred = GaussianTaskPredictor(1, d, k, shrinkage=s)
        pred.fit(statistics_from_moments(count, total, outer, torch.zeros(k, dtype=torch.long)))
        return pred.class_scores(q.float())
    cls = {"fecam": FeCAMClassifier, "slda": SLDAClassifier}[name]
    model = cls(_Stub(d), num_classes, s)
    moments = model.empty_moments()
    model.add_moments(moments, tx, ty)
    model.add_statistics(*moments)
    model.fit(s)
    return model.logits_from(q)


# -- driver ----------------------------------------------------------------------------------------


def choose(score_fn, grid, fit_x, fit_y, val_x, val_y, classes) -> tuple[float, dict[float, float]]:
    """The grid value with the best held-out accuracy (first on ties) and every value's accuracy."""
    accs = {s: accuracy(score_fn(fit_x, fit_y, val_x, s), val_y, classes) for s in grid}
    best = max(grid, key=lambda s: (accs[s], -grid.index(s)))
    return best, accs


def per_task_accuracy(fn, s: float, tx, ty, qx, qy, task_classes) -> list[float]:
    """Accuracy after each task: fitted on the training features of the tasks so far, every test
    image of those tasks scored over their classes (the class-incremental protocol, per image)."""
    accs = []
    for t in range(len(task_classes)):
        seen = torch.tensor(sorted(c for task in task_classes[: t + 1] for c in task))
        fit, test = torch.isin(ty, seen), torch.isin(qy, seen)
        remap = torch.full((int(seen.max()) + 1,), -1, dtype=torch.long)
        remap[seen] = torch.arange(len(seen))
        scores = fn(tx[fit], remap[ty[fit]], qx[test], s)
        accs.append(accuracy(scores, remap[qy[test]], torch.arange(len(seen))))
    return accs


def ablate(path: Path, json_out: Path | None, sections: set[str]) -> None:
    data = torch.load(path, weights_only=True)
    tx, ty, qx, qy = data["train_x"], data["train_y"], data["test_x"], data["test_y"]
    task_classes = data["task_classes"]
    num_classes = int(max(max(t) for t in task_classes)) + 1
    classes = torch.arange(num_classes)
    held = holdout_split(ty)
    fx, fy, vx, vy = tx[~held], ty[~held], tx[held], ty[held]
    print(f"{path}: seed {data['seed']}, {data['method']}, first session {data['first_session']}; "
          f"train {len(ty)} ({int(held.sum())} held out to choose s), test {len(qy)}, {num_classes} classes")
    rows = []

    def record(name: str, fn, grid) -> dict:
        t0 = time.time()
        s, val = choose(fn, grid, fx, fy, vx, vy, classes)
        test = {g: accuracy(fn(tx, ty, qx, g), qy, classes) for g in grid}
        row = {"variant": name, "chosen_s": s, "held_out_acc": val[s], "test_acc": test[s],
               "held_out_by_s": val, "test_by_s": test}
        rows.append(row)
        print(f"{name:58s} s {s:<6g} held-out {val[s]:5.1f}  test {test[s]:5.1f}   "
              f"(test over s: {' '.join(f'{test[g]:.1f}' for g in grid)}; {time.time() - t0:.1f}s)", flush=True)
        return row

    if "table" in sections:
        table(record, num_classes, classes)
    out = {"features": str(path), "seed": data["seed"], "grid": list(GRID),
           "holdout": f"{HOLDOUT} of each class, seed {HOLDOUT_SEED}", "rows": rows}
    if "wide" in sections:  # shrinkage beyond [0, 1] for FeCAM's scoring (its ResNet code shrinks twice: 3)
        for l2 in ("query", "stats"):
            record(f"l2 {l2:5s} corr on  logdet off fecam, s up to 10",
                   lambda a, b, c, s, v=l2: variant_scores(a, b, c, classes, v, True, False, "fecam", s),
                   [1.0, 3.0, 10.0, 30.0])
    if "steps" in sections:
        out["per_task"] = steps(tx, ty, qx, qy, held, task_classes)
    if json_out is not None:
        json_out.write_text(json.dumps(out, indent=1, default=str))


STEP_VARIANTS = (  # (name, l2, corr, logdet, form): fecam as before, each ingredient changed, the class Gaussians
    ("l2 query, corr, no logdet (fecam before)", "query", True, False, "fecam"),
    ("l2 stats, corr, no logdet (fecam now)", "stats", True, False, "fecam"),
    ("l2 stats, no corr, no logdet", "stats", False, False, "fecam"),
    ("l2 off, no corr, no logdet", "off", False, False, "fecam"),
    ("l2 off, no corr, logdet (class Gaussians)", "off", False, True, "ridge"),
)


def steps(tx, ty, qx, qy, held, task_classes) -> dict:
    """Accuracy after every task for a few variants and ``slda``, each at the s it chooses on the
    held-out training features in the final state (as the table does)."""
    out = {}
    k = int(ty.max()) + 1
    variants = [(name, lambda a, b, c, s, v=v: variant_scores(a, b, c, torch.arange(int(b.max()) + 1), *v, s), GRID)
                for name, *v in STEP_VARIANTS]
    from casdap.continual.discriminants import SLDA_GRID
    variants.append(("slda (SLDAClassifier)",
                     lambda a, b, c, s: project_scores("slda", a, b, c, int(b.max()) + 1, s), list(SLDA_GRID)))
    for name, fn, grid in variants:
        s, _ = choose(fn, list(grid), tx[~held], ty[~held], tx[held], ty[held], torch.arange(k))
        accs = per_task_accuracy(fn, s, tx, ty, qx, qy, task_classes)
        out[name] = {"s": s, "acc_after_task": accs}
        print(f"after each task: {name:45s} s {s:<6g} {' '.join(f'{a:5.1f}' for a in accs)}  "
              f"mean {sum(accs) / len(accs):5.1f}", flush=True)
    return out


def table(record, num_classes: int, classes: torch.Tensor) -> None:
    print(f"grid of s: {' '.join(f'{g:g}' for g in GRID)}")
    # the project's classes at the run's values (fecam: FeCAM's 1, the default; the class Gaussians:
    # CAS-DAP's MODEL.DAP.SHRINKAGE); the factorial below holds both at every s
    record("project fecam (FeCAMClassifier), s fixed",
           lambda a, b, c, s: project_scores("fecam", a, b, c, num_classes, s), [1.0])
    from casdap.continual.discriminants import SLDA_GRID
    record("project slda (SLDAClassifier, pooled covariance)",
           lambda a, b, c, s: project_scores("slda", a, b, c, num_classes, s), list(SLDA_GRID))
    record("project class Gaussians (GaussianTaskPredictor), s fixed",
           lambda a, b, c, s: project_scores("gaussian", a, b, c, num_classes, s), [0.003])
    for l2, corr, logdet, form in itertools.product(("off", "query", "stats"), (False, True), (False, True),
                                                    ("fecam", "ridge", "convex")):
        grid = [g for g in GRID if form != "convex" or g < 1.0]
        name = f"l2 {l2:5s} corr {'on ' if corr else 'off'} logdet {'on ' if logdet else 'off'} {form}"
        record(name, lambda a, b, c, s, v=(l2, corr, logdet, form): variant_scores(a, b, c, classes, *v, s), grid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("run_dir", type=Path)
    e.add_argument("out", type=Path)
    a = sub.add_parser("ablate")
    a.add_argument("features", type=Path)
    a.add_argument("--json", type=Path, default=None)
    a.add_argument("--sections", default="table,wide,steps",
                   help="comma-separated: table (the factorial), wide (s above 1), steps (accuracy after each task)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.cmd == "extract":
        extract(args.run_dir, args.out)
    else:
        ablate(args.features, args.json, set(args.sections.split(",")))


if __name__ == "__main__":
    main()

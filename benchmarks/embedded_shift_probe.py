"""How hard is the ``embedded_shift`` stream for a frozen backbone? (docs/embedded_shift.md)

On ``model.forward_pooled`` of the stream (eval mode, nothing trained on it), per stream seed:

* **oracle linear, within task**: for each task, a multinomial logistic regression on the
  standardised frozen features of that task's training images (its regularisation C chosen on a
  held-out fifth of them), evaluated on the task's held-out test renders with the true task
  given. The ceiling of a linear head on these features when task selection is perfect: the room
  left for prompts is what it misses.
* **NCM within task** (oracle task) and **NCM, class-incremental** (nearest of all 100 class
  means, no task given), on L2-normalised features (what ``MODEL.TRANSFER_TYPE ncm`` does).
* **task proxy**: nearest task mean by cosine (DAP's key side, as in docs/pretraining.md); and
  **task by class means**: the task of the nearest of all class means of standardised features
  (cosine), one key per class; and **task by 15 nearest images**: the majority task of the 15
  nearest training images (standardised, cosine), a key per training image. DAP's per-image
  accuracy with restricted logits is bounded by how often its keys find the task.
* **domain probe**: a logistic regression telling the backbone's pretraining images from stream
  images on frozen features (held-out accuracy; 0.5 = indistinguishable).

``--similarity`` instead lists the stream characters that look most like a pretraining class or
a digit (``casdap.data.glyph_stream.shape_similarity``).

    python benchmarks/embedded_shift_probe.py --weights model/embedded/rcvit_xs.pth --seeds 0 1 2
    python benchmarks/embedded_shift_probe.py --task-bounds --seeds 0 1 2
    python benchmarks/embedded_shift_probe.py --similarity
    python benchmarks/embedded_shift_probe.py --digits     # the same oracle measures on the digits
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from casdap import create_model, load_checkpoint
from casdap.data.glyph_stream import SHIFT_TASKS, render_shift_stream, shape_similarity
from casdap.pretrain.evaluate import nearest_mean_accuracy, pooled_features
from casdap.pretrain.sources import build_source, normalize_input


def _logreg(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray, seed: int) -> dict:
    """Standardised multinomial logistic regression, C picked on a held-out fifth of the training set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    val = np.zeros(len(train_y), dtype=bool)
    for c in np.unique(train_y):
        idx = np.nonzero(train_y == c)[0]
        val[rng.permutation(idx)[: max(1, len(idx) // 5)]] = True
    best_c, best = 1.0, -1.0
    for c in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0):
        sc = StandardScaler().fit(train_f[~val])
        clf = LogisticRegression(C=c, max_iter=2000).fit(sc.transform(train_f[~val]), train_y[~val])
        acc = clf.score(sc.transform(train_f[val]), train_y[val])
        if acc > best:
            best_c, best = c, acc
    sc = StandardScaler().fit(train_f)
    clf = LogisticRegression(C=best_c, max_iter=2000).fit(sc.transform(train_f), train_y)
    return {"acc": float(clf.score(sc.transform(test_f), test_y)), "C": best_c, "val_acc": best}


def probe(model: torch.nn.Module, seed: int, train_per_class: int, test_per_class: int) -> dict:
    t0 = time.perf_counter()
    x_tr, y_tr, x_te, y_te = render_shift_stream(seed, train_per_class, test_per_class)
    render_s = time.perf_counter() - t0
    f_tr = pooled_features(model, normalize_input(x_tr))
    f_te = pooled_features(model, normalize_input(x_te))
    per_class = len(SHIFT_TASKS[0][1])
    task_tr, task_te = y_tr // per_class, y_te // per_class
    within_lin, within_ncm, chosen_c = [], [], []
    for t in range(len(SHIFT_TASKS)):
        a, b = task_tr == t, task_te == t
        r = _logreg(f_tr[a].numpy(), y_tr[a].numpy(), f_te[b].numpy(), y_te[b].numpy(), seed)
        within_lin.append(r["acc"])
        chosen_c.append(r["C"])
        within_ncm.append(nearest_mean_accuracy(f_tr[a], y_tr[a], f_te[b], y_te[b], "cosine"))
    return {
        "seed": seed,
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "render_s": round(render_s, 1),
        "oracle_linear_within_task": statistics.mean(within_lin),
        "oracle_linear_per_task": [round(v, 3) for v in within_lin],
        "logreg_C": chosen_c,
        "ncm_within_task": statistics.mean(within_ncm),
        "ncm_class_incremental": nearest_mean_accuracy(f_tr, y_tr, f_te, y_te, "cosine"),
        "task_proxy": nearest_mean_accuracy(f_tr, task_tr, f_te, task_te, "cosine"),
        **task_bounds(f_tr, y_tr, f_te, task_te, per_class),
    }


def task_bounds(f_tr: torch.Tensor, y_tr: torch.Tensor, f_te: torch.Tensor, task_te: torch.Tensor,
                per_class: int) -> dict:
    """How often frozen-feature matching finds the task, on standardised features (cosine): the task
    of the nearest of all class means, and the majority task of the 15 nearest training images."""
    mean, std = f_tr.mean(0), f_tr.std(0) + 1e-6
    a = torch.nn.functional.normalize((f_tr - mean) / std, dim=1)
    b = torch.nn.functional.normalize((f_te - mean) / std, dim=1)
    classes = torch.unique(y_tr)
    means = torch.nn.functional.normalize(torch.stack([a[y_tr == c].mean(0) for c in classes]), dim=1)
    by_means = classes[(b @ means.t()).argmax(1)] // per_class
    nearest = (b @ a.t()).topk(15, dim=1).indices
    by_knn = torch.mode((y_tr // per_class)[nearest], dim=1).values
    return {"task_by_class_means": float((by_means == task_te).float().mean()),
            "task_by_15_nearest": float((by_knn == task_te).float().mean())}


def digits_probe(model: torch.nn.Module, seed: int) -> dict:
    """The same oracle within-task measures on the embedded digits (5 tasks of 2, seeded 75/25 split)."""
    from casdap.data.digits import load_digits_tensors

    x, y = load_digits_tensors(32)
    f = pooled_features(model, normalize_input(x))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[: int(0.75 * len(y))], perm[int(0.75 * len(y)) :]
    lin, ncm = [], []
    for t in range(5):
        a, b = tr[y[tr] // 2 == t], te[y[te] // 2 == t]
        lin.append(_logreg(f[a].numpy(), y[a].numpy(), f[b].numpy(), y[b].numpy(), seed)["acc"])
        ncm.append(nearest_mean_accuracy(f[a], y[a], f[b], y[b], "cosine"))
    return {"seed": seed, "data": "digits", "oracle_linear_within_task": statistics.mean(lin),
            "ncm_within_task": statistics.mean(ncm),
            "ncm_class_incremental": nearest_mean_accuracy(f[tr], y[tr], f[te], y[te], "cosine")}


def domain_probe(model: torch.nn.Module, seed: int = 0, per_class: int = 16) -> float:
    """Held-out accuracy of telling pretraining images (``glyphs``) from stream images, frozen features."""
    src = build_source("glyphs", per_class, 1000 + seed)
    x_p, _ = src.sample(0)
    x_s, _, x_s2, _ = render_shift_stream(seed, 20, 20)
    n = min(len(x_p), len(x_s))
    perm = torch.randperm(len(x_p), generator=torch.Generator().manual_seed(seed))[:n]
    feats = pooled_features(model, normalize_input(torch.cat([x_p[perm], x_s[:n]]))).numpy()
    labels = np.r_[np.zeros(n), np.ones(n)]
    idx = np.random.default_rng(seed).permutation(2 * n)
    half = len(idx) // 2
    return _logreg(feats[idx[:half]], labels[idx[:half]], feats[idx[half:]], labels[idx[half:]], seed)["acc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default="model/embedded/rcvit_xs.pth")
    ap.add_argument("--model", default="rcvit_xs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-per-class", type=int, default=None)
    ap.add_argument("--test-per-class", type=int, default=None)
    ap.add_argument("--random-init", action="store_true", help="an untrained backbone instead of --weights")
    ap.add_argument("--similarity", action="store_true")
    ap.add_argument("--digits", action="store_true", help="the same oracle measures on the embedded digits")
    ap.add_argument("--out", type=Path, default=None, help="append one JSON line per seed")
    ap.add_argument("--task-bounds", action="store_true",
                    help="only how often frozen-feature matching finds the task (fast)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.similarity:
        for score, s, p in shape_similarity()[:15]:
            print(f"{score:.3f}  {s} (U+{ord(s):04X})  ~  {p} (U+{ord(p):04X})")
        return
    from casdap.data.glyph_stream import TEST_PER_CLASS, TRAIN_PER_CLASS

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=0 if args.random_init else 1000, distillation=False)
    if not args.random_init:
        load_checkpoint(model, args.weights, finetune=True)
    model.eval()
    if args.digits:
        for seed in args.seeds:
            print(json.dumps(digits_probe(model, seed)), flush=True)
        return
    if args.task_bounds:
        per_class = len(SHIFT_TASKS[0][1])
        for seed in args.seeds:
            x_tr, y_tr, x_te, y_te = render_shift_stream(seed, TRAIN_PER_CLASS, TEST_PER_CLASS)
            f_tr = pooled_features(model, normalize_input(x_tr))
            f_te = pooled_features(model, normalize_input(x_te))
            task_tr, task_te = y_tr // per_class, y_te // per_class
            row = {"seed": seed, "task_proxy": nearest_mean_accuracy(f_tr, task_tr, f_te, task_te, "cosine"),
                   **task_bounds(f_tr, y_tr, f_te, task_te, per_class)}
            print(json.dumps(row), flush=True)
        return
    rows = []
    for seed in args.seeds:
        r = probe(model, seed, args.train_per_class or TRAIN_PER_CLASS, args.test_per_class or TEST_PER_CLASS)
        r["domain_probe"] = domain_probe(model, seed)
        r["backbone"] = "random init" if args.random_init else str(args.weights)
        rows.append(r)
        print(json.dumps(r), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(r) + "\n")
    for key in ("oracle_linear_within_task", "ncm_within_task", "ncm_class_incremental", "task_proxy",
                "task_by_class_means", "task_by_15_nearest", "domain_probe"):
        vals = [r[key] for r in rows]
        spread = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
        print(f"{key:28s} median {statistics.median(vals):.3f}  mean {statistics.mean(vals):.3f}{spread}  "
              f"per seed {[round(v, 3) for v in vals]}")


if __name__ == "__main__":
    main()

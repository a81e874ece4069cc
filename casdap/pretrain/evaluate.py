"""How good are frozen pooled features for the embedded digits stream?

Two measurements on ``model.forward_pooled`` of the digits (eval mode, nothing trained on them):

* **digits NCM**: nearest class mean over all 10 digits, class means from a seeded 75/25 split
  (Euclidean, as well as cosine on L2-normalised features).
* **task proxy**: the same with the 5 tasks of the stream (digit pairs 0-1, 2-3, ...) as the
  classes, by cosine similarity. DAP picks a task by the key nearest (cosine) to this very
  query, so this is an upper-bound-style proxy of how well keys can select tasks.
* **anisotropy and margin**: the mean pairwise cosine of the test features (near 1 means every
  image has almost the same query direction) and the mean cosine margin between an image's own
  task mean and the closest other task mean. Learned keys only approximate task means, so a
  small margin makes selection fragile even where the task proxy is high.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from casdap.pretrain.sources import normalize_input

__all__ = ["cosine_geometry", "digits_feature_quality", "nearest_mean_accuracy", "pooled_features"]


@torch.no_grad()
def pooled_features(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``model.forward_pooled`` in eval mode over ``images`` (already normalised), in batches."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model.forward_pooled(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    finally:
        model.train(was_training)


def nearest_mean_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
                          test_y: torch.Tensor, metric: str = "euclidean") -> float:
    """Accuracy of assigning each test feature to the nearest per-label mean of the train features."""
    labels = torch.unique(train_y)
    if metric == "cosine":
        train_f, test_f = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    means = torch.stack([train_f[train_y == c].mean(0) for c in labels])
    if metric == "cosine":
        pred = (test_f @ F.normalize(means, dim=1).T).argmax(1)
    elif metric == "euclidean":
        pred = torch.cdist(test_f, means).argmin(1)
    else:
        raise ValueError(f"unknown metric {metric!r}")
    return (labels[pred] == test_y).float().mean().item()


def digits_feature_quality(model: nn.Module, seed: int = 0, classes_per_task: int = 2,
                           train_fraction: float = 0.75) -> dict[str, float]:
    """Frozen-feature quality of ``model`` on the embedded digits (see module docstring).

    Returns ``ncm_acc`` (Euclidean), ``ncm_acc_cosine``, ``task_acc`` (cosine, the key/query
    proxy), ``task_acc_euclidean`` (fractions in [0, 1]), ``mean_cosine`` and ``task_margin``.
    """
    from casdap.data.digits import load_digits_tensors

    x, y = load_digits_tensors(32)
    feats = pooled_features(model, normalize_input(x))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(train_fraction * len(y))
    tr, te = perm[:n_train], perm[n_train:]
    task = y // classes_per_task
    return {
        "ncm_acc": nearest_mean_accuracy(feats[tr], y[tr], feats[te], y[te], "euclidean"),
        "ncm_acc_cosine": nearest_mean_accuracy(feats[tr], y[tr], feats[te], y[te], "cosine"),
        "task_acc": nearest_mean_accuracy(feats[tr], task[tr], feats[te], task[te], "cosine"),
        "task_acc_euclidean": nearest_mean_accuracy(feats[tr], task[tr], feats[te], task[te], "euclidean"),
        **cosine_geometry(feats[tr], task[tr], feats[te], task[te]),
    }


def cosine_geometry(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
                    test_y: torch.Tensor) -> dict[str, float]:
    """``mean_cosine``: mean pairwise cosine of the test features; ``task_margin``: mean over test
    images of cos(own label mean) - max cos(other label means)."""
    z = F.normalize(test_f, dim=1)
    n = len(z)
    mean_cos = ((z @ z.T).sum() - n) / (n * (n - 1))
    labels = torch.unique(train_y)
    means = F.normalize(torch.stack([F.normalize(train_f[train_y == c], dim=1).mean(0) for c in labels]), dim=1)
    sims = z @ means.T
    own = (test_y[:, None] == labels[None]).float()
    margin = (sims * own).sum(1) - sims.masked_fill(own.bool(), -2.0).max(1).values
    return {"mean_cosine": mean_cos.item(), "task_margin": margin.mean().item()}

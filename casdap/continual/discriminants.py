"""Discriminant baselines on frozen features, fitted from class statistics that add up task by task.

``slda`` (Deep Streaming LDA, Hayes & Kanan, CVPR-W 2020; Avalanche's
:class:`avalanche.training.StreamingLDA`): class means ``mu_k``, counts and one covariance ``Sigma``
shared by all classes, of the frozen backbone's pooled features. With ``Lambda = ((1 - s) Sigma +
s I)^+`` (shrinkage ``s`` in [0, 1]) the logits are ``x Lambda mu_k - mu_k Lambda mu_k / 2``:
Avalanche's ``predict``, the LDA rule with equal priors. Avalanche updates ``Sigma`` one image at a
time with an order-dependent approximation and keeps its statistics outside the model; here every
statistic is an exact sum (per-class feature sums, counts and the summed outer product
``sum x x^T``, float64), so ``Sigma`` (the pooled within-class covariance over all images seen,
divided by their number as Avalanche does) is that of a one-pass fit on the union of the tasks, the
statistics add over ``torchrun`` ranks, and they are buffers of the model (checkpoints load with
``weights_only``, resuming continues the same sums).

``fecam`` (FeCAM, Goswami et al., NeurIPS 2023; Avalanche's :class:`avalanche.models.FeCAMClassifier`):
every feature is L2-normalised first; per class, the mean ``mu_k`` and covariance ``Sigma_k``
(unbiased, as ``np.cov``) of the normalised features, shrunk as ``Sigma_k + gamma (V1 I + V2 (1 - I))``
(``V1``, ``V2``: the mean diagonal and off-diagonal entries of ``Sigma_k``) and normalised to a
correlation matrix (FeCAM's covariance normalisation); logits are minus the squared Mahalanobis
distance of the normalised feature to ``mu_k`` under it. The statistics are those of the features
as they are scored, as FeCAM's code for pretrained ViT features does; its ResNet code and
Avalanche's port take them from the raw features and normalise only the scored feature and mean,
a mismatch that cost 12 points on ``embedded_shift`` (docs/prototype_baselines.md). FeCAM's Tukey
power transform ``x ** 0.5`` is not applied: it needs non-negative (post-ReLU) features and
CAS-ViT's pooled features follow a BatchNorm, so they take negative values (FeCAM's ViT code does
without it too).

The shrinkage (``BASELINES.SLDA_SHRINKAGE``: chosen by default; ``FECAM_SHRINKAGE``: FeCAM's 1 by
default, chosen with ``auto``) is chosen after every task on held-out training images of that task,
as ``ranpac`` chooses its ridge strength: every :data:`~casdap.continual.prototypes.HOLDOUT_EVERY`-th
image of each class (seeded offset) is held out; for every grid value the classifier fitted on all
training images so far except those is scored by its accuracy over all classes seen on the held-out
images (their features are kept only for the task's own pass), and the best value (the first on
ties) is then fitted on all training images. Only the task's own images are held out, so the score
cannot see old classes losing images to new ones; with one covariance per class (``fecam``) that
bias picks too little shrinkage (docs/prototype_baselines.md), hence FeCAM's own value by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from casdap.continual.gradient_free import GradientFreeStrategy
from casdap.continual.prototypes import HOLDOUT_EVERY, held_out_mask, holdout_offsets
from casdap.errors import CasdapError
from casdap.models.class_statistics import add_moments, lda, shrink, sum_over_ranks
from casdap.models.logit_mask import MASKED_LOGIT

__all__ = ["FECAM_GRID", "SLDA_GRID", "DiscriminantStrategy", "FeCAMClassifier", "SLDAClassifier",
           "check_finite_features"]

# Shrinkage values tried after every task (fixed values must lie in [0, 1] as well).
SLDA_GRID = (0.0, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.2, 0.5, 1.0)
FECAM_GRID = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0)

Moments = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # class sums [K, d], counts [K], second moment


def check_finite_features(feats: torch.Tensor, method: str) -> None:
    """One clear error when the backbone's features hold NaN or infinite values (nothing is fitted)."""
    if not bool(torch.isfinite(feats).all()):
        bad = int((~torch.isfinite(feats)).any(dim=-1).sum())
        raise CasdapError(f"{method}: the backbone's pooled features of {bad} training image(s) hold NaN or infinite "
                          "values, so no class statistics can be fitted; check the backbone weights "
                          "(MODEL.WEIGHT_PATH / MODEL.MODEL_ROOT) and the input images")


class _DiscriminantClassifier(nn.Module):
    """Frozen backbone and a classifier fitted from exact class statistics (buffers of the state dict).

    ``class_sums``/``class_counts`` and the second moment (:meth:`empty_moments`) add up every training
    image so far; ``shrinkages`` holds the value used after each task (NaN: tasks not trained). The
    fitted parameters are buffers too, so a loaded checkpoint predicts without refitting.
    """

    name = ""
    grid: tuple[float, ...] = ()
    default_shrinkage: float | None = None  # for BASELINES.<NAME>_SHRINKAGE None (None: chosen)

    def __init__(self, backbone: nn.Module, num_classes: int, shrinkage: float | None = None) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.num_classes, self.fixed_shrinkage = int(num_classes), shrinkage
        d = backbone.num_features
        self.register_buffer("class_sums", torch.zeros(num_classes, d, dtype=torch.float64))
        self.register_buffer("class_counts", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("second", self.empty_moments(d)[2])
        # a task holds at least one class: at most num_classes tasks
        self.register_buffer("shrinkages", torch.full((num_classes,), float("nan"), dtype=torch.float64))
        self.register_buffer("held_out_acc", torch.full((num_classes,), float("nan"), dtype=torch.float64))

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_pooled(x).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over all classes (classes never trained: :data:`MASKED_LOGIT`)."""
        return self.logits_from(self.features(x))

    @property
    def tasks_fitted(self) -> int:
        return int((~torch.isnan(self.shrinkages)).sum())

    def empty_moments(self, d: int | None = None, device=None) -> Moments:
        d = self.class_sums.shape[1] if d is None else d
        k = self.num_classes
        z = torch.zeros
        return (z(k, d, dtype=torch.float64, device=device), z(k, dtype=torch.float64, device=device),
                z(*self.second_shape(k, d), dtype=torch.float64, device=device))

    def second_shape(self, k: int, d: int) -> tuple[int, ...]:
        raise NotImplementedError

    def add_moments(self, moments: Moments, feats: torch.Tensor, y: torch.Tensor) -> None:
        """Add the batch's class sums, counts and second moment (per class, or shared: its shape) to
        ``moments`` (in place, float64)."""
        sums, counts, second = moments
        add_moments(counts, sums, second, feats, y)

    def solve(self, sums: torch.Tensor, counts: torch.Tensor, second: torch.Tensor, shrinkage: float) -> dict:
        """The classifier's parameters fitted from the statistics, under ``shrinkage``."""
        raise NotImplementedError

    def scores(self, feats: torch.Tensor, params: dict, counts: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fitted(self) -> dict:
        raise NotImplementedError

    def logits_from(self, feats: torch.Tensor) -> torch.Tensor:
        return self.scores(feats, self.fitted(), self.class_counts)

    @torch.no_grad()
    def add_statistics(self, sums: torch.Tensor, counts: torch.Tensor, second: torch.Tensor) -> None:
        self.class_sums += sums
        self.class_counts += counts
        self.second += second

    @torch.no_grad()
    def fit(self, shrinkage: float, held_out_acc: float | None = None) -> None:
        """Fit on every training image so far under ``shrinkage``; record it for the task just added."""
        for name, value in self.solve(self.class_sums, self.class_counts, self.second, shrinkage).items():
            getattr(self, name).copy_(value)
        t = self.tasks_fitted
        self.shrinkages[t] = shrinkage
        self.held_out_acc[t] = float("nan") if held_out_acc is None else held_out_acc

    def run_record(self) -> dict:
        """What the run directory's ``<method>.json`` records: the shrinkage of every task so far."""
        done = self.tasks_fitted
        return {
            "shrinkage_fixed": self.fixed_shrinkage,
            "shrinkage_grid": None if self.fixed_shrinkage is not None else list(self.grid),
            "holdout": f"every {HOLDOUT_EVERY}th training image of each class of the task (seeded offset)",
            "shrinkage_per_task": [float(v) for v in self.shrinkages[:done]],
            "held_out_acc_per_task": [None if math.isnan(v) else float(v) for v in self.held_out_acc[:done].tolist()],
            "first_session": hasattr(self, "adapted"),
            "train_images": int(self.class_counts.sum()),
        }


class SLDAClassifier(_DiscriminantClassifier):
    """Streaming LDA: class means and one shared covariance; logits by the LDA rule (module docstring)."""

    name = "slda"
    grid = SLDA_GRID
    default_shrinkage = None  # chosen

    def __init__(self, backbone: nn.Module, num_classes: int, shrinkage: float | None = None) -> None:
        super().__init__(backbone, num_classes, shrinkage)
        d = backbone.num_features
        self.register_buffer("weights", torch.zeros(d, num_classes, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(num_classes, dtype=torch.float64))

    def second_shape(self, k: int, d: int) -> tuple[int, ...]:
        return (d, d)

    def solve(self, sums, counts, second, shrinkage):
        means = sums / counts.clamp(min=1).unsqueeze(1)
        n = float(counts.sum())
        # pooled within-class covariance: sum x x^T - sum_k n_k mu_k mu_k^T, over all images
        sigma = (second - means.t() @ sums) / max(n, 1.0)
        weight, bias = lda(means, sigma, shrinkage, "convex")
        return {"weights": weight.t(), "bias": bias}

    def fitted(self) -> dict:
        return {"weights": self.weights, "bias": self.bias}

    def scores(self, feats, params, counts):
        return _mask_unseen((feats.double() @ params["weights"] + params["bias"]).float(), counts)


class FeCAMClassifier(_DiscriminantClassifier):
    """FeCAM: per-class shrunk, correlation-normalised covariances of the L2-normalised features and
    Mahalanobis scoring (module docstring)."""

    name = "fecam"
    grid = FECAM_GRID
    default_shrinkage = 1.0  # FeCAM's own (gamma_1 = gamma_2 = 1)

    def __init__(self, backbone: nn.Module, num_classes: int, shrinkage: float | None = None) -> None:
        super().__init__(backbone, num_classes, shrinkage)
        d = backbone.num_features
        self.register_buffer("means", torch.zeros(num_classes, d))
        self.register_buffer("precisions", torch.zeros(num_classes, d, d))

    def second_shape(self, k: int, d: int) -> tuple[int, ...]:
        return (k, d, d)

    def add_moments(self, moments: Moments, feats: torch.Tensor, y: torch.Tensor) -> None:
        """The moments of the L2-normalised features: those the scores measure distances between."""
        sums, counts, second = moments
        add_moments(counts, sums, second, F.normalize(feats.double(), dim=-1), y)

    def solve(self, sums, counts, second, shrinkage):
        k, d = sums.shape
        means = torch.zeros(k, d, dtype=torch.float64, device=sums.device)
        precisions = torch.zeros(k, d, d, dtype=torch.float64, device=sums.device)
        seen = torch.nonzero(counts > 0).flatten()
        if len(seen):
            n = counts[seen]
            mu = sums[seen] / n.unsqueeze(1)
            cov = (second[seen] - n[:, None, None] * mu.unsqueeze(2) * mu.unsqueeze(1))
            cov = shrink(cov / (n - 1).clamp(min=1)[:, None, None], shrinkage, "fecam")
            sd = torch.diagonal(cov, dim1=1, dim2=2).clamp(min=1e-12).sqrt()
            corr = cov / (sd.unsqueeze(2) * sd.unsqueeze(1))
            means[seen] = mu
            precisions[seen] = torch.linalg.pinv(corr, hermitian=True)
        return {"means": means.float(), "precisions": precisions.float()}

    def fitted(self) -> dict:
        return {"means": self.means, "precisions": self.precisions}

    def scores(self, feats, params, counts):
        diff = F.normalize(feats.float(), dim=-1).unsqueeze(1) - params["means"].unsqueeze(0)  # [B, K, d]
        dist2 = (torch.einsum("bkd,kde->bke", diff, params["precisions"]) * diff).sum(-1)
        return _mask_unseen(-dist2, counts)


def _mask_unseen(logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Classes never trained get :data:`MASKED_LOGIT`, or less where a trained class scores below it (a
    large Mahalanobis distance), so they never win."""
    unseen = ~(counts > 0)
    if bool(unseen.all()):
        return torch.full_like(logits, MASKED_LOGIT)
    floor = logits[:, ~unseen].amin(1, keepdim=True).clamp(max=MASKED_LOGIT + 1) - 1
    return torch.where(unseen, floor, logits)


class DiscriminantStrategy(GradientFreeStrategy):
    """``slda`` / ``fecam`` on frozen features as an Avalanche strategy (no gradient step).

    The "epoch" is one pass over the experience that adds up the class statistics; every
    :data:`HOLDOUT_EVERY`-th image of each class (in the shuffled stream, from an offset seeded by
    ``seed`` and the experience, as ``ranpac`` does) also goes into held-out statistics and its
    feature is kept until the pass ends. The statistics are then summed over ``torchrun`` ranks, the
    shrinkage is chosen (held-out hits also summed over ranks) and the classifier fitted. The training
    ``mb_output`` is the logits of the classifier before this experience; the loss is zero.
    """

    def __init__(self, *, model: _DiscriminantClassifier, seed: int = 0, verbose: bool = True, **kwargs) -> None:
        super().__init__(model=model, **kwargs)
        self.seed, self.verbose = int(seed), verbose
        self.last_fit: dict | None = None

    @torch.no_grad()
    def training_epoch(self, **kwargs):
        model: _DiscriminantClassifier = self.model
        dev = model.class_sums.device
        k = model.num_classes
        stats, val = model.empty_moments(device=dev), model.empty_moments(device=dev)
        offsets = holdout_offsets(self.seed, int(self.experience.current_experience), k).to(dev)
        seen = torch.zeros(k, dtype=torch.long, device=dev)
        held_feats, held_y = [], []
        for _ in self.statistics_pass(**kwargs):
            feats, y = model.features(self.mb_x), self.mb_y
            check_finite_features(feats, model.name)
            held = held_out_mask(y, seen, offsets, HOLDOUT_EVERY)
            model.add_moments(stats, feats, y)
            model.add_moments(val, feats[held], y[held])
            held_feats.append(feats[held])
            held_y.append(y[held])
            self.mb_output = model.logits_from(feats)
        sum_over_ranks([*stats, *val])
        model.add_statistics(*stats)
        shrinkage, acc, n_val = self._choose(val, held_feats, held_y)
        model.fit(shrinkage, acc)
        task = model.tasks_fitted - 1
        self.last_fit = {"task": task, "shrinkage": shrinkage, "held_out_images": n_val, "held_out_acc": acc}
        if self.verbose and (not dist.is_initialized() or dist.get_rank() == 0):
            if model.fixed_shrinkage is not None:
                how = f"fixed (BASELINES.{model.name.upper()}_SHRINKAGE)"
            elif acc is not None:
                how = f"chosen on {n_val} held-out training images of the task (accuracy {100 * acc:.1f}%)"
            else:
                how = "the grid's middle: no held-out image"
            tqdm.write(f"{model.name}: task {task + 1}: shrinkage {shrinkage:g}, {how}")

    def _choose(self, val: Moments, held_feats: Sequence[torch.Tensor],
                held_y: Sequence[torch.Tensor]) -> tuple[float, float | None, int]:
        """The shrinkage to fit with, its held-out accuracy (None if not chosen) and the held-out count."""
        model: _DiscriminantClassifier = self.model
        n_val = int(val[1].sum())
        if model.fixed_shrinkage is not None:
            return float(model.fixed_shrinkage), None, n_val
        grid = model.grid
        if n_val == 0:
            return float(grid[len(grid) // 2]), None, n_val
        feats, y = torch.cat(list(held_feats)), torch.cat(list(held_y))
        fit = [a - b for a, b in zip((model.class_sums, model.class_counts, model.second), val)]
        hits = torch.zeros(len(grid), dtype=torch.float64, device=model.class_sums.device)
        for i, s in enumerate(grid):
            params = model.solve(*fit, s)
            hits[i] = (model.scores(feats, params, fit[1]).argmax(1) == y).sum()
        sum_over_ranks([hits])
        best = min(range(len(grid)), key=lambda i: (-float(hits[i]), i))
        return float(grid[best]), float(hits[best]) / n_val, n_val


def build_discriminant(cfg, classifier: type[_DiscriminantClassifier], backbone: nn.Module,
                       num_classes: int) -> _DiscriminantClassifier:
    """``classifier`` with ``BASELINES.<NAME>_SHRINKAGE`` (None: the classifier's default; auto: chosen)."""
    key = f"{classifier.name.upper()}_SHRINKAGE"
    value = cfg.BASELINES.SLDA_SHRINKAGE if classifier.name == "slda" else cfg.BASELINES.FECAM_SHRINKAGE
    if value is None:
        value = classifier.default_shrinkage
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return classifier(backbone, num_classes, None)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
    if not ok:
        raise CasdapError(f"BASELINES.{key} must be a number in [0, 1] (a fixed covariance shrinkage), or auto to "
                          f"choose it on held-out training images (None: the method's default), got {value!r}")
    return classifier(backbone, num_classes, float(value))

"""Prototype baselines of pretrained-model class-incremental learning, on the frozen CAS-ViT backbone.

``ranpac`` (after RanPAC, McDonnell et al., NeurIPS 2023): pooled backbone features go through a
fixed Gaussian random projection and a ReLU, ``h = relu(f P)``; the classifier is the ridge
regression of one-hot labels on ``h``, ``W = (G + lambda I)^-1 C`` with ``G = sum h h^T`` and
``C = sum h y^T`` added up task by task. No image or feature is stored and nothing takes a
gradient step, so the classifier after task *t* is exactly the one fitted on the union of tasks
0..t (ridge regression does not forget). The ridge strength is chosen after every task on a
held-out fifth of the training images seen so far (their own Gram and target statistics), by the
validation squared error over a log grid, then the classifier is fitted on all training images.

``aper`` (after APER/ADAM, Zhou et al., IJCV 2024): on the first task only, a copy of the backbone
is fine-tuned with a linear head (the first task's epochs, backbone rate scaled by
``BASELINES.BACKBONE_LR_SCALE``), then frozen; every task's classes get prototypes (class means) of
the concatenation of the pretrained and the adapted backbone's L2-normalised pooled features, and
images are classified by cosine similarity to them, as ``ncm`` does with the pretrained features.

Under ``torchrun`` every rank adds up its own share and the statistics are summed over ranks.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from casdap.continual.first_session import FirstSessionAdaptation
from casdap.continual.gradient_free import GradientFreeStrategy, add_class_means
from casdap.errors import CasdapError
from casdap.models.first_session import FirstSessionMixin
from casdap.models.logit_mask import mask_logits

__all__ = [
    "HOLDOUT_EVERY",
    "APERClassifier",
    "APERStrategy",
    "RIDGE_GRID",
    "RanPACClassifier",
    "RanPACStrategy",
    "build_ranpac",
    "held_out_mask",
    "holdout_offsets",
    "choose_ridge",
    "ridge_solve",
    "validation_sse",
]

# Ridge strengths tried (RanPAC's grid): 1e-8 ... 1e8, one per decade.
RIDGE_GRID = tuple(10.0 ** k for k in range(-8, 9))
# Every HOLDOUT_EVERY-th training image of each class (from a seeded offset) is held out for choosing
# the ridge strength: a fifth, as RanPAC's 80/20 split.
HOLDOUT_EVERY = 5


def ridge_solve(gram: torch.Tensor, targets: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(gram + ridge I)^-1 targets`` in float64: the ridge-regression weights ``[M, K]``."""
    g = gram.double()
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    return torch.linalg.solve(g + ridge * eye, targets.double())


def validation_sse(weights: torch.Tensor, val_gram: torch.Tensor, val_targets: torch.Tensor,
                   n_val: float) -> float:
    """Squared error ``||Y - H W||^2`` of one-hot targets on held-out rows, from their statistics alone:
    ``n_val - 2 <W, H^T Y> + <W, H^T H W>`` (each one-hot row has squared norm 1)."""
    w = weights.double()
    return float(n_val - 2 * (w * val_targets).sum() + (w * (val_gram @ w)).sum())


def choose_ridge(gram: torch.Tensor, targets: torch.Tensor, val_gram: torch.Tensor, val_targets: torch.Tensor,
                 n_val: float, grid: Sequence[float] = RIDGE_GRID) -> tuple[float, list[float]]:
    """The grid strength whose fit on the training rows (all statistics minus the held-out ones) has the
    least squared error on the held-out rows; also every grid value's error (first one on ties)."""
    fit_gram, fit_targets = gram.double() - val_gram, targets.double() - val_targets
    errors = [validation_sse(ridge_solve(fit_gram, fit_targets, lam), val_gram, val_targets, n_val) for lam in grid]
    best = min(range(len(grid)), key=lambda i: (errors[i], i))
    return float(grid[best]), errors


class RanPACClassifier(nn.Module):
    """Frozen backbone, fixed random projection ``P`` ``[features, M]`` and ReLU, ridge-regression head.

    Everything that defines the classifier is a buffer (``projection``, the float64 statistics
    ``gram``/``targets`` of all training images and ``val_gram``/``val_targets``/``val_counts`` of the
    held-out ones, the fitted ``weights``, ``class_counts``, and ``ridges``: the strength used after
    each task, NaN for tasks not trained), so checkpoints and resuming keep it. Logits are
    ``relu(f P) W``; classes never trained get :data:`MASKED_LOGIT`.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, proj_dim: int, seed: int = 0,
                 ridge: float | None = None) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.proj_dim, self.fixed_ridge = int(proj_dim), ridge
        d, m = backbone.num_features, self.proj_dim
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("projection", torch.randn(d, m, generator=gen))
        for name, shape in (("gram", (m, m)), ("targets", (m, num_classes)), ("val_gram", (m, m)),
                            ("val_targets", (m, num_classes))):
            self.register_buffer(name, torch.zeros(*shape, dtype=torch.float64))
        self.register_buffer("val_counts", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("class_counts", torch.zeros(num_classes))
        self.register_buffer("weights", torch.zeros(m, num_classes))
        # a task holds at least one class: at most num_classes tasks
        self.register_buffer("ridges", torch.full((num_classes,), float("nan"), dtype=torch.float64))

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(f P)`` of the images' pooled backbone features ``f``: ``[B, M]``."""
        return F.relu(self.backbone.forward_pooled(x).float() @ self.projection)

    def logits_from(self, h: torch.Tensor) -> torch.Tensor:
        return mask_logits(h @ self.weights, self.class_counts > 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from(self.hidden(x))

    @property
    def tasks_fitted(self) -> int:
        return int((~torch.isnan(self.ridges)).sum())

    @torch.no_grad()
    def add_statistics(self, gram: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor,
                       val_gram: torch.Tensor, val_targets: torch.Tensor, val_counts: torch.Tensor) -> None:
        """Add one task's statistics (all its training images; and those of its held-out share)."""
        self.gram += gram
        self.targets += targets
        self.class_counts += counts.to(self.class_counts.dtype)
        self.val_gram += val_gram
        self.val_targets += val_targets
        self.val_counts += val_counts

    def run_record(self) -> dict:
        """What the run directory's ``ranpac.json`` records: the ridge strength of every task so far."""
        done = self.tasks_fitted
        return {
            "proj_dim": self.proj_dim, "ridge_fixed": self.fixed_ridge,
            "ridge_grid": None if self.fixed_ridge is not None else list(RIDGE_GRID),
            "holdout": f"every {HOLDOUT_EVERY}th training image of each class (seeded offset)",
            "ridge_per_task": [float(v) for v in self.ridges[:done]],
            "held_out_images": int(self.val_counts.sum()), "train_images": int(self.class_counts.sum()),
        }

    @torch.no_grad()
    def fit(self, grid: Sequence[float] = RIDGE_GRID) -> tuple[float, list[float] | None]:
        """Choose the ridge strength (unless fixed) and fit ``weights`` on every training image so far;
        record the strength for the task just added. Returns it and the grid's held-out errors."""
        errors = None
        if self.fixed_ridge is not None:
            lam = float(self.fixed_ridge)
        elif float(self.val_counts.sum()) > 0:
            lam, errors = choose_ridge(self.gram, self.targets, self.val_gram, self.val_targets,
                                       float(self.val_counts.sum()), grid)
        else:  # no held-out image yet (classes of fewer than HOLDOUT_EVERY images): the grid's middle
            lam = float(grid[len(grid) // 2])
        self.weights.copy_(ridge_solve(self.gram, self.targets, lam).to(self.weights.dtype))
        self.ridges[self.tasks_fitted] = lam
        return lam, errors


def build_ranpac(cfg, backbone: nn.Module, num_classes: int,
                 classifier: type[RanPACClassifier] = RanPACClassifier) -> RanPACClassifier:
    """``classifier`` (:class:`RanPACClassifier` or a subclass) from ``BASELINES.RANPAC_PROJ_DIM`` /
    ``RANPAC_RIDGE``, checked."""
    b = cfg.BASELINES
    dim = b.RANPAC_PROJ_DIM
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise CasdapError(f"BASELINES.RANPAC_PROJ_DIM must be a positive integer (the random projection's size), "
                          f"got {dim!r}")
    ridge = b.RANPAC_RIDGE
    if isinstance(ridge, str) and ridge.lower() == "auto":
        ridge = None
    if ridge is not None:
        ok = isinstance(ridge, (int, float)) and not isinstance(ridge, bool) and math.isfinite(ridge) and ridge > 0
        if not ok:
            raise CasdapError(f"BASELINES.RANPAC_RIDGE must be a positive number (a fixed ridge strength), or None / "
                              f"auto to choose it on held-out training images, got {ridge!r}")
        ridge = float(ridge)
    seed = 0 if cfg.SEED is None else int(cfg.SEED)
    return classifier(backbone, num_classes, dim, seed=seed, ridge=ridge)


def holdout_offsets(seed: int, task: int, num_classes: int) -> torch.Tensor:
    """Each class's offset (in ``[0, HOLDOUT_EVERY)``) of its held-out images in task ``task``."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(task))
    return torch.randint(0, HOLDOUT_EVERY, (num_classes,), generator=gen)


def held_out_mask(y: torch.Tensor, seen: torch.Tensor, offsets: torch.Tensor,
                  every: int = HOLDOUT_EVERY) -> torch.Tensor:
    """Which images of the batch (labels ``y``) are held out: every ``every``-th image of each class in
    the pass, from the class's offset. ``seen`` (images of each class in the pass so far) is updated."""
    onehot = F.one_hot(y, len(seen)).double()
    # position of each image among its class's images in this pass
    rank_in_class = seen[y] + (torch.cumsum(onehot, 0).gather(1, y[:, None]).squeeze(1).long() - 1)
    seen += onehot.sum(0).long()
    return (rank_in_class + offsets[y]) % every == 0


class RanPACStrategy(GradientFreeStrategy):
    """RanPAC's random-projection ridge classifier on frozen features, as an Avalanche strategy.

    The "epoch" is one pass over the experience that adds up the statistics (no gradient step);
    every :data:`HOLDOUT_EVERY`-th image of each class in the (shuffled) stream, from an offset seeded
    by ``seed`` and the experience, also goes into the held-out statistics. After the pass the
    statistics are summed over ``torchrun`` ranks and the classifier is fitted
    (:meth:`RanPACClassifier.fit`). The training ``mb_output`` is the logits of the classifier before
    this experience; the training loss is zero (nothing is optimised).
    """

    def __init__(self, *, model: RanPACClassifier, seed: int = 0, verbose: bool = True, **kwargs) -> None:
        super().__init__(model=model, **kwargs)
        self.seed, self.verbose = int(seed), verbose
        self.last_fit: dict | None = None

    @torch.no_grad()
    def training_epoch(self, **kwargs):
        model: RanPACClassifier = self.model
        m, k = model.gram.shape[0], model.targets.shape[1]
        dev = model.gram.device
        gram = torch.zeros(m, m, dtype=torch.float64, device=dev)
        val_gram = torch.zeros_like(gram)
        targets = torch.zeros(m, k, dtype=torch.float64, device=dev)
        val_targets = torch.zeros_like(targets)
        counts = torch.zeros(k, dtype=torch.float64, device=dev)
        val_counts = torch.zeros_like(counts)
        offsets = holdout_offsets(self.seed, int(self.experience.current_experience), k).to(dev)
        seen = torch.zeros(k, dtype=torch.long, device=dev)  # images of each class so far in this pass
        for _ in self.statistics_pass(**kwargs):
            h = model.hidden(self.mb_x)
            y = self.mb_y
            onehot = F.one_hot(y, k).double()
            held = held_out_mask(y, seen, offsets)
            hd = h.double()
            gram += hd.t() @ hd
            targets += hd.t() @ onehot
            counts += onehot.sum(0)
            hv, ov = hd[held], onehot[held]
            val_gram += hv.t() @ hv
            val_targets += hv.t() @ ov
            val_counts += ov.sum(0)
            self.mb_output = model.logits_from(h)
        stats = [gram, targets, counts, val_gram, val_targets, val_counts]
        if dist.is_available() and dist.is_initialized():
            for s in stats:
                dist.all_reduce(s)
        model.add_statistics(*stats)
        lam, errors = model.fit()
        task = model.tasks_fitted - 1
        n_val = int(model.val_counts.sum())
        self.last_fit = {"task": task, "ridge": lam, "held_out_images": n_val, "val_sse": errors}
        if self.verbose and (not dist.is_initialized() or dist.get_rank() == 0):
            if model.fixed_ridge is not None:
                how = "fixed (BASELINES.RANPAC_RIDGE)"
            elif errors is not None:
                per_image = errors[RIDGE_GRID.index(lam)] / n_val
                how = f"chosen on {n_val} held-out training images (squared error per image {per_image:.4f})"
            else:
                how = "the grid's middle: no held-out image yet"
            tqdm.write(f"ranpac: task {task + 1}: ridge lambda {lam:g}, {how}")


class _APERPrototypes(nn.Module):
    """Cosine similarity of the pretrained and adapted features to their class means."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.normalize(self.pretrained.forward_pooled(x).float(), dim=-1)
        ada = F.normalize(self.backbone.forward_pooled(x).float(), dim=-1)
        return torch.cat([pre, ada], dim=-1) / math.sqrt(2.0)

    def logits_from(self, feats: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        means = F.normalize(sums / counts.clamp(min=1).unsqueeze(1), dim=-1)
        return mask_logits(feats @ means.t(), counts > 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from(self.features(x), self.class_sums, self.class_counts)


class APERClassifier(FirstSessionMixin, _APERPrototypes):
    """APER-style: the pretrained backbone (frozen) and a copy adapted on the first task, then frozen.

    ``backbone`` is the copy that the first task fine-tunes with ``head`` (:class:`FirstSessionMixin`);
    ``pretrained`` never changes. Once adapted, logits are cosine similarities of
    ``[f_pre, f_adapted] / sqrt(2)`` (each half L2-normalised) to the class means of the same
    features (buffers, like ``adapted``); classes never trained get :data:`MASKED_LOGIT`.
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.pretrained = backbone.requires_grad_(False)
        self.backbone = copy.deepcopy(backbone).requires_grad_(True)
        self._init_adaptation(backbone.num_features, num_classes)
        self.register_buffer("class_sums", torch.zeros(num_classes, 2 * backbone.num_features))
        self.register_buffer("class_counts", torch.zeros(num_classes))

    def train(self, mode: bool = True):
        super().train(mode)
        self.pretrained.eval()
        return self


class APERStrategy(FirstSessionAdaptation, GradientFreeStrategy):
    """APER on frozen prototypes after a first-task adaptation (:class:`FirstSessionAdaptation`), as an
    Avalanche strategy: every experience's pass adds its class sums of the pretrained and adapted
    features; its ``mb_output`` is the logits of the prototypes so far, this batch included. Sums and
    counts are added over ranks.
    """

    def __init__(self, *, model: APERClassifier, optimizer: torch.optim.Optimizer, train_epochs: int = 1,
                 **kwargs) -> None:
        super().__init__(model=model, optimizer=optimizer, train_epochs=train_epochs, **kwargs)

    def _accumulate(self, **kwargs):
        self.model.eval()
        add_class_means(self, **kwargs)

"""Class statistics and what is estimated from them: one place for every method that fits classes
from feature moments (``slda``, ``fecam``, the task predictors ``gaussian`` / ``lda`` / ``head`` and
CAS-DAP's all-class head).

Moments are exact sums (count, sum, sum of outer products; float64 keeps ``E[xx^T] - mu mu^T`` free
of cancellation), so they add over tasks and over ``torchrun`` ranks (:func:`sum_over_ranks`).
Covariances are shrunk before they are inverted (:func:`shrink`); the forms differ by method and
each is named, so a method's results stay what they were.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from casdap.errors import CasdapError

__all__ = [
    "ALL_CLASS_HEADS",
    "MASKED_SCORE",
    "SHRINKAGE_FORMS",
    "ClassStatistics",
    "KeptStatistics",
    "add_moments",
    "add_to_moments",
    "check_shrinkage",
    "fit_linear_on_gaussians",
    "gaussian_log_likelihood",
    "gaussian_parameters",
    "kept_moments",
    "lda",
    "lda_classifier",
    "register_moments",
    "shrink",
    "shrunk_covariance",
    "statistics_from_moments",
    "sum_over_ranks",
]

# Score of a class or task that cannot be chosen: far below any real score, finite in float16.
MASKED_SCORE = -1e4


@dataclass
class ClassStatistics:
    """Per-class statistics of features (the query, or prompted features).

    ``tasks[k]`` is the task of class ``classes[k]``; ``count``, ``mean`` and (optionally) the
    ``covariance`` are over that class's features.
    """

    classes: torch.Tensor  # [K] long
    tasks: torch.Tensor  # [K] long
    count: torch.Tensor  # [K]
    mean: torch.Tensor  # [K, C]
    covariance: torch.Tensor | None = None  # [K, C, C]

    @classmethod
    @torch.no_grad()
    def from_queries(cls, query: torch.Tensor, labels: torch.Tensor, task_of_class: Mapping[int, int],
                     covariance: bool = False) -> ClassStatistics:
        """Statistics of queries ``[M, C]`` with class ``labels`` ``[M]``; ``task_of_class`` maps every
        label to its task."""
        classes = sorted({int(c) for c in labels.tolist()})
        query = query.detach().float()
        rows = [query[labels == c] for c in classes]
        mean = torch.stack([r.mean(0) for r in rows])
        cov = None
        if covariance:
            cov = torch.stack([torch.cov(r.t(), correction=0).reshape(query.shape[1], -1) for r in rows])
        return cls(classes=torch.tensor(classes), tasks=torch.tensor([int(task_of_class[c]) for c in classes]),
                   count=torch.tensor([len(r) for r in rows]), mean=mean, covariance=cov)


# -- moments ------------------------------------------------------------------------------------


def add_moments(count: torch.Tensor, total: torch.Tensor, outer: torch.Tensor,
                feats: torch.Tensor, labels: torch.Tensor) -> None:
    """Add the features ``[M, C]`` of classes ``labels`` ``[M]`` to the per-class count ``[K]`` and sum
    ``[K, C]``, and to the sum of outer products: per class when ``outer`` is ``[K, C, C]``, over
    every image when it is ``[C, C]`` (one covariance shared by all classes). In place, in the
    buffers' dtype."""
    f = feats.detach().to(total.dtype)
    labels = labels.to(total.device)
    count.index_add_(0, labels, torch.ones(len(labels), dtype=count.dtype, device=count.device))
    total.index_add_(0, labels, f)
    if outer.dim() == 2:
        outer += f.t() @ f
    else:
        outer.index_add_(0, labels, f[:, :, None] * f[:, None, :])


def register_moments(module: torch.nn.Module, name: str, num_classes: int, dim: int) -> None:
    """Give ``module`` the buffers ``<name>_count`` ``[K]``, ``<name>_sum`` ``[K, C]`` and ``<name>_outer``
    ``[K, C, C]`` (float64, zero): per-class moments saved with the model, so a resumed run has them."""
    module.register_buffer(f"{name}_count", torch.zeros(num_classes, dtype=torch.float64))
    module.register_buffer(f"{name}_sum", torch.zeros(num_classes, dim, dtype=torch.float64))
    module.register_buffer(f"{name}_outer", torch.zeros(num_classes, dim, dim, dtype=torch.float64))


def kept_moments(module: torch.nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (count, sum, outer) buffers that :func:`register_moments` gave ``module``."""
    return getattr(module, f"{name}_count"), getattr(module, f"{name}_sum"), getattr(module, f"{name}_outer")


def add_to_moments(kept: tuple[torch.Tensor, ...], moments: tuple[torch.Tensor, ...]) -> None:
    """Add ``moments`` (count, sum, outer; from any device) to the ``kept`` ones, in place."""
    for mine, more in zip(kept, moments):
        mine += more.to(mine)


def sum_over_ranks(tensors: list[torch.Tensor], all_reduce=None) -> None:
    """Sum ``tensors`` over the ``torchrun`` ranks in place (nothing in a single process).
    ``all_reduce``: the reduce to use (default :func:`torch.distributed.all_reduce` when a process
    group is up), so the sum can be checked without a launch."""
    if all_reduce is None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        all_reduce = dist.all_reduce
    for t in tensors:
        all_reduce(t)


def statistics_from_moments(count: torch.Tensor, total: torch.Tensor, outer: torch.Tensor,
                            class_task: torch.Tensor) -> ClassStatistics:
    """:class:`ClassStatistics` (with population covariance) of every class with a count."""
    classes = torch.nonzero(count > 0).flatten().cpu()
    n = count[classes].to(total.dtype)
    mean = total[classes] / n[:, None]
    cov = outer[classes] / n[:, None, None] - mean[:, :, None] * mean[:, None, :]
    return ClassStatistics(classes=classes, tasks=class_task[classes].cpu(), count=n.cpu(),
                           mean=mean.float().cpu(), covariance=cov.float().cpu())


# -- shrinkage ----------------------------------------------------------------------------------

SHRINKAGE_FORMS = ("trace", "convex", "fecam")


def shrink(cov: torch.Tensor, shrinkage: float, form: str) -> torch.Tensor:
    """Covariances ``[..., C, C]`` made well conditioned, in one of three forms (``s``: ``shrinkage``):

    - ``trace``: ``cov + s * (trace / C) * I`` (CAS-DAP's task predictors and all-class head; any
      ``s > 0``), full rank for any class size;
    - ``convex``: ``(1 - s) cov + s I`` (Streaming LDA, as Avalanche's; ``s`` in [0, 1]);
    - ``fecam``: ``cov + s (V1 I + V2 (1 - I))`` with ``V1``, ``V2`` the mean diagonal and
      off-diagonal entries of each covariance (FeCAM's).
    """
    dim = cov.shape[-1]
    eye = torch.eye(dim, dtype=cov.dtype, device=cov.device)
    if form == "trace":
        scale = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
        return cov + shrinkage * scale[..., None, None] * eye
    if form == "convex":
        return (1.0 - shrinkage) * cov + shrinkage * eye
    if form == "fecam":
        v1 = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)
        v2 = (cov * (1 - eye)).sum((-2, -1)) / (dim * (dim - 1))
        return cov + shrinkage * (v1[..., None, None] * eye + v2[..., None, None] * (1 - eye))
    raise CasdapError(f"unknown shrinkage form '{form}' (use one of {', '.join(SHRINKAGE_FORMS)})")


def shrunk_covariance(cov: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """``cov + shrinkage * (trace / C) * I`` per class (``[K, C, C]``): :func:`shrink`'s ``trace`` form."""
    return shrink(cov, shrinkage, "trace")


def check_shrinkage(shrinkage: float) -> float:
    if not float(shrinkage) > 0:
        raise CasdapError(f"shrinkage must be above 0 (it keeps every class covariance invertible), got {shrinkage}")
    return float(shrinkage)


# -- the linear discriminant --------------------------------------------------------------------


def lda(means: torch.Tensor, covariance: torch.Tensor, shrinkage: float,
        form: str = "trace") -> tuple[torch.Tensor, torch.Tensor]:
    """The linear discriminant of classes with ``means`` ``[K, C]`` and one shared ``covariance``
    ``[C, C]``, equal priors: class ``k`` scores ``x' P mu_k - mu_k' P mu_k / 2`` with ``P`` the
    inverse of the covariance shrunk in ``form`` (:func:`shrink`). Returns ``(weight [K, C],
    bias [K])`` in the inputs' dtype.

    ``trace`` inverts exactly (the shrunk matrix is full rank); ``convex`` takes the pseudo-inverse
    (Streaming LDA's, where ``s = 0`` may leave it singular) and forms the products in Streaming LDA's
    order, so each method's discriminant is what it was bit for bit.
    """
    if form == "convex":
        precision = torch.linalg.pinv(shrink(covariance, shrinkage, form), hermitian=True)
        w = precision @ means.t()  # [C, K]
        return w.t(), -0.5 * (means.t() * w).sum(0)
    precision = torch.linalg.inv(shrink(covariance[None], shrinkage, form)[0])
    w = means @ precision
    return w, -0.5 * (w * means).sum(1)


def lda_classifier(stats: ClassStatistics, num_classes: int, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lda` (``trace`` form) of the classes of ``stats`` over ``num_classes`` classes: the
    shared covariance is the count-weighted mean of the class covariances. Returns ``(weight
    [num_classes, C], bias [num_classes])``; classes without statistics get zero weight and a very
    low bias."""
    n = stats.count.double()
    pooled = (stats.covariance.double() * n[:, None, None]).sum(0) / n.sum()
    w, b = lda(stats.mean.double(), pooled, shrinkage, "trace")
    weight = torch.zeros(num_classes, w.shape[1])
    bias = torch.full((num_classes,), MASKED_SCORE)
    weight[stats.classes] = w.float()
    bias[stats.classes] = b.float()
    return weight, bias


# -- class Gaussians ----------------------------------------------------------------------------


def gaussian_parameters(stats: ClassStatistics, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class of ``stats`` a Gaussian: the precision ``[K, C, C]`` and log-determinant ``[K]`` of
    its covariance shrunk in the ``trace`` form (float64)."""
    cov = shrunk_covariance(stats.covariance.double(), shrinkage)
    return torch.linalg.inv(cov), torch.linalg.slogdet(cov)[1]


def gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, precisions: torch.Tensor,
                            logdets: torch.Tensor) -> torch.Tensor:
    """``[B, K]``: each class Gaussian's log-likelihood of ``x`` ``[B, C]``, up to a constant shared by
    every class (``-(Mahalanobis^2 + log det) / 2``)."""
    diff = x[:, None, :] - means[None]  # [B, K, C]
    maha = torch.einsum("bkc,kcd,bkd->bk", diff, precisions, diff)
    return -0.5 * (maha + logdets[None])


@torch.enable_grad()
def fit_linear_on_gaussians(stats: ClassStatistics, num_classes: int, shrinkage: float, *, samples: int = 64,
                            steps: int = 100, lr: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear softmax classifier ``(weight [num_classes, C], bias [num_classes])`` over the classes of
    ``stats``, trained on ``samples`` pseudo-features per class drawn from each class's shrunk Gaussian
    (HiDe-Prompt's re-alignment: no stored image or feature). Classes without statistics get zero
    weight and a very low bias. Draws come from a private generator seeded by ``seed`` and the
    number of classes, so every rank and a resumed run fit the same classifier."""
    cov = shrunk_covariance(stats.covariance.double(), shrinkage)
    chol = torch.linalg.cholesky(cov)
    gen = torch.Generator().manual_seed(int(seed) * 1000 + len(stats.classes))
    k, dim = stats.mean.shape
    z = torch.randn(k, samples, dim, generator=gen, dtype=torch.float64)
    x = (stats.mean.double()[:, None, :] + z @ chol.transpose(1, 2)).reshape(-1, dim).float()
    y = torch.arange(k).repeat_interleave(samples)
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mu) / sd
    w = torch.zeros(k, dim, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(xs @ w.t() + b, y).backward()
        opt.step()
    weight = torch.zeros(num_classes, dim)
    bias = torch.full((num_classes,), MASKED_SCORE)
    with torch.no_grad():
        weight[stats.classes] = w / sd
        bias[stats.classes] = b - (w / sd) @ mu
    return weight, bias


# CAS-DAP's all-class heads (MODEL.DAP.ALL_CLASS_HEAD): (stats, num_classes, shrinkage) -> (weight, bias)
ALL_CLASS_HEADS = {"lda": lda_classifier, "pseudo": fit_linear_on_gaussians}


# -- statistics kept by a model -----------------------------------------------------------------


class KeptStatistics:
    """Model mixin (before ``nn.Module``): per-class moments of the query and of prompted features,
    kept as buffers (saved with the model, so a resumed run has them), and what is refitted from them
    at each task end: the task predictor from the query's (:meth:`fit_task_predictor`), the head over
    every seen class from the prompted features' (``ALL_CLASS_HEADS[self.all_class_head]``)."""

    num_classes: int
    all_class_head: str

    def keep_statistics(self, num_classes: int, dim: int, *, query: bool, prompted: bool, shrinkage: float,
                        fusion: bool = False) -> None:
        """Register the buffers: each class's task (-1: unseen), the moments of the features kept
        (``query`` / ``prompted``) and the all-class head's weight and bias. ``query``: the task
        predictor is estimated from the query's statistics; ``fusion``: the query's class Gaussians
        are kept for fused prediction (:meth:`query_class_scores`), which needs the query's
        statistics too."""
        self.fits_task_predictor = bool(query)
        query = bool(query or fusion)
        self.query_statistics, self.prompted_statistics, self.shrinkage = query, prompted, shrinkage
        self.fusion_source: str | None = None
        if fusion:
            from casdap.models.task_inference import GaussianTaskPredictor

            self.fusion_gaussians = GaussianTaskPredictor(1, dim, num_classes, shrinkage)
            self.fusion_source = "fusion_gaussians"
        if query or prompted:
            self.register_buffer("class_task", torch.full((num_classes,), -1, dtype=torch.long))
        for name, wanted in (("query", query), ("prompted", prompted)):
            if wanted:
                register_moments(self, name, num_classes, dim)
        if prompted:
            self.register_buffer("all_weight", torch.zeros(num_classes, dim))
            self.register_buffer("all_bias", torch.zeros(num_classes))

    def share_query_gaussians(self, name: str) -> None:
        """Fused prediction reads the class Gaussians of the submodule ``name`` (a Gaussian task
        predictor of the query with the same shrinkage, so the very Gaussians task inference uses)
        instead of a second copy of them; nothing when fusion is off or the predictor is another."""
        from casdap.models.task_inference import GaussianTaskPredictor

        predictor = getattr(self, name, None)
        if (self.fusion_source is None or not isinstance(predictor, GaussianTaskPredictor)
                or predictor.shrinkage != self.shrinkage):
            return
        del self.fusion_gaussians
        self.fusion_source = name

    def query_class_scores(self, query: torch.Tensor) -> torch.Tensor:
        """``[B, K]``: each class Gaussian's log-likelihood of the query ``[B, C]`` (with the log-determinant;
        the ``trace`` shrinkage of task inference), -inf for a class without statistics."""
        if self.fusion_source is None:
            raise CasdapError("this model keeps no class Gaussians of the query for fused prediction "
                              "(build it with fusion=True: MODEL.DAP.FUSION_WEIGHT above 0)")
        return self.get_submodule(self.fusion_source).class_scores(query.float())

    def statistics_moments(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The statistics this model keeps: ``{"query" | "prompted": (count, sum, outer)}``."""
        names = [n for n, on in (("query", self.query_statistics), ("prompted", self.prompted_statistics)) if on]
        return {n: kept_moments(self, n) for n in names}

    def fit_task_predictor(self, stats: ClassStatistics) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def add_statistics(self, moments: dict[str, tuple[torch.Tensor, ...]], classes: Sequence[int], task: int) -> None:
        """Add moments (of the model's ``statistics_features``, summed over ranks) of task ``task``'s
        ``classes`` to the kept statistics, and refit what is estimated from them: the task predictor
        from the query statistics, the all-class head from the prompted ones."""
        self.class_task[torch.as_tensor(list(classes), dtype=torch.long, device=self.class_task.device)] = int(task)
        kept = self.statistics_moments()
        for name, bufs in kept.items():
            add_to_moments(bufs, moments[name])
        if self.query_statistics:
            stats = statistics_from_moments(*kept["query"], self.class_task)
            if self.fits_task_predictor:
                self.fit_task_predictor(stats)
            if self.fusion_source == "fusion_gaussians":
                self.fusion_gaussians.fit(stats)
        if self.prompted_statistics:
            stats = statistics_from_moments(*kept["prompted"], self.class_task)
            weight, bias = ALL_CLASS_HEADS[self.all_class_head](stats, self.num_classes, self.shrinkage)
            self.all_weight.copy_(weight.to(self.all_weight))
            self.all_bias.copy_(bias.to(self.all_bias))

    def all_class_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits over every class seen so far from prompted features (the head re-aligned on class
        statistics; unseen classes stay at a very low bias)."""
        if not self.prompted_statistics:
            raise CasdapError("this model keeps no statistics of prompted features "
                              "(build it with prompted_statistics=True)")
        return feats.float() @ self.all_weight.t() + self.all_bias

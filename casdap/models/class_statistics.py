"""Class statistics and what is estimated from them: one place for every method that fits classes
from feature moments (``slda``, ``fecam``, the task predictors ``gaussian`` / ``lda`` / ``head`` and
CAS-DAP's all-class head).

Moments are exact sums (count, sum, sum of outer products; float64 keeps ``E[xx^T] - mu mu^T`` free
of cancellation), so they add over tasks and over ``torchrun`` ranks (:func:`sum_over_ranks`).
Covariances are shrunk before they are inverted (:func:`shrink`); the forms differ by method and
each is named, so a method's results stay what they were.

A model keeps of each class's second moments only what its consumer reads again (:data:`MOMENT_LAYOUTS`):
every class's outer products ``[K, C, C]`` where each refit draws from every class's Gaussian, one
within-class scatter ``[C, C]`` for a linear discriminant's shared covariance, none where a class's
covariance is read once, when its task ends (the consumer keeps what it estimated from it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from casdap.errors import CasdapError

__all__ = [
    "ALL_CLASS_HEADS",
    "ALL_CLASS_HEAD_MOMENTS",
    "MASKED_SCORE",
    "MOMENT_LAYOUTS",
    "SHRINKAGE_FORMS",
    "ClassStatistics",
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
    "within_class_scatter",
]

# Score of a class or task that cannot be chosen: far below any real score, finite in float16.
MASKED_SCORE = -1e4

# What a consumer of class statistics keeps of each class's second moments between tasks:
#   per_class: every class's sum of outer products [K, C, C] (every refit reads every class's covariance);
#   pooled:    one within-class scatter [C, C] (a linear discriminant's shared covariance);
#   once:      none (a class's covariance is read once, when its task ends).
MOMENT_LAYOUTS = ("per_class", "pooled", "once")


@dataclass
class ClassStatistics:
    """Per-class statistics of features (the query, or prompted features).

    ``tasks[k]`` is the task of class ``classes[k]``; ``count``, ``mean`` and (optionally) the
    ``covariance`` are over that class's features. ``scatter`` (optional, float64): the within-class
    scatter summed over the classes, ``sum_k count_k * covariance_k``, where one shared covariance is
    all that is kept.
    """

    classes: torch.Tensor  # [K] long
    tasks: torch.Tensor  # [K] long
    count: torch.Tensor  # [K]
    mean: torch.Tensor  # [K, C]
    covariance: torch.Tensor | None = None  # [K, C, C]
    scatter: torch.Tensor | None = None  # [C, C]

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


_SECOND = {"per_class": "outer", "pooled": "scatter", "once": None}  # a layout's second-moment buffer


def register_moments(module: torch.nn.Module, name: str, num_classes: int, dim: int,
                     layout: str = "per_class") -> None:
    """Give ``module`` the buffers ``<name>_count`` ``[K]`` and ``<name>_sum`` ``[K, C]``, and for the
    second moments (:data:`MOMENT_LAYOUTS`) ``<name>_outer`` ``[K, C, C]`` (``per_class``) or
    ``<name>_scatter`` ``[C, C]`` (``pooled``); float64, zero. Saved with the model, so a resumed
    run has them."""
    if layout not in MOMENT_LAYOUTS:
        raise CasdapError(f"unknown moment layout '{layout}' (use one of {', '.join(MOMENT_LAYOUTS)})")
    module.register_buffer(f"{name}_count", torch.zeros(num_classes, dtype=torch.float64))
    module.register_buffer(f"{name}_sum", torch.zeros(num_classes, dim, dtype=torch.float64))
    if layout == "per_class":
        module.register_buffer(f"{name}_outer", torch.zeros(num_classes, dim, dim, dtype=torch.float64))
    elif layout == "pooled":
        module.register_buffer(f"{name}_scatter", torch.zeros(dim, dim, dtype=torch.float64))


def kept_moments(module: torch.nn.Module, name: str) -> tuple[torch.Tensor, ...]:
    """The buffers that :func:`register_moments` gave ``module``: (count, sum) and the second moments'
    (outer or scatter) where its layout keeps one."""
    second = [f"{name}_{s}" for s in ("outer", "scatter") if isinstance(getattr(module, f"{name}_{s}", None),
                                                                      torch.Tensor)]
    return (getattr(module, f"{name}_count"), getattr(module, f"{name}_sum"), *(getattr(module, n) for n in second))


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


def statistics_from_moments(count: torch.Tensor, total: torch.Tensor, outer: torch.Tensor | None,
                            class_task: torch.Tensor) -> ClassStatistics:
    """:class:`ClassStatistics` (with population covariance, unless ``outer`` is None) of every class
    with a count."""
    classes = torch.nonzero(count > 0).flatten().cpu()
    n = count[classes].to(total.dtype)
    mean = total[classes] / n[:, None]
    cov = None if outer is None else outer[classes] / n[:, None, None] - mean[:, :, None] * mean[:, None, :]
    return ClassStatistics(classes=classes, tasks=class_task[classes].cpu(), count=n.cpu(),
                           mean=mean.float().cpu(), covariance=None if cov is None else cov.float().cpu())


def within_class_scatter(count: torch.Tensor, total: torch.Tensor, outer: torch.Tensor) -> torch.Tensor:
    """``[C, C]`` float64: ``sum_k count_k * covariance_k`` over the classes with a count, each
    covariance as :func:`statistics_from_moments` gives it: what :func:`lda_classifier` pools."""
    stats = statistics_from_moments(count, total, outer, torch.zeros(len(count), dtype=torch.long))
    return (stats.covariance.double() * stats.count.double()[:, None, None]).sum(0)


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
    shared covariance is the count-weighted mean of the class covariances (``stats.scatter`` over the
    count where only that is kept). Returns ``(weight [num_classes, C], bias [num_classes])``;
    classes without statistics get zero weight and a very low bias."""
    n = stats.count.double()
    if stats.covariance is not None:
        pooled = (stats.covariance.double() * n[:, None, None]).sum(0) / n.sum()
    elif stats.scatter is not None:
        pooled = stats.scatter.double() / n.sum()
    else:
        raise CasdapError("a linear discriminant needs class covariances or their within-class scatter")
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


# CAS-DAP's all-class heads (MODEL.DAP.ALL_CLASS_HEAD): (stats, num_classes, shrinkage) -> (weight, bias),
# and the second moments each refit reads (MOMENT_LAYOUTS): pseudo draws from every class's Gaussian
ALL_CLASS_HEADS = {"lda": lda_classifier, "pseudo": fit_linear_on_gaussians}
ALL_CLASS_HEAD_MOMENTS = {"lda": "pooled", "pseudo": "per_class"}

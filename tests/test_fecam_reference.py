"""``fecam`` against Avalanche's own :class:`avalanche.models.FeCAMClassifier` on the same features."""

import math

import pytest
import torch
from torch import nn

from casdap.continual.discriminants import FeCAMClassifier

K, D = 3, 12  # classes, feature size


class _Features(nn.Module):
    """A stand-in backbone whose pooled features are its inputs: both classifiers see the same features."""

    num_features = D

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _draw(per_class: int, gen: torch.Generator, centres: torch.Tensor, mix: torch.Tensor):
    """Features of K classes with their own (correlated, non-isotropic) covariances, negative values included."""
    y = torch.arange(K).repeat_interleave(per_class)
    x = centres[y] + 0.5 * torch.einsum("bd,bde->be", torch.randn(len(y), D, generator=gen), mix[y])
    return x.float(), y


# Avalanche's apply_cov_transforms applies its shrink twice: one shrink by s turns the mean diagonal
# and off-diagonal entries v1, v2 into (1 + s) v1, (1 + s) v2, so the second adds s (1 + s) of them,
# (1 + s)^2 - 1 in all. Its default s = 1 is our shrinkage 3; our 1 (FeCAM's gamma) is its sqrt(2) - 1.
@pytest.mark.parametrize("ours, theirs", [(3.0, 1.0), (1.0, math.sqrt(2) - 1)])
def test_fecam_covariances_equal_avalanches_with_the_tukey_transform_off(ours, theirs):
    """Our FeCAM fits its statistics on the L2-normalised features it scores, as FeCAM's script for ViT
    features does; Avalanche's FeCAMClassifier takes whatever covariances it is handed and normalises
    the class means again when it scores (FeCAM's ResNet script). Handed the covariances of the same
    normalised features, Avalanche's shrinkage and correlation normalisation must give our precisions,
    and our scores must be the Mahalanobis distances under them to the means of those features.

    Tolerance: precisions and scores within 1e-5 of their largest entry (measured: 4.4e-7 and 3.9e-7;
    Avalanche's transforms run on ``torch.cov`` in float32, ours sum in float64 and invert before
    rounding to float32: float32 rounding times the shrunk correlation matrices' condition number).
    The Tukey transform stays off:
    it needs non-negative features (module docstring of casdap.continual.discriminants)."""
    from avalanche.models import FeCAMClassifier as AvalancheFeCAM

    gen = torch.Generator().manual_seed(0)
    mix, centres = torch.randn(K, D, D, generator=gen), torch.randn(K, D, generator=gen)
    x_train, y_train = _draw(40, gen, centres, mix)
    x_test, _ = _draw(20, gen, centres, mix)
    assert (x_train < 0).any()

    model = FeCAMClassifier(_Features(), K)
    moments = model.empty_moments()
    model.add_moments(moments, x_train, y_train)
    model.add_statistics(*moments)
    model.fit(ours)
    got = model.eval()(x_test)
    params = model.fitted()

    unit = torch.nn.functional.normalize(x_train, dim=-1)
    reference = AvalancheFeCAM(tukey=False, shrinkage=True, shrink1=theirs, shrink2=theirs, covnorm=True)
    covs = reference.apply_cov_transforms({c: torch.cov(unit[y_train == c].T) for c in range(K)})
    precisions = torch.stack([torch.linalg.pinv(covs[c]) for c in range(K)])
    means = torch.stack([unit[y_train == c].mean(0) for c in range(K)])

    assert torch.allclose(params["means"], means, atol=1e-6)
    scale = precisions.abs().max()
    err = (params["precisions"] - precisions).abs().max()
    assert err <= 1e-5 * scale, (err, scale)
    diff = torch.nn.functional.normalize(x_test, dim=-1)[:, None] - means[None]
    want = -torch.einsum("bkd,kde,bke->bk", diff, precisions, diff)
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert (got - want).abs().max() <= 1e-5 * want.abs().max(), (got - want).abs().max()
    # the comparison has something to tell apart: the classes' scores differ by far more than the tolerance
    assert (want.max(1).values - want.min(1).values).min() > 1e-2 * want.abs().max()

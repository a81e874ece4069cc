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
def test_fecam_scores_equal_avalanches_with_the_tukey_transform_off(ours, theirs):
    """Same predictions, and scores within 1e-5 of the largest score (measured: 1.3e-6 and 1.7e-6 on scores
    of about 4). Avalanche takes the covariance (``torch.cov``) and its pseudo-inverse in float32, ours
    sums in float64 and inverts before rounding to float32: the scores differ by float32 rounding (2^-23)
    times the shrunk correlation matrices' condition number. The Tukey transform stays off: it needs
    non-negative features (module docstring of casdap.continual.discriminants)."""
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

    reference = AvalancheFeCAM(tukey=False, shrinkage=True, shrink1=theirs, shrink2=theirs, covnorm=True)
    covs = {c: torch.cov(x_train[y_train == c].T) for c in range(K)}  # unbiased, as Avalanche's FeCAM plugin
    reference.replace_class_means_dict({c: x_train[y_train == c].mean(0) for c in range(K)})
    reference.replace_class_cov_dict(reference.apply_cov_transforms(covs))
    want = reference(x_test)

    assert torch.equal(got.argmax(1), want.argmax(1))
    assert (got - want).abs().max() <= 1e-5 * want.abs().max(), (got - want).abs().max()
    # the comparison has something to tell apart: the classes' scores differ by far more than the tolerance
    assert (want.max(1).values - want.min(1).values).min() > 1e-3 * want.abs().max()

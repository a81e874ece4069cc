"""Fused prediction (``MODEL.DAP.FUSION_WEIGHT``): the prompted prediction combined, log-linearly, with
the class Gaussians of the query that Gaussian task inference fits.

Each image's class ``y`` scores

    log p_prompted(y | x) + w * log p_query(y | x), renormalised over the classes (a log-softmax),

- ``log p_prompted``: the log-softmax of the prediction mode's class scores (:mod:`casdap.continual.prediction`;
  classes a mode masks keep their ~0 probability, so ``restrict`` stays restricted);
- ``log p_query``: the log-softmax, over the classes with statistics, of each class Gaussian's
  log-likelihood of the query (log-determinant included, covariance shrunk as task inference does,
  ``MODEL.DAP.SHRINKAGE``): the scores of ``casdap.models.task_inference.GaussianTaskPredictor``.

Why this form: it is a product of experts, ``p ~ p_prompted * p_query ** w``, so ``w`` says how much the
query's Gaussians are trusted next to the prompted prediction, on one scale whatever the prompt source
or prediction mode (raw logits of a head and raw log-likelihoods differ in scale by orders of
magnitude, and a log-softmax removes each image's own offset). ``w = 0`` is the prompted prediction,
``w -> inf`` the Gaussians alone. Every term is a function of the image alone: fused predictions are
per image, whatever the batch. A class without query statistics (only while a task trains, before
its statistics pass) cannot be chosen; with none at all the prompted prediction is returned as is.
"""

from __future__ import annotations

import torch

from casdap.continual.prediction import Prediction
from casdap.errors import CasdapError
from casdap.models.logit_mask import MASKED_LOGIT

__all__ = ["Fused", "check_fusion_weight", "fused_scores", "with_fusion"]


def check_fusion_weight(weight: float) -> float:
    """``weight`` as a float, refused unless it is a finite number of 0 or more."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise CasdapError(f"the fusion weight must be a number of 0 or more, got {weight!r}") from None
    if not 0.0 <= w < float("inf"):
        raise CasdapError(f"the fusion weight must be 0 or more (0: unfused; it multiplies log p_query), got {weight}")
    return w


def fused_scores(logits: torch.Tensor, query_scores: torch.Tensor, weight: float) -> torch.Tensor:
    """``[B, K]`` fused log-probabilities of the prompted class scores ``logits`` ``[B, K']`` and the class
    Gaussians' log-likelihoods ``query_scores`` ``[B, K]`` (-inf: a class without statistics); see the
    module. Classes past either width, or without statistics, get :data:`MASKED_LOGIT`."""
    k = query_scores.shape[1]
    prompted = logits.float()
    if prompted.shape[1] < k:
        prompted = torch.cat([prompted, prompted.new_full((len(prompted), k - prompted.shape[1]), MASKED_LOGIT)], 1)
    log_prompted = torch.log_softmax(prompted[:, :k], dim=1)
    query = query_scores.float().to(prompted.device)
    known = torch.isfinite(query)
    log_query = torch.log_softmax(query.masked_fill(~known, float("-inf")), dim=1)
    fused = torch.log_softmax((log_prompted + weight * log_query.masked_fill(~known, 0.0)).masked_fill(
        ~known, MASKED_LOGIT), dim=1)
    # no class has statistics yet (a task evaluated before its statistics pass): the prompted prediction
    return torch.where(known.any(1, keepdim=True), fused, log_prompted)


class Fused(Prediction):
    """A prediction mode (:mod:`casdap.continual.prediction`) whose class scores are fused with the
    query's class Gaussians at ``weight`` (:func:`fused_scores`). Everything else (its name, checks,
    the head the task decomposition scores with, the model output the evaluation loss is over) is
    the wrapped mode's."""

    def __init__(self, base: Prediction, weight: float) -> None:
        self.base = base
        self.weight = check_fusion_weight(weight)
        self.name = base.name

    def check(self, model, selection, top_k):
        self.base.check(model, selection, top_k)
        if getattr(model, "fusion_source", None) is None:
            raise CasdapError("fused prediction needs class statistics of the query, and this model keeps none: "
                              "build it with fusion=True (a run does when MODEL.DAP.FUSION_WEIGHT is above 0)")

    def predict(self, strategy, x, true_task):
        out, logits = self.base.predict(strategy, x, true_task)
        return out, self.fuse(strategy, x, out, logits)

    def fuse(self, strategy, x, out, logits):
        return fused_scores(logits, self.query_scores(strategy, x, out), self.weight)

    @staticmethod
    def query_scores(strategy, x: torch.Tensor, out) -> torch.Tensor:
        """The class Gaussians' log-likelihoods ``[B, K]`` of the images' query (the pass's own, else
        one query pass)."""
        model = strategy.model
        query = getattr(out, "query", None)
        if query is None:
            query = model.forward_query(x)
        return model.query_class_scores(query)

    def head(self, model):
        return self.base.head(model)


def with_fusion(mode: Prediction, weight: float | None) -> Prediction:
    """``mode`` fused at ``weight`` (:class:`Fused`); ``mode`` itself when ``weight`` is None."""
    return mode if weight is None else Fused(mode, weight)

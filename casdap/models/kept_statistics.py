"""Class statistics a model keeps between tasks (:class:`KeptStatistics`), in the layout its
consumers need (:data:`casdap.models.class_statistics.MOMENT_LAYOUTS`): each class's outer products
only where every refit reads every class's covariance, one within-class scatter for a linear
discriminant, none where a class's covariance is read once, when its task ends.

Checkpoints written when every statistic kept each class's outer products load into any layout
(:func:`_moments_kept_per_class`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from casdap.errors import CasdapError
from casdap.models.class_statistics import (
    ALL_CLASS_HEAD_MOMENTS,
    ALL_CLASS_HEADS,
    ClassStatistics,
    add_to_moments,
    kept_moments,
    register_moments,
    statistics_from_moments,
    within_class_scatter,
)

__all__ = ["KeptStatistics"]


class KeptStatistics:
    """Model mixin (before ``nn.Module``): per-class moments of the query and of prompted features,
    kept as buffers (saved with the model, so a resumed run has them), and what is refitted from them
    at each task end: the task predictor from the query's (:meth:`fit_task_predictor`), the head over
    every seen class from the prompted features' (``ALL_CLASS_HEADS[self.all_class_head]``). Of the
    second moments each keeps what its consumer reads again (``moment_layouts``)."""

    num_classes: int
    all_class_head: str

    def keep_statistics(self, num_classes: int, dim: int, *, query: str | None, prompted: bool,
                        shrinkage: float, fusion: bool = False) -> None:
        """Register the buffers: each class's task (-1: unseen), the moments of the features kept
        (``query``: the task predictor's moment layout, None for none; ``prompted``: in the all-class
        head's layout) and the all-class head's weight and bias. ``fusion``: the query's class
        Gaussians are kept for fused prediction (:meth:`query_class_scores`), fitted from each task's
        query moments when the task ends (so they need the query's statistics, at least ``once``)."""
        from casdap.models.task_inference import GaussianTaskPredictor

        self.fits_task_predictor = bool(query)
        self.fusion_source: str | None = None
        if fusion:
            self.fusion_gaussians = GaussianTaskPredictor(1, dim, num_classes, shrinkage)
            self.fusion_source = "fusion_gaussians"
            query = query or GaussianTaskPredictor.second_moments
        self.query_statistics, self.prompted_statistics, self.shrinkage = bool(query), bool(prompted), shrinkage
        layouts = (("query", query), ("prompted", ALL_CLASS_HEAD_MOMENTS[self.all_class_head] if prompted else None))
        self.moment_layouts = {name: layout for name, layout in layouts if layout}
        if self.moment_layouts:
            self.register_buffer("class_task", torch.full((num_classes,), -1, dtype=torch.long))
            self.register_load_state_dict_pre_hook(_moments_kept_per_class)
        for name, layout in self.moment_layouts.items():
            register_moments(self, name, num_classes, dim, layout)
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

    def statistics_moments(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """The statistics this model keeps: ``{"query" | "prompted": (count, sum[, outer | scatter])}``."""
        return {n: kept_moments(self, n) for n in self.moment_layouts}

    def new_moments(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Zero per-class moments ``(count [K], sum [K, C], outer [K, C, C])`` (float64) for each kept
        statistic: what a statistics pass adds one task's features to (:meth:`add_statistics`)."""
        out = {}
        for name in self.moment_layouts:
            count, total = kept_moments(self, name)[:2]
            k, c = total.shape
            out[name] = (torch.zeros_like(count), torch.zeros_like(total),
                         torch.zeros(k, c, c, dtype=total.dtype, device=total.device))
        return out

    def fit_task_predictor(self, stats: ClassStatistics) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def add_statistics(self, moments: dict[str, tuple[torch.Tensor, ...]], classes: Sequence[int], task: int) -> None:
        """Add moments (:meth:`new_moments`, of the model's ``statistics_features``, summed over ranks)
        of task ``task``'s ``classes`` to the kept statistics, and refit what is estimated from them:
        the task predictor from the query statistics, the all-class head from the prompted ones."""
        self.class_task[torch.as_tensor(list(classes), dtype=torch.long, device=self.class_task.device)] = int(task)
        fitted = {name: self._add_moments(name, moments[name]) for name in self.moment_layouts}
        if self.fits_task_predictor:
            self.fit_task_predictor(fitted["query"])
        if self.fusion_source == "fusion_gaussians":  # a class's Gaussian is fixed when its task ends
            self.fusion_gaussians.fit(statistics_from_moments(*moments["query"], self.class_task))
        if self.prompted_statistics:
            weight, bias = ALL_CLASS_HEADS[self.all_class_head](fitted["prompted"], self.num_classes, self.shrinkage)
            self.all_weight.copy_(weight.to(self.all_weight))
            self.all_bias.copy_(bias.to(self.all_bias))

    def _add_moments(self, name: str, new: tuple[torch.Tensor, ...]) -> ClassStatistics:
        """Add one task's per-class moments ``new`` (count, sum, outer) to statistic ``name`` in its
        layout; returns what its consumer refits from: every seen class's statistics (with their
        covariances, or with their within-class scatter), or for ``once`` the new classes' alone."""
        layout, kept = self.moment_layouts[name], kept_moments(self, name)
        count, total = kept[:2]
        if layout != "per_class":
            again = torch.nonzero((count > 0) & (new[0].to(count) > 0)).flatten().tolist()
            if again:
                raise CasdapError(f"classes {again[:5]} already have {name} statistics from an earlier task, "
                                  f"which keep no per-class outer products ({layout}): a class must belong to "
                                  "one task")
        add_to_moments(kept[:2], new[:2])
        if layout == "per_class":
            add_to_moments(kept[2:], new[2:])
            return statistics_from_moments(*kept, self.class_task)
        if layout == "once":
            return statistics_from_moments(*new, self.class_task)
        scatter = kept[2]
        scatter += within_class_scatter(*new).to(scatter)
        seen = statistics_from_moments(count, total, None, self.class_task)
        seen.scatter = scatter.cpu()
        return seen

    def upgrade_state_dict(self, state_dict: dict) -> None:
        """Bring a state dict of an earlier layout (every class's outer products) to this model's, in
        place: what loading does on its own, for readers that check the keys first (``load_checkpoint``)."""
        _moments_kept_per_class(self, state_dict, "")

    def all_class_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits over every class seen so far from prompted features (the head re-aligned on class
        statistics; unseen classes stay at a very low bias)."""
        if not self.prompted_statistics:
            raise CasdapError("this model keeps no statistics of prompted features "
                              "(build it with prompted_statistics=True)")
        return feats.float() @ self.all_weight.t() + self.all_bias


def _moments_kept_per_class(module: torch.nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """State dicts saved when every statistic kept each class's outer products: a layout that keeps
    fewer takes what it keeps from them (the within-class scatter the last refit pooled, to the bit)."""
    for name, layout in getattr(module, "moment_layouts", {}).items():
        outer = state_dict.get(f"{prefix}{name}_outer")
        if layout == "per_class" or outer is None or outer.dim() != 3:
            continue
        del state_dict[f"{prefix}{name}_outer"]
        count, total = state_dict.get(f"{prefix}{name}_count"), state_dict.get(f"{prefix}{name}_sum")
        if layout == "pooled" and f"{prefix}{name}_scatter" not in state_dict and count is not None \
                and total is not None:
            state_dict[f"{prefix}{name}_scatter"] = within_class_scatter(count, total, outer)

"""The statistics pass: after a task trains, one pass over its training images adds their class
statistics to what the model keeps (``KeptStatistics``), and the model refits what it estimates
from them. Shared by CAS-DAP's strategy and the learned-prompt strategies."""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin

from casdap.models.class_statistics import add_moments, sum_over_ranks

__all__ = ["StatisticsPassPlugin", "statistics_pass"]


@torch.no_grad()
def statistics_pass(strategy, task: int) -> None:
    """Add the class statistics of task ``task`` (the strategy's current experience): one pass over its
    training images with the evaluation transform (the images test queries look like: augmented views
    would widen every class's covariance with variation the test set never shows), each rank over its
    share of the training data, summed over ranks; then the model refits what it estimates from them.

    The model gives ``new_moments()``, ``statistics_features(x, task)`` and
    ``add_statistics(moments, classes, task)`` (:class:`casdap.models.kept_statistics.KeptStatistics`)."""
    from torch.utils.data import DataLoader

    from casdap.continual.benchmarks import clean_training_views

    model = strategy.model
    # Iterating a loader draws a seed for its workers from its generator. The pass that task inference
    # reads (Gaussian, LDA) runs whatever the prediction, a fixed part of training, and draws from the
    # global one; a pass that only the prediction reads (the all-class head's prompted statistics,
    # fusion's Gaussians) draws from a generator of its own, so that no prediction setting changes the
    # random numbers the next task trains with.
    own = None if getattr(model, "fits_task_predictor", False) else torch.Generator()
    # under torchrun the experience holds this rank's share already (benchmarks.shard)
    loader = DataLoader(strategy.experience.dataset.eval(), batch_size=strategy.eval_mb_size, shuffle=False,
                        num_workers=0, generator=own)
    was_training = model.training
    model.eval()
    local = model.new_moments()
    with clean_training_views():
        for batch in loader:
            x, y = batch[0].to(strategy.device), batch[1].to(strategy.device)
            for name, feats in model.statistics_features(x, task).items():
                add_moments(*local[name], feats, y)
    sum_over_ranks([t for bufs in local.values() for t in bufs])
    model.add_statistics(local, [int(c) for c in strategy.experience.classes_in_this_experience], task)
    model.train(was_training)


class StatisticsPassPlugin(SupervisedPlugin):
    """:func:`statistics_pass` at the end of each training experience, for a strategy whose model keeps
    class statistics (put it first among the plugins, so it runs before any other plugin's
    ``after_training_exp``, a checkpoint's among them)."""

    def after_training_exp(self, strategy, *args, **kwargs):
        if strategy.keeps_statistics:
            statistics_pass(strategy, strategy.current_task)

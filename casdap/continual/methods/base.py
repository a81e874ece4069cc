"""What a continual-learning method gives the runner, with the defaults most baselines share.

A method module defines ``METHOD = MyMethod()`` for a :class:`Method` subclass that overrides only
what differs from a pretrained backbone with one linear head trained by gradient steps.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
from avalanche.training import Naive
from yacs.config import CfgNode

from casdap.continual.strategy_mixin import CasdapStrategyMixin
from casdap.models.classifiers import BackboneClassifier

__all__ = ["FrozenFeatureMethod", "Method", "ResumableNaive", "adapted_query_notes", "fusion_notes", "fusion_weight"]


def adapted_query_notes(cfg: CfgNode) -> list[str]:
    """The ``final_results.txt`` line of a prompted model whose query is adapted on the first task."""
    if cfg.MODEL.DAP.QUERY.lower() != "adapted":
        return []
    on = "the adapted backbone" if cfg.MODEL.DAP.PROMPT_BACKBONE.lower() == "adapted" else "the pretrained backbone"
    return [f"Query adapted: a backbone copy and a linear head trained on the first task for "
            f"{cfg.SOLVER.TOTAL_EPOCH} epochs (backbone lr {cfg.SOLVER.BASE_LR} x "
            f"{cfg.BASELINES.BACKBONE_LR_SCALE}), then frozen; prompts run on {on}"]


def fusion_weight(cfg: CfgNode) -> float | None:
    """``MODEL.DAP.FUSION_WEIGHT`` of a prompted model: None when it is 0 (unfused)."""
    w = float(cfg.MODEL.DAP.FUSION_WEIGHT)
    return w if w > 0 else None


def fusion_notes(cfg: CfgNode) -> list[str]:
    """The ``final_results.txt`` line of a prompted model whose prediction is fused (:mod:`casdap.continual.fusion`)."""
    if fusion_weight(cfg) is None:
        return []
    return [f"Prediction fused with the query's class Gaussians: log p_prompted + {fusion_weight(cfg):g} x log p_query "
            f"(shrinkage {cfg.MODEL.DAP.SHRINKAGE})"]


class ResumableNaive(CasdapStrategyMixin, Naive):
    """Avalanche's ``Naive`` (plain fine-tuning) that keeps its clock and replay buffer on resume."""


class Method:
    """One method: its model, optimizer groups, strategy and what its run records.

    ``gradient_training``: the method takes gradient steps, so the runner adds the learning-rate
    schedule, multi-scale, gradient sync and clipping plugins. ``uses_optimizer``: the runner
    builds an optimizer over :meth:`param_groups` (False: the strategy gets None). ``joint``: one
    training on the whole stream and one row of the accuracy matrix (the upper bound).
    """

    name: str = ""
    gradient_training: bool = True
    uses_optimizer: bool = True
    joint: bool = False

    def for_config(self, cfg: CfgNode) -> Method:
        """The method as ``cfg`` runs it: itself, unless a setting changes what it trains."""
        return self

    def build_model(self, cfg: CfgNode, num_classes: int) -> nn.Module:
        """The pretrained backbone (``MODEL.BACKBONE``) and one linear head over all classes."""
        from casdap.models.build import build_backbone

        return BackboneClassifier(build_backbone(cfg, num_classes=0), num_classes)

    def param_groups(self, cfg: CfgNode, model: nn.Module) -> list[dict]:
        """The backbone at ``BASELINES.BACKBONE_LR_SCALE`` of the base rate, the head at the base rate."""
        lr = cfg.SOLVER.BASE_LR
        return [
            {"params": list(model.backbone.parameters()), "lr": lr * cfg.BASELINES.BACKBONE_LR_SCALE},
            {"params": list(model.head.parameters()), "lr": lr},
        ]

    def criterion(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def build_strategy(self, cfg: CfgNode, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                       plugins: list, **common: Any):
        """The Avalanche strategy. ``plugins`` are the runner's (progress, schedule, ...), ``common``
        the batch sizes, epochs, device and evaluator."""
        raise NotImplementedError(f"method '{self.name}' builds no strategy")

    def protocol_notes(self, cfg: CfgNode) -> list[str]:
        """Lines of ``final_results.txt`` that say how this method's run was evaluated."""
        return []

    def run_fields(self, cfg: CfgNode) -> dict[str, Any]:
        """The method's own run-information fields of ``metrics.json`` (``selection``: key selection)."""
        return {"selection": None}

    def eval_metrics(self) -> list:
        """Avalanche metrics the evaluator adds for this method (beyond accuracy and loss)."""
        return []

    def trainable_params(self, model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)


class FrozenFeatureMethod(Method):
    """A classifier fitted from statistics of the frozen backbone's features, with no gradient step.

    A subclass names its classifier and statistics strategy (:meth:`classifier`, :meth:`strategy`).
    With ``BASELINES.FIRST_SESSION`` the backbone and a linear head are first trained on the first
    task as ``aper`` does (:func:`casdap.models.first_session.with_first_session`: its epochs,
    optimizer and ``BACKBONE_LR_SCALE``), then frozen, and the classifier is built on its features.
    """

    gradient_training = False
    uses_optimizer = False

    def for_config(self, cfg: CfgNode) -> Method:
        if not cfg.BASELINES.FIRST_SESSION:
            return self
        adapting = copy.copy(self)  # the first task takes gradient steps: optimizer, schedule and plugins
        adapting.gradient_training = adapting.uses_optimizer = True
        return adapting

    def classifier(self, cfg: CfgNode) -> type[nn.Module]:
        """The classifier class, built as ``classifier(backbone, num_classes)`` by :meth:`make_classifier`."""
        raise NotImplementedError

    def make_classifier(self, cfg: CfgNode, cls: type[nn.Module], backbone: nn.Module, num_classes: int) -> nn.Module:
        return cls(backbone, num_classes)

    def strategy(self, cfg: CfgNode) -> tuple[type, dict[str, Any]]:
        """The statistics strategy class and its own keyword arguments."""
        raise NotImplementedError

    def build_model(self, cfg: CfgNode, num_classes: int) -> nn.Module:
        from casdap.models.build import build_backbone
        from casdap.models.first_session import with_first_session

        cls = self.classifier(cfg)
        if cfg.BASELINES.FIRST_SESSION:
            cls = with_first_session(cls)
        return self.make_classifier(cfg, cls, build_backbone(cfg, num_classes=0), num_classes)

    def build_strategy(self, cfg, model, optimizer, plugins, **common):
        from casdap.continual.first_session import with_first_session_strategy

        cls, own = self.strategy(cfg)
        if cfg.BASELINES.FIRST_SESSION:
            cls = with_first_session_strategy(cls)
        return cls(model=model, optimizer=optimizer, plugins=plugins, **own, **common)

    def protocol_notes(self, cfg: CfgNode) -> list[str]:
        if not cfg.BASELINES.FIRST_SESSION:
            return []
        return [f"First session (BASELINES.FIRST_SESSION): the backbone and a linear head trained on the first task "
                f"for {cfg.SOLVER.TOTAL_EPOCH} epochs (backbone lr {cfg.SOLVER.BASE_LR} x "
                f"{cfg.BASELINES.BACKBONE_LR_SCALE}), then frozen; the classifier is built on its features"]

"""The query of the learned-prompt models (:mod:`casdap.models.prompt_pools`): the frozen backbone's,
or one adapted on the first task by the shared first-session component
(:class:`casdap.models.first_session.FirstSessionModel`), as CAS-DAP's ``MODEL.DAP.QUERY adapted``."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from casdap.models.first_session import FirstSessionModel

__all__ = ["AdaptableQuery"]


class AdaptableQuery(FirstSessionModel):
    """Model mixin (before ``nn.Module``): ``query_mode`` ``frozen`` or ``adapted``, ``prompt_backbone``
    ``pretrained`` (the query from an adapted copy) or ``adapted`` (one backbone for both passes). The
    model sets ``backbone``, ``num_features``, ``num_classes``, ``query_backbone = None``,
    ``_adapting = False`` and both modes, defines ``_query_from(prefix)`` (the query on its own backbone)
    and calls :meth:`_init_query` last."""

    backbone: nn.Module
    query_backbone: nn.Module | None
    query_mode: str
    prompt_backbone: str

    def _init_query(self) -> None:
        """The adapted query's parts, built last, so the method's own random draws are the same with or
        without them: the backbone copy (unless the prompts run on the adapted backbone), the linear
        head of the first session and the saved ``adapted`` flag."""
        if self.query_mode != "adapted":
            return
        if self.prompt_backbone == "pretrained":
            self.query_backbone = copy.deepcopy(self.backbone)
        self.adapt_head = nn.Linear(self.num_features, self.num_classes).requires_grad_(False)
        trunc_normal_(self.adapt_head.weight, std=0.02)
        nn.init.zeros_(self.adapt_head.bias)
        self.register_buffer("adapted", torch.zeros((), dtype=torch.bool))

    # -- the adapted query --------------------------------------------------------------------
    @property
    def query_net(self) -> nn.Module:
        """The backbone the query comes from (the adapted copy, else the backbone)."""
        return self.backbone if self.query_backbone is None else self.query_backbone

    @property
    def needs_adaptation(self) -> bool:
        return self.query_mode == "adapted" and not bool(self.adapted)

    def adaptation_modules(self) -> tuple[nn.Module, nn.Module]:
        return self.query_net, self.adapt_head

    def adaptation_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone, linear head) parameters the first session trains; none with a frozen query."""
        if self.query_mode != "adapted":
            return [], []
        return list(self.query_net.parameters()), list(self.adapt_head.parameters())

    def _query(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The query of images ``x`` whose prefix ``h`` the backbone computed (reused when the query
        comes from the same backbone)."""
        return self._query_from(h) if self.query_backbone is None else self.query_backbone.forward_pooled(x)


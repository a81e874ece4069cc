"""A small stand-in with the interface of ``casdap.models.dap`` for testing strategy mechanics.

Frozen backbone, a key per task, a task embedding added to the pooled features, a linear head
over all classes, and a "token-axis" parameter that must stop changing after the first task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from casdap import create_model, load_checkpoint
from casdap.errors import CasdapError


@dataclass
class DAPOutput:
    logits: torch.Tensor
    key_idx: torch.Tensor
    pull: torch.Tensor


class DoubleDAP(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, num_tasks: int) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.num_classes, self.num_tasks = num_classes, num_tasks
        d = backbone.num_features
        self.keys = nn.Parameter(torch.randn(num_tasks, d) * 0.02)
        self.task_emb = nn.Parameter(torch.zeros(num_tasks, d))
        self.token_axis = nn.Parameter(torch.zeros(d))
        self.head = nn.Linear(d, num_classes)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def freeze_token_axis(self) -> None:
        self.token_axis.requires_grad_(False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.") and p.requires_grad]

    def forward(self, x, task_id=None, selection: str = "per_image") -> DAPOutput:
        q = self.backbone.forward_pooled(x)
        sim = F.normalize(q, dim=-1) @ F.normalize(self.keys, dim=-1).t()
        if isinstance(task_id, int):
            idx = torch.full((len(x),), task_id, dtype=torch.long, device=x.device)
        elif selection == "oracle":
            idx = torch.as_tensor(task_id, device=x.device).long().expand(len(x))
        elif selection == "batch_majority":
            idx = sim.argmax(-1).mode().values.expand(len(x))
        else:
            idx = sim.argmax(-1)
        pull = sim.gather(1, idx[:, None]).mean()
        feats = q + self.task_emb[idx] + self.token_axis
        return DAPOutput(self.head(feats), idx, pull)


def build_backbone(cfg):
    model = create_model(cfg.MODEL.BACKBONE, num_classes=0, distillation=False)
    if cfg.MODEL.RANDOM_INIT:
        return model
    if not cfg.MODEL.WEIGHT_PATH:
        raise CasdapError("no pretrained backbone (test double)")
    load_checkpoint(model, cfg.MODEL.WEIGHT_PATH, finetune=True, strict=False)
    return model


def build_dap_model(cfg):
    return DoubleDAP(build_backbone(cfg), cfg.DATA.NUMBER_CLASSES, cfg.MODEL.DAP.PROMPT_POOL)

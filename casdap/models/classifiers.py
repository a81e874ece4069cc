"""The plain classifiers of the baselines: a backbone with one linear head (fine-tuning, linear probing,
EWC, LwF, replay, joint) and nearest class mean on frozen features (``ncm``)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from casdap.models.logit_mask import mask_logits

__all__ = ["BackboneClassifier", "NCMClassifier"]


class BackboneClassifier(nn.Module):
    """A CAS-ViT backbone's pooled features and one linear head over all classes.

    With ``freeze_backbone`` the backbone gets no gradients and stays in eval mode (BatchNorm
    statistics untouched), so only the head learns.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, freeze_backbone: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.freeze_backbone = freeze_backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_pooled(x))


class NCMClassifier(nn.Module):
    """Frozen backbone and nearest-class-mean prototypes of L2-normalised pooled features.

    Class sums and counts are buffers, so the prototypes live in the state dict (checkpoints,
    resuming). Logits are cosine similarities to the class means; unseen classes never win.
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.register_buffer("class_sums", torch.zeros(num_classes, backbone.num_features))
        self.register_buffer("class_counts", torch.zeros(num_classes))

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.forward_pooled(x), dim=-1)

    @staticmethod
    def logits_from(feats: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Cosine logits of normalised ``feats`` against the class means ``sums / counts``."""
        means = F.normalize(sums / counts.clamp(min=1).unsqueeze(1), dim=-1)
        return mask_logits(feats @ means.t(), counts > 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from(self.features(x), self.class_sums, self.class_counts)

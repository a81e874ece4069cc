"""Backbones whose BatchNorms and heads are far from their initial values, as after training: folding
a BatchNorm that is close to the identity would hide a wrong fold."""

import torch
import torch.nn as nn

import casdap


def trained_like(name: str = "rcvit_xs", **kw) -> nn.Module:
    torch.manual_seed(0)
    model = casdap.create_model(name, **kw)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.3)
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 0.5, generator=gen)
            m.bias.data.normal_(0, 0.5, generator=gen)
    return model

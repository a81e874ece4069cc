"""scikit-learn's handwritten digits: 1,797 real 8x8 images that ship with the package.

The embedded default data set: no download, so every command has real data to run on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def load_digits_tensors(image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as ``[N, 3, S, S]`` float images in [0, 1] (bilinear upsampling, grey to RGB)
    and ``[N]`` int64 labels 0-9, in scikit-learn's order."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.clamp_(0, 1).expand(-1, 3, -1, -1).contiguous()
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    return x, y

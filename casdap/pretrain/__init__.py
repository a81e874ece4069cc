"""Offline pretraining of the frozen backbone for the embedded digits benchmark.

``sources``: synthetic images with the digits' look and no digit in them (font glyphs, IFS
fractals); ``train``: :func:`pretrain_backbone`; ``evaluate``: frozen-feature quality on the digits.
"""

from casdap.pretrain.evaluate import digits_feature_quality
from casdap.pretrain.sources import SOURCES, build_source, normalize_input
from casdap.pretrain.train import DEFAULT_PROTOCOL, pretrain_backbone, sidecar_path

__all__ = [
    "DEFAULT_PROTOCOL",
    "SOURCES",
    "build_source",
    "digits_feature_quality",
    "normalize_input",
    "pretrain_backbone",
    "sidecar_path",
]

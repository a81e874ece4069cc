"""Offline pretraining of the frozen backbone for the embedded benchmarks.

``sources``: synthetic images with the digits' look and no digit in them (font glyphs, IFS
fractals); ``train``: :func:`pretrain_backbone`; ``evaluate``: frozen-feature quality on the digits;
``protocol``: the default protocol. Names load on first use (torch is imported only then).
"""

from casdap.lazy import lazy_getattr
from casdap.pretrain.protocol import DEFAULT_PROTOCOL

__all__ = [
    "DEFAULT_PROTOCOL",
    "SOURCES",
    "build_source",
    "digits_feature_quality",
    "normalize_input",
    "pretrain_backbone",
    "sidecar_path",
]

_LAZY = {
    "SOURCES": "casdap.pretrain.sources",
    "build_source": "casdap.pretrain.sources",
    "normalize_input": "casdap.pretrain.sources",
    "digits_feature_quality": "casdap.pretrain.evaluate",
    "pretrain_backbone": "casdap.pretrain.train",
    "sidecar_path": "casdap.pretrain.train",
}
__getattr__ = lazy_getattr("casdap.pretrain", _LAZY)

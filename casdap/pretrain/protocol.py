"""The embedded benchmarks' pretraining protocol and source names, without heavy imports (the
command line shows them in ``--help``)."""

from __future__ import annotations

from typing import Any

# The protocol of the embedded default, chosen by measurement (docs/pretraining.md).
DEFAULT_PROTOCOL: dict[str, Any] = {
    "source": "glyphs",
    "epochs": 6,
    "images_per_class": 26,
    "batch_size": 128,
    "lr": 2e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 1,
    "label_smoothing": 0.1,
}
# The keys of casdap.pretrain.sources.SOURCES (a test keeps the two equal).
SOURCE_NAMES = ("letters", "glyphs", "glyphs-xl", "fractals", "glyphs+fractals")

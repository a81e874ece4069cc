"""What ``casdap bench`` measures and its defaults, free of heavy imports (the command line builds
its ``--help`` from them); the harness is :mod:`casdap.bench`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

INFER_PATHS = ("eager", "folded", "folded_cl", "fused_cl", "compiled", "amp_bf16", "amp_fp16")
TRAIN_PATHS = ("eager", "cl", "amp_bf16", "amp_fp16")
MODES = ("train", "infer", "latency")
# every variant timed must give the eager model's logits (on the timed batch) within this
PARITY_TOLERANCE = 1e-4
# Mixed-precision paths (channels-last under autocast; fp16 training with a GradScaler) compute in
# 16 bits by design: their largest logit difference, over the largest eager logit, must stay below
# this (it catches a broken path, not rounding).
AMP_PATHS = {"amp_bf16": "bfloat16", "amp_fp16": "float16"}
AMP_PARITY_TOLERANCE = 0.1
# Forms a reference model (--reference) can be timed in, training and inference: "eager" is reported
# as variant "reference", the others as "reference_<path>" beside this package's path of that name.
REFERENCE_PATHS = ("eager", "cl", "amp_bf16", "amp_fp16")


def reference_variant(path: str) -> str:
    """The variant name under which the reference is reported in ``path``."""
    return "reference" if path == "eager" else f"reference_{path}"


@dataclass
class BenchConfig:
    models: Sequence[str] = ("rcvit_xs", "rcvit_s", "rcvit_m", "rcvit_t")
    sizes: Sequence[int] = (32, 224)
    modes: Sequence[str] = MODES
    infer_paths: Sequence[str] = ("eager", "folded", "folded_cl", "fused_cl")
    train_paths: Sequence[str] = ("eager",)
    batch: int | None = None  # None: 128 at <= 64 px, 16 above
    repeats: int = 5
    warmup: int = 2
    min_time: float = 0.2  # seconds per timed sample
    device: str = "cpu"
    threads: int | None = None
    num_classes: int = 1000
    checkpoint: str | None = None
    reference: str | None = None
    reference_paths: Sequence[str] = ("eager",)
    memory: bool = True
    dap: bool = False  # also time CAS-DAP (per-image key selection) on each backbone
    seed: int = 0

    def batch_for(self, size: int) -> int:
        return self.batch if self.batch else (128 if size <= 64 else 16)

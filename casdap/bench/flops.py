"""Work of a call in FLOPs, by torch's counter with grouped-convolution backward counted correctly."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops"]


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """Convolution backward: each requested gradient (input, weight) costs one forward convolution.

    torch's own formula ignores ``groups`` here and counts a depthwise backward as if it were a
    dense convolution (60x too much for CAS-ViT's 3x3 depthwise layers).
    """
    output_mask = args[-1]
    transposed = args[4]
    weight_taps = math.prod(w_shape[1:])  # in-channels per group x kernel area
    if transposed:  # the forward's output is this op's x
        forward = 2 * math.prod(x_shape) * weight_taps
    else:
        forward = 2 * math.prod(grad_out_shape) * weight_taps
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (multiply and add counted separately) that ``fn`` performs, by torch's counter, with
    grouped-convolution backward counted correctly."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())

"""ONNX export of a backbone or of CAS-DAP, checked against PyTorch with onnxruntime.

A backbone is exported in its BatchNorm-folded form (:mod:`casdap.deploy`), CAS-DAP as is (with
per-image key selection inside the graph); the batch axis is dynamic. The check compares
onnxruntime's outputs with the *unfolded* eager PyTorch model, so it covers both the folding and
the export.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from casdap.errors import CasdapError

__all__ = ["DAPLogitsAndKeys", "OnnxCheck", "export_onnx", "check_onnx", "require_onnx"]

INSTALL_HINT = "install the export extra: pip install 'casdap[export]' (onnx, onnxscript, onnxruntime)"


def require_onnx(*modules: str) -> None:
    """Fail with one clear message when an optional export dependency is missing."""
    import importlib

    for name in modules or ("onnx", "onnxscript", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise CasdapError(f"'{name}' is not installed; {INSTALL_HINT}") from None


class DAPLogitsAndKeys(nn.Module):
    """CAS-DAP as a graph-friendly module: images -> (logits, selected key index per image).

    The query pass, the per-image (cosine, argmax) key selection and the prompted pass are all
    inside the graph, so a deployed model needs no task identity.
    """

    output_names = ("logits", "key_idx")

    def __init__(self, dap: nn.Module) -> None:
        super().__init__()
        self.dap = dap

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.dap(images, selection="per_image")
        return out.logits, out.key_idx


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: int = 224, opset: int = 18) -> Path:
    """Write ``model`` (eval mode, batch axis dynamic) to ``path`` as one self-contained .onnx file.

    Outputs are named ``logits`` (and ``key_idx`` for :class:`DAPLogitsAndKeys`).

    The file appears only once it is complete (written beside it, then renamed).
    """
    require_onnx("onnx", "onnxscript")
    if input_size < 32 or input_size % 32:
        raise CasdapError(f"--input-size must be a multiple of 32 (the backbone's stride), got {input_size}")
    out = Path(path)
    if out.parent and not out.parent.is_dir():
        raise CasdapError(f"cannot write '{out}': folder '{out.parent}' does not exist")
    model = model.eval()
    example = torch.randn(2, 3, input_size, input_size)
    tmp = out.with_name(out.name + ".partial")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=opset,
                input_names=["images"], output_names=list(getattr(model, "output_names", ("logits",))),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False,
            )
        program.save(str(tmp), external_data=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


@dataclass
class OnnxCheck:
    max_abs_diff: float  # over the logits
    same_keys: bool | None  # CAS-DAP: key indices identical (None for a backbone)
    batches: tuple[int, ...]
    onnxruntime_ms: float
    torch_eager_ms: float
    torch_fast_ms: float
    threads: int

    def ok(self, atol: float) -> bool:
        return self.max_abs_diff <= atol and self.same_keys is not False

    def summary(self, atol: float) -> str:
        verdict = "OK" if self.ok(atol) else "MISMATCH"
        keys = "" if self.same_keys is None else f", key indices {'identical' if self.same_keys else 'DIFFER'}"
        return (
            f"onnxruntime vs PyTorch eager: max |logit diff| {self.max_abs_diff:.2e}{keys} over batches "
            f"{list(self.batches)} ({verdict}, tolerance {atol:g}); batch-1 latency (median, {self.threads} threads): "
            f"onnxruntime {self.onnxruntime_ms:.2f} ms, PyTorch eager {self.torch_eager_ms:.2f} ms, "
            f"PyTorch fast inference form {self.torch_fast_ms:.2f} ms"
        )


def _median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def check_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    input_size: int,
    fast: nn.Module | None = None,
    batches: tuple[int, ...] = (1, 3),
    repeats: int = 20,
) -> OnnxCheck:
    """Run the .onnx file in onnxruntime beside ``model`` (eager PyTorch): parity and latency.

    The first output (logits) must agree within a tolerance the caller checks; integer outputs
    (CAS-DAP's key indices) must be identical. ``fast`` is the PyTorch inference form timed beside
    both (default: the backbone folded, fused and channels-last).
    """
    require_onnx("onnxruntime")
    import onnxruntime as ort

    from casdap.deploy import optimize_for_inference

    model = model.eval()
    if fast is None:
        fast = optimize_for_inference(model, channels_last=True, fuse=True)
    threads = torch.get_num_threads()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise CasdapError(f"onnxruntime cannot load '{path}': {str(e).splitlines()[0]}") from None
    gen = torch.Generator().manual_seed(0)
    diff, same_keys = 0.0, None
    with torch.inference_mode():
        for b in batches:
            x = torch.randn(b, 3, input_size, input_size, generator=gen)
            got = [torch.from_numpy(a) for a in session.run(None, {"images": x.numpy()})]
            want = _as_tuple(model(x))
            if len(got) != len(want):
                raise CasdapError(f"'{path}' has {len(got)} outputs, the model {len(want)}")
            diff = max(diff, (got[0] - want[0]).abs().max().item())
            for g, w in zip(got[1:], want[1:]):
                same = bool(torch.equal(g.to(w.dtype), w))
                same_keys = same if same_keys is None else (same_keys and same)
        x1 = torch.randn(1, 3, input_size, input_size, generator=gen)
        x1_np = x1.numpy()
        # interleave the three so that load on the machine hits them alike
        ms = {"ort": [], "eager": [], "fast": []}
        for _ in range(max(1, repeats // 5)):
            ms["ort"].append(_median_ms(lambda: session.run(None, {"images": x1_np}), 5))
            ms["eager"].append(_median_ms(lambda: model(x1), 5))
            ms["fast"].append(_median_ms(lambda: fast(x1), 5))
    return OnnxCheck(
        max_abs_diff=diff, same_keys=same_keys, batches=tuple(batches), onnxruntime_ms=statistics.median(ms["ort"]),
        torch_eager_ms=statistics.median(ms["eager"]), torch_fast_ms=statistics.median(ms["fast"]), threads=threads,
    )

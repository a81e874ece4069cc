"""ONNX export of a backbone or of CAS-DAP, checked against PyTorch with onnxruntime.

A backbone is exported in its BatchNorm-folded form (:mod:`casdap.deploy`), CAS-DAP as is (with
per-image key selection inside the graph and, when the run restricted its logits to the selected
key's task, that restriction too); the batch axis is dynamic. The check compares onnxruntime's
outputs with the *unfolded* eager PyTorch model, so it covers both the folding and the export;
:func:`check_against_run` compares the eager export module with the run's own evaluation path.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from casdap.errors import CasdapError
from casdap.files import atomic_path

__all__ = [
    "DAPLogitsAndKeys", "OnnxCheck", "RunCheck", "export_onnx", "check_onnx", "check_against_run", "require_onnx",
    "keep_mask", "run_class_splits",
]

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
    inside the graph, so a deployed model needs no task identity. With ``keep`` (a bool
    ``[num_tasks, num_classes]`` mask, see :func:`keep_mask`) the logits of classes outside the
    selected key's task become :data:`~casdap.models.dap.MASKED_LOGIT`, inside the graph, as
    ``MODEL.DAP.RESTRICT_TO_TASK`` does at evaluation.
    """

    output_names = ("logits", "key_idx")

    def __init__(self, dap: nn.Module, keep: torch.Tensor | None = None) -> None:
        super().__init__()
        self.dap = dap
        if keep is not None:
            keep = torch.as_tensor(keep, dtype=torch.bool)
            want = (int(dap.num_tasks), int(dap.num_classes))
            if tuple(keep.shape) != want:
                raise CasdapError(f"the keep mask is {list(keep.shape)}, the model needs [num_tasks, num_classes] = "
                                  f"{list(want)}")
        self.register_buffer("keep", keep, persistent=False)

    @property
    def restricted(self) -> bool:
        return self.keep is not None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from casdap.models.logit_mask import mask_logits

        out = self.dap(images, selection="per_image")
        logits = out.logits
        if self.keep is not None:
            logits = mask_logits(logits, self.keep[out.key_idx])
        return logits, out.key_idx


def keep_mask(class_splits: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """``[len(class_splits), num_classes]`` bool: row t is True at task t's classes."""
    from casdap.models.logit_mask import task_class_masks

    for t, classes in enumerate(class_splits):
        bad = [c for c in classes if not 0 <= int(c) < num_classes]
        if bad:
            raise CasdapError(f"task {t} lists classes {bad[:5]} outside the head's 0..{num_classes - 1}")
    return task_class_masks(class_splits, num_classes)


def run_class_splits(ckpt: Any, cfg, num_tasks: int, path: str | os.PathLike) -> tuple[list[list[int]], str]:
    """The classes of each of ``num_tasks`` keys as the run's evaluation restricted them, and their source.

    From the class-to-task map a continual run's checkpoint holds (``strategy.class_to_task``);
    failing that, from ``CONTINUAL.INITIAL/INCREMENT/N_TASKS`` in natural label order (only when
    ``CONTINUAL.SHUFFLE_CLASSES`` is False; tasks past the checkpoint's ``tasks_done`` get none).
    Tasks that were not trained get no classes (their logits all masked), as in the run.
    """
    from casdap.continual.benchmarks import task_split

    ckpt = ckpt if isinstance(ckpt, Mapping) else {}
    strategy = ckpt.get("strategy")
    class_to_task = strategy.get("class_to_task") if isinstance(strategy, Mapping) else None
    if class_to_task:
        pairs = {int(c): int(t) for c, t in class_to_task.items()}
        far = sorted({t for t in pairs.values() if not 0 <= t < num_tasks})
        if far:
            raise CasdapError(f"checkpoint '{path}' maps classes to tasks {far[:5]}, the model has keys for "
                              f"tasks 0..{num_tasks - 1}")
        splits = [sorted(c for c, t in pairs.items() if t == task) for task in range(num_tasks)]
        return splits, f"the class-to-task map in '{path}'"
    if cfg.CONTINUAL.SHUFFLE_CLASSES:
        raise CasdapError(
            f"MODEL.DAP.RESTRICT_TO_TASK is True but checkpoint '{path}' holds no class-to-task map and "
            "CONTINUAL.SHUFFLE_CLASSES is True, so the classes of each task are unknown: pass a checkpoint the "
            "continual run wrote (RUN/checkpoints/task_XXX.pth), or MODEL.DAP.RESTRICT_TO_TASK False in --opts "
            "to export unrestricted logits"
        )
    sizes = task_split(cfg, int(cfg.DATA.NUMBER_CLASSES))
    done = min(int(ckpt.get("tasks_done", len(sizes))), len(sizes))
    if len(sizes) > num_tasks:
        raise CasdapError(f"CONTINUAL.N_TASKS ({len(sizes)}) exceeds the model's {num_tasks} keys")
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    splits = [list(range(bounds[t], bounds[t + 1])) if t < done else [] for t in range(num_tasks)]
    return splits, f"CONTINUAL.INITIAL/INCREMENT/N_TASKS in natural label order, {done} of {len(sizes)} tasks trained"


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
    with atomic_path(out) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=opset,
                input_names=["images"], output_names=list(getattr(model, "output_names", ("logits",))),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False,
            )
        program.save(str(tmp), external_data=False)
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


@dataclass
class RunCheck:
    max_abs_diff: float  # over the logits
    same_keys: bool
    batch: int
    restricted: bool

    def ok(self, atol: float) -> bool:
        return self.max_abs_diff <= atol and self.same_keys

    def summary(self, atol: float) -> str:
        verdict = "OK" if self.ok(atol) else "MISMATCH"
        how = "logits restricted to the selected key's task" if self.restricted else "unrestricted logits"
        return (
            f"export vs the run's evaluation (per-image keys, {how}): max |logit diff| {self.max_abs_diff:.2e}, "
            f"key indices {'identical' if self.same_keys else 'DIFFER'} on a batch of {self.batch} ({verdict}, "
            f"tolerance {atol:g})"
        )


def check_against_run(
    module: DAPLogitsAndKeys, class_splits: Sequence[Sequence[int]] | None, input_size: int, batch: int = 4
) -> RunCheck:
    """``module`` (eager) beside the run's evaluation path on one random batch.

    The run's path is what ``DAPStrategy`` does at evaluation with per-image selection: the model's
    forward, then :func:`~casdap.models.dap.restrict_logits` over ``class_splits`` when the run
    restricted its logits (``None``: it did not).
    """
    from casdap.models.dap import restrict_logits

    x = torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        module.eval()
        got_logits, got_keys = module(x)
        out = module.dap(x, selection="per_image")
        want = out.logits if class_splits is None else restrict_logits(out.logits, out.key_idx, class_splits)
    return RunCheck(
        max_abs_diff=(got_logits - want).abs().max().item(), same_keys=bool(torch.equal(got_keys, out.key_idx)),
        batch=batch, restricted=class_splits is not None,
    )


# ------------------------------------------------------------------ models from checkpoints
def build_from_checkpoint(name: str, path: str):
    """The backbone with the head shape and distillation head that the checkpoint holds."""
    from casdap import create_model, load_checkpoint
    from casdap.checkpoint import checkpoint_head

    distillation, num_classes = checkpoint_head(path)
    model = create_model(name, num_classes=num_classes or 0, distillation=distillation)
    load_checkpoint(model, path)
    return model.eval()


def dap_config(config: str, opts: list[str]):
    """The run's config for rebuilding a CAS-DAP whose every weight comes from a checkpoint."""
    from casdap.config import load_config

    # The checkpoint carries the backbone too: building must not look for the pretrained file.
    return load_config(config, [*opts, "MODEL.RANDOM_INIT", "True", "MODEL.WEIGHT_PATH", ""])


def build_dap_from_checkpoint(config: str, opts: list[str], path: str, cfg=None):
    """CAS-DAP as the config describes it, every weight (backbone included) from the checkpoint."""
    import logging

    from casdap import load_checkpoint
    from casdap.models.build import build_dap_model

    cfg = dap_config(config, opts) if cfg is None else cfg
    logger = logging.getLogger("casdap.models.dap")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the random-init warning is about weights replaced just below
    try:
        model = build_dap_model(cfg)
    finally:
        logger.setLevel(level)
    load_checkpoint(model, path)
    model.backbone.random_init = False
    return model.eval()

"""One benchmark run: every (model, size, mode, variant) of a :class:`BenchConfig`, as a JSON-ready dict.

Variants (inference): ``eager`` (the model as trained), ``folded`` (BatchNorm folded away),
``folded_cl`` (folded, channels-last), ``fused_cl`` (folded, channels-last, activations and residual
adds fused into the convolutions), ``compiled`` (folded, channels-last, ``torch.compile``),
``amp_bf16`` / ``amp_fp16`` (channels-last under ``torch.autocast``) and ``reference`` (a reference
implementation loaded from a file, carrying our weights). Training: ``eager``, ``cl``
(channels-last), ``amp_bf16`` / ``amp_fp16`` (channels-last under autocast, fp16 with a GradScaler)
and ``reference``. With ``dap=True`` every mode also
times ``casdap``: CAS-DAP (per-image key selection; training on task 0 with its frozen backbone)
built on the same backbone, reported against the plain backbone (``eager``), and in inference
``casdap_fast`` (:func:`casdap.deploy.optimize_dap_for_inference`, checked to give the same logits
and keys), also against the backbone's own fast form (``fused_cl``). Every variant must give the
eager model's logits within :data:`~casdap.bench.config.PARITY_TOLERANCE` before it is timed (the
mixed-precision paths within :data:`~casdap.bench.config.AMP_PARITY_TOLERANCE` of the largest logit).
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from casdap.bench.config import (
    AMP_PARITY_TOLERANCE,
    AMP_PATHS,
    INFER_PATHS,
    MODES,
    PARITY_TOLERANCE,
    REFERENCE_PATHS,
    TRAIN_PATHS,
    BenchConfig,
    reference_variant,
)
from casdap.bench.flops import count_flops
from casdap.bench.harness import Stats, exact_fp32, matmul_gflops, synchronizer, time_interleaved
from casdap.bench.memory import peak_memory_bytes
from casdap.bench.models import build_dap, build_model, infer_variants, load_reference, reference_variants
from casdap.bench.report import row_line
from casdap.errors import CasdapError

__all__ = ["run_benchmark"]


def _train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, channels_last: bool = False,
                   amp: torch.dtype | None = None):
    """One AdamW step; ``amp``: under autocast in that dtype (channels-last), fp16 with a GradScaler."""
    model.train()
    if channels_last or amp is not None:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    autocast = (lambda: torch.autocast(x.device.type, dtype=amp)) if amp is not None else contextlib.nullcontext
    scaler = torch.amp.GradScaler(x.device.type, enabled=amp is torch.float16)

    def step() -> None:
        with autocast():
            out = model(x)
            outs = out if isinstance(out, tuple) else (out,)
            loss = sum(F.cross_entropy(o.float(), y) for o in outs) / len(outs)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def _amp_dtype(path: str) -> torch.dtype | None:
    return getattr(torch, AMP_PATHS[path]) if path in AMP_PATHS else None


def _dap_train_step_fn(dap: nn.Module, x: torch.Tensor, y: torch.Tensor, sim_lambda: float = 0.1):
    """One DAP training step on task 0: CE minus the key pull, Adam on the prompt parameters."""
    dap.train()
    opt = torch.optim.Adam(dap.trainable_parameters(), lr=1e-5, betas=(0.9, 0.9))

    def step() -> None:
        out = dap(x, task_id=0)
        loss = F.cross_entropy(out.logits, y) - sim_lambda * out.pull
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


# -- the run -----------------------------------------------------------------------------------


def _machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _ratio(num: list[float], den: list[float]) -> Stats:
    """Per-repeat ratios of two interleaved sample lists."""
    return Stats.of(a / b for a, b in zip(num, den))


def _resolve_device(name: str) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise CasdapError("--device cuda: no CUDA device is visible to torch; use --device cpu")
        return torch.device("cuda")
    if name != "cpu":
        raise CasdapError(f"--device must be 'cpu' or 'cuda', got '{name}'")
    return torch.device("cpu")


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every (model, size, mode, variant) of ``cfg``; return a JSON-ready dict."""
    from casdap import list_models
    from casdap.deploy import optimize_dap_for_inference

    device = _resolve_device(cfg.device)
    unknown = [m for m in cfg.models if m not in list_models()]
    if unknown:
        raise CasdapError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(list_models())}")
    bad = [m for m in cfg.modes if m not in MODES]
    if bad:
        raise CasdapError(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    bad = [p for p in cfg.infer_paths if p not in INFER_PATHS] + [p for p in cfg.train_paths if p not in TRAIN_PATHS]
    if bad:
        raise CasdapError(
            f"unknown path(s) {', '.join(bad)}; inference: {', '.join(INFER_PATHS)}; training: {', '.join(TRAIN_PATHS)}"
        )
    bad = [p for p in cfg.reference_paths if p not in REFERENCE_PATHS]
    if bad or not cfg.reference_paths:
        raise CasdapError(f"unknown reference path(s) {', '.join(bad) or '(none)'}; choose from "
                          f"{', '.join(REFERENCE_PATHS)}")
    if not cfg.reference and list(cfg.reference_paths) != ["eager"]:
        raise CasdapError("--reference-paths needs --reference FILE.py (the model to time in those forms)")
    if any(s < 32 or s % 32 for s in cfg.sizes):
        raise CasdapError(f"--sizes must be multiples of 32 (the backbone's stride), got {list(cfg.sizes)}")
    if cfg.repeats < 1 or cfg.min_time <= 0:
        raise CasdapError("--repeats must be >= 1 and --min-time > 0")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sync = synchronizer(device)

    matmul: list[float] = matmul_gflops(device, cfg.repeats, cfg.min_time)
    log(f"fp32 matmul: {statistics.median(matmul):.1f} GFLOP/s (median of {len(matmul)})")
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    parity: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(cfg.seed)

    for name in cfg.models:
        model = build_model(cfg, name, device)
        reference = None
        if cfg.reference:
            reference = load_reference(cfg.reference, name, model.cpu(), cfg.num_classes).to(device)
            model.to(device)
        for size in cfg.sizes:
            batch = cfg.batch_for(size)
            x = torch.randn(batch, 3, size, size, generator=gen).to(device)
            y = torch.randint(0, cfg.num_classes, (batch,), generator=gen).to(device)
            eval_model = copy.deepcopy(model).eval()
            with torch.inference_mode():
                fwd_flops = count_flops(lambda m=eval_model, one=x[:1]: m(one))
            train_flops = count_flops(_train_step_fn(copy.deepcopy(model), x[:2], y[:2])) / 2
            dap = build_dap(model, cfg.num_classes) if cfg.dap else None
            if dap is not None:
                with torch.inference_mode():
                    dap_fwd_flops = count_flops(lambda d=dap, one=x[:1]: d(one))
                dap_train_flops = count_flops(_dap_train_step_fn(copy.deepcopy(dap), x[:2], y[:2])) / 2
                dap_fast = optimize_dap_for_inference(dap)
                with torch.inference_mode(), exact_fp32(device):
                    want, got = dap(x), dap_fast(x)
                diff = (got.logits - want.logits).abs().max().item()
                parity.append({"model": name, "size": size, "variant": "casdap_fast", "against": "casdap",
                               "max_abs_diff": diff, "same_keys": bool(torch.equal(got.key_idx, want.key_idx))})
                if diff > PARITY_TOLERANCE or not torch.equal(got.key_idx, want.key_idx):
                    raise CasdapError(f"{name} at {size}px: the fast CAS-DAP differs from CAS-DAP ({diff:.2e})")
            variants = infer_variants(cfg, model) if {"infer", "latency"} & set(cfg.modes) else {}
            if reference is not None:
                for p, m in reference_variants(cfg, reference).items():
                    variants.setdefault(p, m)
            with torch.inference_mode(), exact_fp32(device):
                want = eval_model(x)
                for p, m in variants.items():
                    start = time.perf_counter()
                    got = m(x)
                    first_call = time.perf_counter() - start  # includes compilation for 'compiled'
                    diff = (got - want).abs().max().item()
                    parity.append({"model": name, "size": size, "variant": p, "max_abs_diff": diff,
                                   "first_call_s": first_call})
                    log(f"{name} {size}px: {p} vs eager, max |diff| of eval logits = {diff:.2e}")
                    if p.removeprefix("reference_") in AMP_PATHS:  # 16-bit by design: relative to the logits' scale
                        scale = want.abs().max().item()
                        if not diff <= AMP_PARITY_TOLERANCE * scale:
                            raise CasdapError(
                                f"{name} at {size}px: the '{p}' outputs differ from the eager model by {diff:.2e}, "
                                f"more than {AMP_PARITY_TOLERANCE:g} of the largest logit ({scale:.2e}); "
                                "the mixed-precision path is broken"
                            )
                    elif diff > PARITY_TOLERANCE:
                        raise CasdapError(
                            f"{name} at {size}px: the '{p}' outputs differ from the eager model by {diff:.2e} "
                            f"(> {PARITY_TOLERANCE:g}); its timings would not compare like with like"
                        )
            matmul += matmul_gflops(device, max(1, cfg.repeats // 2), cfg.min_time)

            for mode in cfg.modes:
                if mode == "train":
                    fns = {p: _train_step_fn(copy.deepcopy(model), x, y, channels_last=(p == "cl"), amp=_amp_dtype(p))
                           for p in cfg.train_paths}
                    if reference is not None:
                        for p in cfg.reference_paths:
                            fns[reference_variant(p)] = _train_step_fn(
                                copy.deepcopy(reference), x, y, channels_last=(p == "cl"), amp=_amp_dtype(p))
                    if dap is not None:
                        fns["casdap"] = _dap_train_step_fn(copy.deepcopy(dap), x, y)
                    n, flops = batch, train_flops
                    flops_of = {"casdap": dap_train_flops if dap is not None else 0.0}
                    wrap = contextlib.nullcontext
                else:
                    n = batch if mode == "infer" else 1
                    inputs = x if mode == "infer" else x[:1]
                    fns = {p: (lambda m=m, i=inputs: m(i)) for p, m in variants.items()}
                    if dap is not None:  # per-image key selection
                        fns["casdap"] = lambda d=dap, i=inputs: d(i)
                        fns["casdap_fast"] = lambda d=dap_fast, i=inputs: d(i)
                    flops = fwd_flops
                    flops_of = dict.fromkeys(("casdap", "casdap_fast"), dap_fwd_flops if dap is not None else 0.0)
                    wrap = torch.inference_mode
                with wrap():
                    samples, warm = time_interleaved(fns, cfg.repeats, cfg.warmup, cfg.min_time, sync)
                    memory = {p: peak_memory_bytes(fn, device) if cfg.memory else None for p, fn in fns.items()}
                for p, secs in samples.items():
                    ips = Stats.of(n / s for s in secs)
                    work = flops_of.get(p, flops)
                    rows.append({
                        "model": name, "size": size, "mode": mode, "variant": p, "batch": n,
                        "images_per_s": asdict(ips),
                        "ms_per_batch": statistics.median(secs) * 1e3,
                        "warmup_s": warm[p],
                        "gflop_per_image": work / 1e9,
                        "gflop_per_s": ips.median * work / 1e9,
                        "peak_memory_mb": None if memory[p] is None else memory[p] / 2**20,
                    })
                    log(row_line(rows[-1]))
                base = "eager" if "eager" in samples else None
                for p in samples:
                    againsts = [(base, "vs_eager"), ("reference", "ours_vs_reference"),
                                (f"reference_{p}", "ours_vs_reference_same_path")]
                    if p == "casdap_fast":
                        againsts += [("fused_cl", "casdap_fast_vs_fast_backbone"), ("casdap", "vs_casdap")]
                    for other, kind in againsts:
                        if other is None or other not in samples or p == other or p.startswith("reference"):
                            continue
                        if p in ("casdap", "casdap_fast") and other in (base, "reference"):
                            kind = f"{p}_vs_backbone" if other == base else f"{p}_vs_reference"
                        # speed ratio: throughput of p over throughput of other (> 1: p is faster);
                        # time ratio: its inverse, time per image of p over that of other
                        ratios.append({"model": name, "size": size, "mode": mode, "variant": p,
                                       "against": other, "kind": kind,
                                       "speed_ratio": asdict(_ratio(samples[other], samples[p])),
                                       "time_ratio": asdict(_ratio(samples[p], samples[other]))})
            del eval_model, dap
            dap_fast = None

    mm = Stats.of(matmul)
    for row in rows:
        row["fraction_of_matmul"] = row["gflop_per_s"] / mm.median
    return {
        "machine": _machine(device),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "matmul_gflop_per_s": asdict(mm),
        "results": rows,
        "ratios": ratios,
        "parity": parity,
        "notes": "parity: max |logit difference| of each variant from the eager model on the timed batch, and "
        "the time of that first call (for 'compiled' it includes the compilation); "
        "images_per_s: median and min-max over repeats; speed_ratio: median of per-repeat throughput "
        "ratios (variant over 'against', > 1 means faster); peak_memory_mb: peak tensor memory allocated "
        "during one step above what was live before it; fraction_of_matmul: achieved GFLOP/s over the "
        "run's median fp32 matmul GFLOP/s.",
    }

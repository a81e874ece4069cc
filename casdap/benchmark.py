"""Speed of the CAS-ViT backbones: training and inference images/s, batch-1 latency, peak memory.

Timings on a shared machine drift while they run, so every comparison is made *within* one
process and *interleaved*: each repeat times every variant once, in turn, and a ratio is the
median of the per-repeat ratios. Each figure is the median over repeats with its min-max spread.
The fp32 matmul rate is measured in the same run, so each model's achieved GFLOP/s can be read
as a fraction of what the hardware reaches on the most favourable kernel.

Variants (inference): ``eager`` (the model as trained), ``folded`` (BatchNorm folded away),
``folded_cl`` (folded, channels-last), ``fused_cl`` (folded, channels-last, activations and residual
adds fused into the convolutions), ``compiled`` (folded, channels-last, ``torch.compile``)
and ``reference`` (a reference implementation loaded from a file, carrying our weights).
Training: ``eager``, ``cl`` (channels-last) and ``reference``. With ``dap=True`` every mode also
times ``casdap``: CAS-DAP (per-image key selection; training on task 0 with its frozen backbone)
built on the same backbone, reported against the plain backbone (``eager``), and in inference
``casdap_fast`` (:func:`casdap.deploy.optimize_dap_for_inference`, checked to give the same logits
and keys), also against the backbone's own fast form (``fused_cl``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from casdap.bench_config import INFER_PATHS, MODES, PARITY_TOLERANCE, TRAIN_PATHS, BenchConfig
from casdap.errors import CasdapError

__all__ = [
    "BenchConfig",
    "INFER_PATHS",
    "TRAIN_PATHS",
    "count_flops",
    "load_reference",
    "matmul_gflops",
    "run_benchmark",
    "format_table",
]

@dataclass
class Stats:
    """Median and spread of a list of samples."""

    median: float
    min: float
    max: float
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, samples: Iterable[float]) -> Stats:
        s = list(samples)
        return cls(statistics.median(s), min(s), max(s), s)


# -- timing ------------------------------------------------------------------------------------


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """Full fp32 arithmetic on CUDA for the parity checks: by default cuDNN convolutions there run in
    TF32 (a 10-bit mantissa), which moves the logits of two equal functions apart by about 1e-3,
    far above :data:`PARITY_TOLERANCE`. Timings keep the device's defaults."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _time_calls(fn: Callable[[], Any], iters: int, sync: Callable[[], None]) -> float:
    """Seconds per call over ``iters`` back-to-back calls (the device drained before and after)."""
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, min_time: float, sync: Callable[[], None]
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per call of every function, sampled in turn ``repeats`` times.

    Returns the samples and each function's warm-up time (which includes compilation where the
    function compiles on first call).
    """
    warm: dict[str, float] = {}
    iters: dict[str, int] = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        for _ in range(max(warmup, 1)):
            fn()
        sync()
        warm[name] = time.perf_counter() - start
        one = _time_calls(fn, 1, sync)
        iters[name] = max(1, math.ceil(min_time / max(one, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(_time_calls(fn, iters[name], sync))
    return samples, warm


def matmul_gflops(device: torch.device, repeats: int = 5, min_time: float = 0.2) -> list[float]:
    """fp32 square matmul GFLOP/s samples: the practical peak the other figures are read against."""
    n = 1024 if device.type == "cpu" else 4096
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    out = torch.empty(n, n, device=device)
    samples, _ = time_interleaved(
        {"mm": lambda: torch.mm(a, b, out=out)}, repeats, 2, min_time, _synchronizer(device)
    )
    return [2 * n**3 / t / 1e9 for t in samples["mm"]]


# -- work and memory ---------------------------------------------------------------------------


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


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler backend's C++ log lines (start/stop notices) on file descriptor 2."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak of the tensor memory allocated during one call, above what was live before it.

    CUDA reads the caching allocator's counters; CPU replays the profiler's allocation events
    (None where this torch build does not record them).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    try:
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except Exception:  # the profiler's raw events are not a stable interface
        return None
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


# -- models ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _timm_registry_untouched():
    """Reference files decorate their builders with timm's ``register_model``; keep that from
    replacing this package's timm entries of the same names."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import timm.models
        import timm.models.registry as legacy_registry
    with mock.patch.object(legacy_registry, "register_model", lambda fn: fn), \
            mock.patch.object(timm.models, "register_model", lambda fn: fn):
        yield


def load_reference(path: str | os.PathLike, name: str, donor: nn.Module, num_classes: int = 1000) -> nn.Module:
    """Build model ``name`` from a reference model file and give it ``donor``'s weights.

    The file is imported from its path (for example the official CAS-ViT ``rcvit.py``); its state
    dict layout must equal ours, which is checked with ``strict=True``.
    """
    p = Path(path)
    if not p.is_file():
        raise CasdapError(f"reference model file '{p}' does not exist")
    module_name = f"casdap_reference_{p.stem}_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, p)
    if spec is None or spec.loader is None:
        raise CasdapError(f"reference model file '{p}' cannot be imported (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    try:
        with _timm_registry_untouched(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        missing = (e.name or str(e)).split(".")[0]
        hint = (
            f"install it: pip install {missing}"
            if missing != "timm"
            else f"it needs '{e.name}', which this timm version does not provide; use timm 1.x"
        )
        raise CasdapError(f"reference model file '{p}' imports '{e.name}', which is not available: {hint}") from None
    except ImportError as e:
        raise CasdapError(f"reference model file '{p}' failed to import: {e}") from None
    except Exception as e:
        raise CasdapError(f"reference model file '{p}' failed to import: {type(e).__name__}: {e}") from None
    builder = getattr(module, name, None)
    if not callable(builder):
        found = sorted(k for k in vars(module) if k.startswith("rcvit"))
        raise CasdapError(
            f"reference model file '{p}' defines no '{name}'" + (f" (it has: {', '.join(found)})" if found else "")
        )
    distillation = getattr(donor, "dist_head", None) is not None
    try:
        model = builder(num_classes=num_classes, distillation=distillation)
    except TypeError as e:
        raise CasdapError(f"reference '{name}' in '{p}' does not accept num_classes/distillation: {e}") from None
    try:
        model.load_state_dict(donor.state_dict(), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CasdapError(f"reference '{name}' in '{p}' has a different parameter layout from ours: {first}") from None
    return model


def _build_model(cfg: BenchConfig, name: str, device: torch.device) -> nn.Module:
    from casdap import create_model, load_checkpoint

    torch.manual_seed(cfg.seed)
    model = create_model(name, num_classes=cfg.num_classes)
    if cfg.checkpoint:
        load_checkpoint(model, cfg.checkpoint)
    else:
        # Non-trivial BatchNorm statistics, so folding is exercised as it is on trained weights.
        gen = torch.Generator().manual_seed(cfg.seed)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.to(device)


def _infer_variants(cfg: BenchConfig, model: nn.Module) -> dict[str, nn.Module]:
    from casdap.deploy import optimize_for_inference

    variants: dict[str, nn.Module] = {}
    for path in cfg.infer_paths:
        if path == "eager":
            variants[path] = copy.deepcopy(model).eval()
        elif path == "folded":
            variants[path] = optimize_for_inference(model, channels_last=False)
        elif path == "folded_cl":
            variants[path] = optimize_for_inference(model, channels_last=True)
        elif path == "fused_cl":
            variants[path] = optimize_for_inference(model, channels_last=True, fuse=True)
        elif path == "compiled":
            variants[path] = optimize_for_inference(model, channels_last=True, compile=True)
    return variants


def _train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, channels_last: bool = False):
    model.train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        out = model(x)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum(F.cross_entropy(o, y) for o in outs) / len(outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _build_dap(model: nn.Module, num_classes: int) -> nn.Module:
    """CAS-DAP with the default settings (prompted stages 2 and 3, kv injection, 10 tokens, pool of
    10 keys) on a frozen copy of ``model``; initial prompt weights cost the same as trained ones."""
    from casdap.models.dap import CASDAP

    return CASDAP(copy.deepcopy(model), num_classes=num_classes).eval()


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
    if any(s < 32 or s % 32 for s in cfg.sizes):
        raise CasdapError(f"--sizes must be multiples of 32 (the backbone's stride), got {list(cfg.sizes)}")
    if cfg.repeats < 1 or cfg.min_time <= 0:
        raise CasdapError("--repeats must be >= 1 and --min-time > 0")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sync = _synchronizer(device)

    matmul: list[float] = matmul_gflops(device, cfg.repeats, cfg.min_time)
    log(f"fp32 matmul: {statistics.median(matmul):.1f} GFLOP/s (median of {len(matmul)})")
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    parity: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(cfg.seed)

    for name in cfg.models:
        model = _build_model(cfg, name, device)
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
            dap = _build_dap(model, cfg.num_classes) if cfg.dap else None
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
            variants = _infer_variants(cfg, model) if {"infer", "latency"} & set(cfg.modes) else {}
            if reference is not None:
                variants.setdefault("reference", copy.deepcopy(reference).eval())
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
                    if diff > PARITY_TOLERANCE:
                        raise CasdapError(
                            f"{name} at {size}px: the '{p}' outputs differ from the eager model by {diff:.2e} "
                            f"(> {PARITY_TOLERANCE:g}); its timings would not compare like with like"
                        )
            matmul += matmul_gflops(device, max(1, cfg.repeats // 2), cfg.min_time)

            for mode in cfg.modes:
                if mode == "train":
                    paths = list(cfg.train_paths) + (["reference"] if reference is not None else [])
                    fns = {
                        p: _train_step_fn(
                            copy.deepcopy(reference if p == "reference" else model), x, y, channels_last=(p == "cl")
                        )
                        for p in paths
                    }
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
                    log(_row_line(rows[-1]))
                base = "eager" if "eager" in samples else None
                for p in samples:
                    againsts = [(base, "vs_eager"), ("reference", "ours_vs_reference")]
                    if p == "casdap_fast":
                        againsts += [("fused_cl", "casdap_fast_vs_fast_backbone"), ("casdap", "vs_casdap")]
                    for other, kind in againsts:
                        if other is None or other not in samples or p == other or p == "reference":
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


def _row_line(r: dict[str, Any]) -> str:
    ips = r["images_per_s"]
    mem = "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
    return (f"{r['model']:<9} {r['size']:>4} {r['mode']:<7} {r['variant']:<10} {r['batch']:>5} "
            f"{ips['median']:>9.1f} [{ips['min']:.1f}-{ips['max']:.1f}] {r['ms_per_batch']:>9.2f} ms  mem {mem} MB")


def format_table(result: dict[str, Any]) -> str:
    """The results as a Markdown table, then the ratios."""
    mm, machine = result["matmul_gflop_per_s"], result["machine"]
    lines = [
        f"fp32 matmul: {mm['median']:.1f} GFLOP/s (min {mm['min']:.1f}, max {mm['max']:.1f}); "
        f"{machine['cpu']}, {machine['torch_threads']} threads, torch {machine['torch']}, device {machine['device']}",
        "",
        "| model | px | mode | variant | batch | images/s (median [min-max]) | ms/batch | GFLOP/img | GFLOP/s "
        "| % matmul | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        ips = r["images_per_s"]
        mem = "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        lines.append(
            f"| {r['model']} | {r['size']} | {r['mode']} | {r['variant']} | {r['batch']} | "
            f"{ips['median']:.1f} [{ips['min']:.1f}-{ips['max']:.1f}] | {r['ms_per_batch']:.2f} | "
            f"{r['gflop_per_image']:.3f} | {r['gflop_per_s']:.1f} | {100 * r['fraction_of_matmul']:.0f}% | {mem} |"
        )
    if result["ratios"]:
        lines += ["", "| model | px | mode | variant | against | speed ratio (median [min-max]) | time ratio |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["ratios"]:
            s, t = r["speed_ratio"], r["time_ratio"]
            lines.append(f"| {r['model']} | {r['size']} | {r['mode']} | {r['variant']} | {r['against']} | "
                         f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}] | {t['median']:.2f} |")
    for p in result.get("parity", []):
        lines.append(f"parity {p['model']} {p['size']}px {p['variant']} vs {p.get('against', 'eager')}: "
                     f"max |diff| {p['max_abs_diff']:.2e}")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Write atomically, so an interrupted run never leaves half a file."""
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    os.replace(tmp, p)


if __name__ == "__main__":  # pragma: no cover - ``python -m casdap.benchmark`` == ``casdap bench``
    from casdap.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))

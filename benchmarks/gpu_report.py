"""GPU measurements of CAS-ViT and CAS-DAP in one run: one JSON file and one Markdown report.

    python benchmarks/gpu_report.py --out OUT [--reference rcvit.py] [--budget-s 330]

What it measures, on one CUDA device, at 224 px (``--size``):

1. Backbones (rcvit_xs/s/m/t): training and inference images/s of this project's definition and,
   with ``--reference`` (the official CAS-ViT ``classification/model/rcvit.py``, given our weights),
   the official one, in the variants ``eager`` (fp32, NCHW), ``channels_last``, ``amp_bf16`` and
   ``amp_fp16`` (channels-last; fp16 training with a GradScaler), plus, for inference, this
   project's deploy form (BatchNorm folded, channels-last, bf16). Each model's variants are timed
   interleaved in one process (``casdap.bench.time_interleaved``, device synchronised around
   every sample); peak memory is the caching allocator's peak above what was live before the call.
2. CAS-DAP / backbone inference time ratio for every model (default CAS-DAP settings, per-image
   key selection), fp32 and bf16, and the fast CAS-DAP (``optimize_dap_for_inference``).
3. Continual DAP training throughput on CIFAR-100-shaped data (32 px images in the
   ``cifar-100-python`` layout, resized to 224 px by the real timm pipeline in DataLoader workers,
   through ``casdap cl``'s runner and Avalanche) versus the same DAP training step on synthetic
   GPU-resident tensors; the gap is the input pipeline's (and the framework's) share.
4. ``torch.compile`` (inductor, default mode; channels-last, bf16) for inference and training,
   with the compile time, as far as the time budget allows (the stages above come first).

Everything is written to OUT/gpu_report.json and OUT/gpu_report.md (rewritten after every stage,
so an interrupted run still leaves what it measured). Without a GPU, ``--device cpu --quick``
runs the same code on tiny sizes to check it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from casdap.bench import (  # noqa: E402
    Stats,
    count_flops,
    exact_fp32,
    load_reference,
    peak_memory_bytes,
    time_interleaved,
)

MODELS = ("rcvit_xs", "rcvit_s", "rcvit_m", "rcvit_t")
TRAIN_VARIANTS = ("eager", "channels_last", "amp_bf16", "amp_fp16")
INFER_VARIANTS = ("eager", "channels_last", "amp_bf16", "amp_fp16")
RESERVE_S = 60.0  # kept for the CAS-DAP/backbone and continual stages when the backbones run long


class Budget:
    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def _sync(device: torch.device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


VARIANT_SETTINGS = {  # channels-last, autocast dtype
    "eager": (False, None),
    "channels_last": (True, None),
    "amp_bf16": (True, torch.bfloat16),
    "amp_fp16": (True, torch.float16),
    "compiled": (True, torch.bfloat16),
}


def _variant_copy(model: torch.nn.Module, x: torch.Tensor, variant: str, train: bool):
    """A copy of ``model`` in train or eval mode, ``x`` and the autocast dtype, channels-last when the
    variant asks for it."""
    cl, dtype = VARIANT_SETTINGS[variant]
    model = copy.deepcopy(model).train(train)
    if cl:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x, dtype


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, variant: str, device: torch.device,
               compiled: str | None = None):
    """One optimizer step (AdamW) of ``model`` on ``(x, y)``; fp16 uses a GradScaler."""
    model, x, dtype = _variant_copy(model, x, variant, train=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    fwd = torch.compile(model, backend=compiled) if compiled else model

    def step() -> None:
        with _autocast(device, dtype):
            out = fwd(x)
            outs = out if isinstance(out, tuple) else (out,)
            loss = sum(F.cross_entropy(o.float(), y) for o in outs) / len(outs)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def infer_fn(model: torch.nn.Module, x: torch.Tensor, variant: str, device: torch.device,
             compiled: str | None = None):
    model, x, dtype = _variant_copy(model, x, variant, train=False)
    fwd = torch.compile(model, backend=compiled) if compiled else model

    def call():
        with _autocast(device, dtype):
            return fwd(x)

    return call


def _row(model: str, mode: str, impl: str, variant: str, batch: int, secs: list[float], memory: int | None,
         gflop: float | None, warm: float) -> dict[str, Any]:
    ips = Stats.of(batch / s for s in secs)
    return {
        "model": model, "mode": mode, "impl": impl, "variant": variant, "batch": batch,
        "images_per_s": ips.__dict__, "ms_per_batch": statistics.median(secs) * 1e3,
        "peak_memory_mb": None if memory is None else memory / 2**20,
        "gflop_per_image": gflop, "tflop_per_s": None if gflop is None else ips.median * gflop / 1e3,
        "warmup_s": warm,
    }


def _ratio(num: list[float], den: list[float]) -> dict[str, float]:
    return Stats.of(a / b for a, b in zip(num, den)).__dict__


def _time(fns: dict, args: argparse.Namespace, device: torch.device):
    with torch.inference_mode() if args._infer else contextlib.nullcontext():
        samples, warm = time_interleaved(fns, args.repeats, args.warmup, args.min_time, _sync(device))
        memory = {k: peak_memory_bytes(fn, device) for k, fn in fns.items()}
    return samples, warm, memory


# ----------------------------------------------------------------------------------- stages
def stage_backbones(args, device, result, log, budget: Budget) -> None:
    from casdap import create_model
    from casdap.deploy import optimize_for_inference

    gen = torch.Generator().manual_seed(0)
    for name in args.models:
        if budget.left() < RESERVE_S:
            result["skipped"].append(f"backbones {name}: {budget.left():.0f} s of the time budget left, "
                                     f"{RESERVE_S:.0f} s kept for the CAS-DAP and continual stages")
            continue
        torch.manual_seed(0)
        model = create_model(name, num_classes=1000)
        impls = {"project": model}
        if args.reference:
            impls["official"] = load_reference(args.reference, name, model, 1000)
            with torch.no_grad():  # same weights, same function: checked before timing
                probe = torch.randn(2, 3, args.size, args.size, generator=gen)
                diff = (impls["official"].eval()(probe) - model.eval()(probe)).abs().max().item()
            result["parity"].append({"model": name, "official_vs_project_max_abs_diff": diff})
        impls = {k: m.to(device) for k, m in impls.items()}
        for mode, batch in (("train", args.train_batch), ("infer", args.infer_batch)):
            x = torch.randn(batch, 3, args.size, args.size, generator=gen).to(device)
            y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
            with torch.inference_mode() if mode == "infer" else contextlib.nullcontext():
                one = x[:1]
                gflop = (count_flops(lambda m=model, o=one: m.eval()(o)) if mode == "infer" else
                         count_flops(train_step(model, x[:2], y[:2], "eager", device)) / 2) / 1e9
            fns, notes = {}, []
            variants = TRAIN_VARIANTS if mode == "train" else INFER_VARIANTS
            for impl, m in impls.items():
                for v in variants:
                    if v == "amp_bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
                        notes.append(f"{impl}/{v}: no bf16 on this GPU")
                        continue
                    fns[f"{impl}/{v}"] = (train_step(m, x, y, v, device) if mode == "train"
                                          else infer_fn(m, x, v, device))
            if mode == "infer":
                deploy = optimize_for_inference(model.eval(), channels_last=True)
                with torch.inference_mode(), exact_fp32(device):
                    diff = (deploy(x[:4]) - model.eval()(x[:4])).abs().max().item()
                result["parity"].append({"model": name, "deploy_vs_eager_max_abs_diff": diff})

                def deploy_call(d=deploy, i=x):
                    with _autocast(device, torch.bfloat16):
                        return d(i)

                fns["project/deploy_bf16"] = deploy_call
            args._infer = mode == "infer"
            try:
                samples, warm, memory = _time(fns, args, device)
            except Exception as e:  # one failing variant must not hide the others: time them one by one
                log(f"{name} {mode}: interleaved timing failed ({type(e).__name__}: {e}); timing variants alone")
                samples, warm, memory = {}, {}, {}
                for k, fn in fns.items():
                    try:
                        s, w, mem = _time({k: fn}, args, device)
                        samples.update(s)
                        warm.update(w)
                        memory.update(mem)
                    except Exception as err:
                        result["errors"].append(f"{name} {mode} {k}: {type(err).__name__}: {err}")
            for k, secs in samples.items():
                impl, v = k.split("/")
                row = _row(name, mode, impl, v, batch, secs, memory.get(k), gflop, warm[k])
                result["backbones"].append(row)
                log(f"{name:<8} {mode:<5} {impl:<8} {v:<13} {row['images_per_s']['median']:>9.1f} img/s "
                    f"[{row['images_per_s']['min']:.1f}-{row['images_per_s']['max']:.1f}]"
                    + ("" if row["peak_memory_mb"] is None else f"  peak {row['peak_memory_mb']:.0f} MB"))
            for v in variants:
                a, b = f"project/{v}", f"official/{v}"
                if a in samples and b in samples:
                    result["ratios"].append({"model": name, "mode": mode, "variant": v,
                                             "kind": "project_vs_official_speed", **_ratio(samples[b], samples[a])})
                if a in samples and "project/eager" in samples and v != "eager":
                    result["ratios"].append({"model": name, "mode": mode, "variant": v,
                                             "kind": "variant_vs_eager_speed",
                                             **_ratio(samples["project/eager"], samples[a])})
            result["notes"] += notes
            del fns
            _free(device)
        del impls, model
        _free(device)
        write(result, args.out)


def stage_dap_ratio(args, device, result, log, budget: Budget) -> None:
    from casdap import create_model
    from casdap.bench import build_dap as _build_dap
    from casdap.deploy import optimize_dap_for_inference

    gen = torch.Generator().manual_seed(1)
    for name in args.models:
        if budget.left() < RESERVE_S / 2:
            result["skipped"].append(f"CAS-DAP/backbone {name}: {budget.left():.0f} s of the time budget left, "
                                     f"{RESERVE_S / 2:.0f} s kept for the continual stage")
            continue
        torch.manual_seed(0)
        model = create_model(name, num_classes=100).eval()
        dap = _build_dap(model, 100)
        fast = optimize_dap_for_inference(dap)
        model, dap, fast = model.to(device), dap.to(device), fast.to(device)
        x = torch.randn(args.infer_batch, 3, args.size, args.size, generator=gen).to(device)
        with torch.inference_mode(), exact_fp32(device):
            want, got = dap(x[:4]), fast(x[:4])
            result["parity"].append({"model": name, "casdap_fast_vs_casdap_max_abs_diff":
                                     (want.logits - got.logits).abs().max().item(),
                                     "same_keys": bool(torch.equal(want.key_idx, got.key_idx))})
        fns = {}
        for prec, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            for what, m in (("backbone", model), ("casdap", dap), ("casdap_fast", fast)):
                def call(m=m, dtype=dtype, x=x):
                    with _autocast(device, dtype):
                        return m(x)

                fns[f"{what}/{prec}"] = call
        args._infer = True
        samples, warm, memory = _time(fns, args, device)
        for k, secs in samples.items():
            what, prec = k.split("/")
            result["dap_inference"].append(_row(name, "infer", what, prec, args.infer_batch, secs, memory[k],
                                                None, warm[k]))
        for prec in ("fp32", "bf16"):
            for what in ("casdap", "casdap_fast"):
                r = _ratio(samples[f"{what}/{prec}"], samples[f"backbone/{prec}"])
                result["ratios"].append({"model": name, "mode": "infer", "variant": f"{what}/{prec}",
                                         "kind": "casdap_vs_backbone_time", **r})
                log(f"{name:<8} {what:<11} / backbone, {prec}: {r['median']:.2f}x the time per image")
        del fns, model, dap, fast
        _free(device)
    write(result, args.out)


def _cifar100_like(root: Path, classes: int, train_per_class: int, test_per_class: int) -> Path:
    import numpy as np

    from casdap.data.cifar import write_cifar

    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(classes, 3))
    names = [f"class_{c}" for c in range(classes)]
    for train, per in ((True, train_per_class), (False, test_per_class)):
        labels = np.repeat(np.arange(classes), per)
        noise = rng.integers(-60, 60, size=(len(labels), 32, 32, 3))
        images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        write_cifar(root, images, labels, names, "cifar100", train)
    return root


def stage_continual(args, device, result, log, budget: Budget) -> None:
    """casdap cl (Avalanche, DataLoader workers, timm transforms) vs the bare DAP step on GPU tensors."""
    from casdap.config import load_config
    from casdap.continual.plugins import ProgressPlugin
    from casdap.continual.runner import run_continual
    from casdap.models.build import build_dap_model
    from casdap.models.dap import restrict_logits

    c = args.continual
    workers = min(8, os.cpu_count() or 1) if args.workers is None else args.workers
    with tempfile.TemporaryDirectory() as tmp:
        data = _cifar100_like(Path(tmp) / "cifar", c["classes"], c["train_per_class"], c["test_per_class"])
        per_task = c["classes"] // 2
        opts = ["MODEL.RANDOM_INIT", "True", "MODEL.MODEL_ROOT", str(Path(tmp) / "none"), "DATA.DATAPATH", str(data),
                "DATA.NUMBER_CLASSES", str(c["classes"]), "DATA.CROPSIZE", str(args.size),
                "DATA.BATCH_SIZE", str(c["batch"]), "DATA.NUM_WORKERS", str(workers),
                "CONTINUAL.INITIAL", str(per_task), "CONTINUAL.INCREMENT", str(per_task), "CONTINUAL.N_TASKS", "2",
                "SOLVER.TOTAL_EPOCH", "1", "OUTPUT_DIR", str(Path(tmp) / "run"), "SEED", "0",
                "DEVICE", device.type, "USE_AMP", "True", "MODEL.SAVE_CKPT", "False"]
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "dap" / "cifar.yaml", opts)

        stamps: list[tuple[int, int, float]] = []  # (task, batch, time after the step)
        original = ProgressPlugin.after_training_iteration

        def record(self, strategy, **kwargs):
            original(self, strategy, **kwargs)  # reads the loss: the step has finished on the device
            stamps.append((strategy.experience.current_experience, len(strategy.mb_y), time.perf_counter()))

        ProgressPlugin.after_training_iteration = record
        try:
            start = time.perf_counter()
            metrics = run_continual(cfg, progress=False).metrics
            wall = time.perf_counter() - start
        finally:
            ProgressPlugin.after_training_iteration = original
        skip = 3  # first steps of each task: worker start-up, cuDNN autotuning
        images = seconds = 0.0
        for task in sorted({t for t, _, _ in stamps}):
            steps = [(b, s) for t, b, s in stamps if t == task]
            if len(steps) > skip + 1:
                images += sum(b for b, _ in steps[skip + 1:])
                seconds += steps[-1][1] - steps[skip][1]
        real_steady = images / seconds if seconds else None
        log(f"continual DAP, real pipeline ({workers} workers): {metrics['train_images_per_s']:.1f} img/s over whole "
            f"tasks, {real_steady or float('nan'):.1f} img/s steady")

        torch.manual_seed(0)
        model = build_dap_model(cfg).to(device).train()  # as DAPStrategy trains it (the backbone stays in eval)
        params = [p for p in model.trainable_parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.SOLVER.BASE_LR, betas=(cfg.SOLVER.BETA1, cfg.SOLVER.BETA2))
        b = c["batch"]
        x = torch.randn(b, 3, args.size, args.size, device=device)
        y = torch.randint(0, per_task, (b,), device=device)
        task = torch.zeros(b, dtype=torch.long, device=device)
        splits = [list(range(per_task)), list(range(per_task, 2 * per_task))]

        def step(dtype):
            def run():
                with _autocast(device, dtype):
                    out = model(x, task_id=task)
                logits = restrict_logits(out.logits.float(), task, splits)
                loss = cfg.MODEL.DAP.CURRENT_LAMBDA * F.cross_entropy(logits, y) - cfg.MODEL.DAP.SIM_LAMBDA * out.pull
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.SOLVER.GRAD_CLIP)
                opt.step()
                float(loss.detach())  # as the runner's progress plugin does every step

            return run

        args._infer = False
        samples, warm, memory = _time({"synthetic/bf16": step(torch.bfloat16), "synthetic/fp32": step(None)},
                                      args, device)
        synth = {k: Stats.of(b / s for s in v).__dict__ for k, v in samples.items()}
        result["continual"] = {
            "data": f"CIFAR-100 layout, {c['classes']} classes x {c['train_per_class']} training images (32 px), "
                    f"resized to {args.size} px by the training transforms; 2 tasks, 1 epoch, batch {b}",
            "workers": workers, "precision": "bf16 autocast (USE_AMP True)",
            "real_pipeline_images_per_s_whole_tasks": metrics["train_images_per_s"],
            "real_pipeline_images_per_s_steady": real_steady,
            "real_pipeline_steps": len(stamps), "real_pipeline_run_wall_s": wall,
            "synthetic_gpu_tensors_images_per_s": synth,
            "synthetic_peak_memory_mb": {k: (None if v is None else v / 2**20) for k, v in memory.items()},
            "input_pipeline_share_steady": (None if not real_steady else
                                            1 - real_steady / synth["synthetic/bf16"]["median"]),
            "input_pipeline_share_whole_tasks": 1 - metrics["train_images_per_s"] / synth["synthetic/bf16"]["median"],
        }
        log(f"continual DAP, synthetic GPU tensors: {synth['synthetic/bf16']['median']:.1f} img/s bf16, "
            f"{synth['synthetic/fp32']['median']:.1f} fp32")
    _free(device)
    write(result, args.out)


def stage_compile(args, device, result, log, budget: Budget) -> None:
    from casdap import create_model

    gen = torch.Generator().manual_seed(2)
    longest = 0.0
    plan = [(name, impl, mode) for name in args.models for impl in ("project", "official")
            for mode in ("infer", "train") if impl == "project" or args.reference]
    for name, impl, mode in plan:
        need = max(60.0, 1.5 * longest)
        if budget.left() < need:
            result["skipped"].append(f"torch.compile {impl} {name} {mode}: {budget.left():.0f} s of the time budget "
                                     f"left, about {need:.0f} s needed")
            continue
        torch.manual_seed(0)
        model = create_model(name, num_classes=1000)
        if impl == "official":
            model = load_reference(args.reference, name, model, 1000)
        model = model.to(device)
        batch = args.train_batch if mode == "train" else args.infer_batch
        x = torch.randn(batch, 3, args.size, args.size, generator=gen).to(device)
        y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
        if mode == "train":
            compiled = train_step(model, x, y, "compiled", device, compiled=args.compile_backend)
            plain = train_step(model, x, y, "amp_bf16", device)
        else:
            compiled = infer_fn(model, x, "compiled", device, compiled=args.compile_backend)
            plain = infer_fn(model, x, "amp_bf16", device)
        args._infer = mode == "infer"
        try:
            start = time.perf_counter()
            with torch.inference_mode() if args._infer else contextlib.nullcontext():
                compiled()
                _sync(device)()
            compile_s = time.perf_counter() - start
            longest = max(longest, compile_s)
            samples, warm, memory = _time({"compiled": compiled, "amp_bf16": plain}, args, device)
        except Exception as e:
            result["errors"].append(f"torch.compile {impl} {name} {mode}: {type(e).__name__}: {e}")
            log(traceback.format_exc(limit=3))
            continue
        finally:
            _free(device)
        row = _row(name, mode, impl, "compiled", batch, samples["compiled"], memory["compiled"], None,
                   warm["compiled"])
        row["compile_s"] = compile_s
        row["speed_vs_amp_bf16"] = _ratio(samples["amp_bf16"], samples["compiled"])
        result["compiled"].append(row)
        log(f"{name:<8} {mode:<5} {impl:<8} compiled {row['images_per_s']['median']:>9.1f} img/s, "
            f"{row['speed_vs_amp_bf16']['median']:.2f}x amp_bf16; compiled in {compile_s:.0f} s")
        write(result, args.out)
    write(result, args.out)


# ----------------------------------------------------------------------------------- output
def machine(device: torch.device) -> dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": str(device), "cpus": os.cpu_count(),
            "tf32": {"cudnn_conv": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sm_count=p.multi_processor_count)
    with contextlib.suppress(Exception):
        from casdap import __version__

        info["casdap"] = __version__
    return info


def write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result["elapsed_s"] = time.perf_counter() - result["_start"]
    data = {k: v for k, v in result.items() if not k.startswith("_")}
    tmp = out / "gpu_report.json.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, out / "gpu_report.json")
    (out / "gpu_report.md").write_text(markdown(data))


def _ips(r: dict) -> str:
    s = r["images_per_s"]
    return f"{s['median']:.1f} [{s['min']:.1f}-{s['max']:.1f}]"


def _mb(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# CAS-ViT / CAS-DAP on the GPU",
        "",
        f"{m.get('gpu', m['device'])}, torch {m['torch']} (CUDA {m['cuda']}, cuDNN {m['cudnn']}), Python "
        f"{m['python']}, {m['cpus']} CPUs; TF32 for cuDNN convolutions {m['tf32']['cudnn_conv']}, for matmuls "
        f"{m['tf32']['matmul']}; {m['date']}; {res['config']['size']} px; run took {res['elapsed_s']:.0f} s.",
        "Images/s: median [min-max] over interleaved repeats; peak MB: allocator peak during one call above what was "
        "live before it; TFLOP/s: FLOPs counted by torch's FlopCounterMode (fp32 forward, or forward + backward) "
        "times images/s.",
        "",
        "## Backbones",
        "",
        "| model | mode | definition | variant | batch | images/s | ms/batch | TFLOP/s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["backbones"]:
        tf = "-" if r["tflop_per_s"] is None else f"{r['tflop_per_s']:.1f}"
        lines.append(f"| {r['model']} | {r['mode']} | {r['impl']} | {r['variant']} | {r['batch']} | {_ips(r)} | "
                     f"{r['ms_per_batch']:.2f} | {tf} | {_mb(r['peak_memory_mb'])} |")
    ratios = [r for r in res["ratios"] if r["kind"] in ("project_vs_official_speed", "variant_vs_eager_speed")]
    if ratios:
        lines += ["", "Speed ratios (throughput of the first over the second; > 1: faster):", "",
                  "| model | mode | variant | ratio | median [min-max] |", "|---|---|---|---|---|"]
        for r in ratios:
            what = "project / official" if r["kind"] == "project_vs_official_speed" else "variant / project eager"
            lines.append(f"| {r['model']} | {r['mode']} | {r['variant']} | {what} | "
                         f"{r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}] |")
    if res["dap_inference"]:
        lines += ["", "## CAS-DAP / backbone inference time", "",
                  "| model | precision | CAS-DAP / backbone | fast CAS-DAP / backbone | backbone images/s | "
                  "CAS-DAP images/s |", "|---|---|---|---|---|---|"]
        by = {(r["model"], r["impl"], r["variant"]): r for r in res["dap_inference"]}
        rat = {(r["model"], r["variant"]): r for r in res["ratios"] if r["kind"] == "casdap_vs_backbone_time"}
        for model in dict.fromkeys(r["model"] for r in res["dap_inference"]):
            for prec in ("fp32", "bf16"):
                a, b = rat.get((model, f"casdap/{prec}")), rat.get((model, f"casdap_fast/{prec}"))
                if a is None:
                    continue
                lines.append(f"| {model} | {prec} | {a['median']:.2f} [{a['min']:.2f}-{a['max']:.2f}] | "
                             f"{b['median']:.2f} | {_ips(by[model, 'backbone', prec])} | "
                             f"{_ips(by[model, 'casdap', prec])} |")
    c = res.get("continual")
    if c:
        s = c["synthetic_gpu_tensors_images_per_s"]
        steady = c["real_pipeline_images_per_s_steady"]
        share = c["input_pipeline_share_steady"]
        lines += ["", "## Continual DAP training throughput", "", f"{c['data']}; {c['precision']}; "
                  f"{c['workers']} DataLoader workers.", "",
                  "| input | images/s |", "|---|---|",
                  f"| real pipeline (casdap cl: Avalanche, workers, timm transforms), steady state | "
                  f"{'-' if steady is None else f'{steady:.1f}'} |",
                  f"| real pipeline, whole tasks (start-up included) | "
                  f"{c['real_pipeline_images_per_s_whole_tasks']:.1f} |",
                  f"| synthetic GPU-resident tensors, bf16 | {s['synthetic/bf16']['median']:.1f} |",
                  f"| synthetic GPU-resident tensors, fp32 | {s['synthetic/fp32']['median']:.1f} |", "",
                  f"Input pipeline (and framework) share of the step time: "
                  f"{'-' if share is None else f'{100 * share:.0f}%'} steady, "
                  f"{100 * c['input_pipeline_share_whole_tasks']:.0f}% over whole tasks."]
    if res["compiled"]:
        lines += ["", f"## torch.compile ({res['config']['compile_backend']}, default mode, channels-last, bf16)", "",
                  "| model | mode | definition | batch | images/s | vs amp_bf16 | compile s | peak MB |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in res["compiled"]:
            v = r["speed_vs_amp_bf16"]
            lines.append(f"| {r['model']} | {r['mode']} | {r['impl']} | {r['batch']} | {_ips(r)} | "
                         f"{v['median']:.2f} [{v['min']:.2f}-{v['max']:.2f}] | {r['compile_s']:.0f} | "
                         f"{_mb(r['peak_memory_mb'])} |")
    if res["parity"]:
        lines += ["", "Parity (full fp32): " + "; ".join(
            ", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}" for k, v in p.items())
            for p in res["parity"])]
    for title, key in (("Skipped", "skipped"), ("Errors", "errors"), ("Notes", "notes")):
        if res[key]:
            lines += ["", f"## {title}", ""] + [f"- {s}" for s in res[key]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_report.json and gpu_report.md")
    p.add_argument("--reference", default=None, help="the official CAS-ViT rcvit.py (its definitions are timmed "
                   "with our weights); without it only this project's definitions are measured")
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--infer-batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per timed sample")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for the continual stage "
                   "(default: min(8, CPUs))")
    p.add_argument("--budget-s", type=float, default=330.0, help="time budget: models are skipped (and said so) "
                   "rather than overrun it; torch.compile measurements only start with enough of it left")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: a quick check "
                   "of the script without inductor's code generation)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (to check the script, e.g. --device cpu)")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.continual = {"classes": 100, "train_per_class": 64, "test_per_class": 4, "batch": 128}
    if args.quick:
        args.size, args.train_batch, args.infer_batch = 32, 4, 8
        args.repeats, args.warmup, args.min_time = 2, 1, 0.02
        args.continual = {"classes": 4, "train_per_class": 12, "test_per_class": 2, "batch": 4}
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_report: no CUDA device is visible to torch", file=sys.stderr)
        return 2
    budget = Budget(args.budget_s)
    torch.backends.cudnn.benchmark = True  # as the supervised trainer sets it
    result: dict[str, Any] = {
        "_start": time.perf_counter(), "machine": machine(device),
        "config": {**{k: v for k, v in vars(args).items() if not k.startswith("_")}, "out": str(args.out)},
        "backbones": [], "ratios": [], "parity": [], "dap_inference": [], "continual": None, "compiled": [],
        "skipped": [], "errors": [], "notes": [],
    }
    if not args.reference:
        result["notes"].append("official definition not measured: pass --reference /path/to/official/rcvit.py "
                               "(CAS-ViT classification/model/rcvit.py)")

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - budget.start:6.1f}s] {msg}", flush=True)

    log(f"{result['machine'].get('gpu', device)}; torch {torch.__version__}; budget {args.budget_s:.0f} s")
    for stage, fn in (("backbones", stage_backbones), ("CAS-DAP/backbone", stage_dap_ratio),
                      ("continual", stage_continual)):
        try:
            fn(args, device, result, log, budget)
        except Exception as e:
            result["errors"].append(f"{stage}: {type(e).__name__}: {e}")
            log(traceback.format_exc())
            write(result, args.out)
    if args.no_compile:
        result["skipped"].append("torch.compile: --no-compile")
    else:
        stage_compile(args, device, result, log, budget)
    write(result, args.out)
    log(f"wrote {args.out / 'gpu_report.json'} and {args.out / 'gpu_report.md'}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

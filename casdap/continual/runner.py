"""One continual-learning experiment: benchmark, method, task loop, evaluation, run directory.

Every method (``MODEL.TRANSFER_TYPE``) starts from the same backbone and sees the same stream.
After each task the run directory is brought up to date (metrics, matrix, checkpoint), so a run
killed mid-task resumes after its last finished task with ``SOLVER.AUTO_RESUME`` and ends with
the metrics an uninterrupted run would have produced.
"""

from __future__ import annotations

import os
import random
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from yacs.config import CfgNode

from casdap.config.validate import METHOD_NAMES, validate
from casdap.continual.benchmarks import ContinualBenchmark, build_benchmark
from casdap.continual.plugins import (
    AutocastPlugin,
    CurrentClassMaskPlugin,
    GradClipPlugin,
    GradSyncPlugin,
    LRSchedulePlugin,
    MultiScalePlugin,
    ProgressPlugin,
    RngRecorderPlugin,
)
from casdap.continual.prototypes import (
    GRADIENT_FREE,
    APERClassifier,
    APERStrategy,
    RanPACStrategy,
    build_ranpac,
)
from casdap.continual.results import format_summary_table, write_text
from casdap.continual.run_directory import (
    RunDirectoryPlugin,
    RunState,
    check_compatible,
    finished_metrics,
    read_resume_checkpoint,
    restore_strategy,
)
from casdap.continual.strategies import (
    BackboneClassifier,
    DAPStrategy,
    NCMClassifier,
    NCMStrategy,
    TaskSelectionAccuracy,
)
from casdap.engine.seeding import restore_rng_state, seed_everything
from casdap.engine.threads import set_threads
from casdap.errors import CasdapError

__all__ = ["METHODS", "run_continual", "RunResult"]

METHODS = METHOD_NAMES


@dataclass
class RunResult:
    metrics: dict[str, Any]
    output_dir: Path
    strategy: Any = None  # the trained Avalanche strategy (its ``model`` holds the final weights)


# ---------------------------------------------------------------------------------------- setup
def _distributed(device: torch.device) -> tuple[int, int]:
    """Rank and world size under ``torchrun`` (gloo on CPU, nccl on GPU); (0, 1) otherwise."""
    from casdap.engine.distributed import join_process_group

    return join_process_group(device)


def _device(cfg: CfgNode) -> torch.device:
    want = cfg.DEVICE.lower()
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CasdapError("DEVICE is 'cuda' but no CUDA device is available (use DEVICE cpu or auto)")
        if want == "cuda" and "LOCAL_RANK" in os.environ:
            want = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        return torch.device(want)
    if want != "cpu":
        raise CasdapError(f"unknown DEVICE '{cfg.DEVICE}' (use auto, cpu or cuda)")
    return torch.device("cpu")


def output_dir_of(cfg: CfgNode) -> Path:
    """``OUTPUT_DIR``, or ``./output/<data>/<method>/seed<seed>`` when it is empty (DAP's YAMLs)."""
    if cfg.OUTPUT_DIR:
        return Path(cfg.OUTPUT_DIR)
    seed = 0 if cfg.SEED is None else cfg.SEED
    return Path("output") / (cfg.DATA.NAME or "data") / cfg.MODEL.TRANSFER_TYPE / f"seed{seed}"


# ---------------------------------------------------------------------------------------- methods
def _make_optimizer(cfg: CfgNode, groups: list[dict]) -> torch.optim.Optimizer:
    s = cfg.SOLVER
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise CasdapError("the method has no trainable parameters")
    # DAP's names in timm's registry: DAP's "sgd" is plain momentum SGD (timm's "sgd" is Nesterov)
    timm_name = {"sgd": "momentum", "adam": "adam", "adamw": "adamw"}.get(s.OPTIMIZER.lower())
    if timm_name is None:
        raise CasdapError(f"unknown SOLVER.OPTIMIZER '{s.OPTIMIZER}' (use sgd, adam or adamw)")
    from timm.optim import create_optimizer_v2

    extra = {"momentum": s.MOMENTUM} if timm_name == "momentum" else {"betas": (s.BETA1, s.BETA2)}
    return create_optimizer_v2(groups, opt=timm_name, lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY, **extra)


def _build_model(cfg: CfgNode, method: str, num_classes: int) -> nn.Module:
    from casdap.models import build as model_build

    if method == "dap":
        return model_build.build_dap_model(cfg)
    backbone = model_build.build_backbone(cfg, num_classes=0)
    if method == "ncm":
        return NCMClassifier(backbone, num_classes)
    if method == "ranpac":
        return build_ranpac(cfg, backbone, num_classes)
    if method == "aper":  # model.backbone: the copy adapted on the first task (model.pretrained stays)
        return APERClassifier(backbone, num_classes)
    return BackboneClassifier(backbone, num_classes, freeze_backbone=(method == "linear"))


def _param_groups(cfg: CfgNode, method: str, model: nn.Module) -> list[dict]:
    lr = cfg.SOLVER.BASE_LR
    if method == "dap":
        return [{"params": [p for p in model.trainable_parameters() if p.requires_grad], "lr": lr}]
    if method == "linear":
        return [{"params": list(model.head.parameters()), "lr": lr}]
    return [
        {"params": list(model.backbone.parameters()), "lr": lr * cfg.BASELINES.BACKBONE_LR_SCALE},
        {"params": list(model.head.parameters()), "lr": lr},
    ]


def _build_strategy(cfg: CfgNode, method: str, model: nn.Module, bench: ContinualBenchmark, device: torch.device,
                    evaluator, progress: ProgressPlugin):
    from avalanche.training import EWC, JointTraining, LwF, Naive
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.storage_policy import ClassBalancedBuffer

    plugins: list = [progress]
    if method not in ("ncm", *GRADIENT_FREE):  # no gradient step
        plugins.append(LRSchedulePlugin(cfg.SOLVER.SCHEDULER, cfg.SOLVER.WARMUP_EPOCH, cfg.SOLVER.WARMUP_STEPS))
        if cfg.CONTINUAL.MULTI_SCALE:
            plugins.append(MultiScalePlugin(cfg.DATA.CROPSIZE, 0 if cfg.SEED is None else int(cfg.SEED)))
        plugins.append(GradSyncPlugin())
        if cfg.SOLVER.GRAD_CLIP_APPLY and cfg.SOLVER.GRAD_CLIP > 0:
            plugins.append(GradClipPlugin(cfg.SOLVER.GRAD_CLIP))
    if cfg.USE_AMP:
        plugins.append(AutocastPlugin(device))
    common = dict(
        train_mb_size=cfg.DATA.BATCH_SIZE, train_epochs=cfg.SOLVER.TOTAL_EPOCH, eval_mb_size=cfg.DATA.BATCH_SIZE,
        device=device, evaluator=evaluator,
    )
    if method == "ncm":
        return NCMStrategy(model=model, plugins=plugins, **common)
    if method == "ranpac":
        return RanPACStrategy(model=model, plugins=plugins, seed=0 if cfg.SEED is None else int(cfg.SEED), **common)
    optimizer = _make_optimizer(cfg, _param_groups(cfg, method, model))
    ce = nn.CrossEntropyLoss()
    if method == "aper":
        return APERStrategy(model=model, optimizer=optimizer, plugins=plugins, **common)
    if method == "dap":
        d = cfg.MODEL.DAP  # settings checked by casdap.config.validate
        size = int(d.REPLAY_MEM_SIZE)
        if size > 0:  # replayed samples are trained under their own task's key and classes
            replay = ReplayPlugin(mem_size=size, storage_policy=ClassBalancedBuffer(max_size=size, adaptive_size=True))
            plugins = [RngRecorderPlugin(), replay, *plugins]  # recorder first: resume rebuilds the buffer
        return DAPStrategy(
            model=model, optimizer=optimizer, plugins=plugins, current_lambda=d.CURRENT_LAMBDA,
            sim_lambda=d.SIM_LAMBDA, selection=d.SELECTION, restrict_to_task=d.RESTRICT_TO_TASK, **common,
        )
    if method == "linear":
        return Naive(model=model, optimizer=optimizer, criterion=ce, plugins=[CurrentClassMaskPlugin(), *plugins],
                     **common)
    if method == "finetune":
        return Naive(model=model, optimizer=optimizer, criterion=ce, plugins=plugins, **common)
    if method == "ewc":
        return EWC(model=model, optimizer=optimizer, criterion=ce, ewc_lambda=cfg.BASELINES.EWC_LAMBDA,
                   mode="separate", plugins=plugins, **common)
    if method == "lwf":
        return LwF(model=model, optimizer=optimizer, criterion=ce, alpha=cfg.BASELINES.LWF_ALPHA,
                   temperature=cfg.BASELINES.LWF_TEMPERATURE, plugins=plugins, **common)
    if method == "replay":
        size = cfg.BASELINES.REPLAY_MEM_SIZE
        # The recorder runs before the replay plugin's buffer update, so resuming can rebuild it.
        replay = ReplayPlugin(mem_size=size, storage_policy=ClassBalancedBuffer(max_size=size, adaptive_size=True))
        return Naive(model=model, optimizer=optimizer, criterion=ce, plugins=[RngRecorderPlugin(), replay, *plugins],
                     **common)
    if method == "joint":
        return JointTraining(model=model, optimizer=optimizer, criterion=ce, plugins=plugins, **common)
    raise CasdapError(f"unknown method MODEL.TRANSFER_TYPE '{method}' (use one of {', '.join(METHODS)})")


def _evaluator(method: str, tb_dir: Path | None):
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.logging import TensorboardLogger
    from avalanche.training.plugins import EvaluationPlugin

    metrics = [accuracy_metrics(epoch=True, experience=True, stream=True), loss_metrics(epoch=True, stream=True)]
    if method == "dap":
        metrics.append(TaskSelectionAccuracy())
    loggers = [TensorboardLogger(tb_log_dir=str(tb_dir))] if tb_dir is not None else []
    with warnings.catch_warnings():  # ranks other than 0 log nothing on purpose
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(*metrics, loggers=loggers), loggers


# Data sets that ship with an installed package, and the backbone their runs use by default: made
# by the documented pretraining protocol (casdap pretrain, docs/pretraining.md) when missing.
EMBEDDED_DATASETS = ("digits", "embedded_shift")  # embedded_shift: classes disjoint from the pretraining


def ensure_embedded_backbone(cfg: CfgNode, is_main: bool = True, world: int = 1) -> Path | None:
    """For an embedded benchmark with no backbone file, pretrain it once at ``MODEL_ROOT/<BACKBONE>.pth``.

    Only when ``MODEL.WEIGHT_PATH`` is empty and ``MODEL.RANDOM_INIT`` is False: an explicit path
    never falls back to anything. The file's JSON sidecar records exactly what the backbone saw;
    later runs reuse the file.
    """
    if (cfg.DATA.NAME.lower().replace("-", "_") not in EMBEDDED_DATASETS or cfg.MODEL.WEIGHT_PATH
            or cfg.MODEL.RANDOM_INIT):
        return None
    path = Path(cfg.MODEL.MODEL_ROOT or ".") / f"{cfg.MODEL.BACKBONE}.pth"
    if not path.is_file() and is_main:
        from casdap.pretrain.train import DEFAULT_PROTOCOL, pretrain_backbone, sidecar_path

        print(f"casdap cl: no {cfg.MODEL.BACKBONE} backbone at '{path}': pretraining it once by the embedded "
              f"benchmark's protocol ({DEFAULT_PROTOCOL['epochs']} epochs on rendered {DEFAULT_PROTOCOL['source']}, "
              "never a digit nor an embedded_shift character; docs/pretraining.md), one thread; later runs reuse it",
              flush=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # measured fastest for these 32 px batches (docs/pretraining.md)
        # the run's seeded random streams continue as if the file had been there: the first run on a
        # fresh checkout gives the same results as every later run with the same seed
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                pretrain_backbone(cfg.MODEL.BACKBONE, path, **DEFAULT_PROTOCOL)
        finally:
            torch.set_num_threads(threads)
            random.setstate(py_state)
            np.random.set_state(np_state)
        print(f"casdap cl: saved {path} (what it saw: {sidecar_path(path)})", flush=True)
    if world > 1:
        dist.barrier()
    return path


# ---------------------------------------------------------------------------------------- runner
def _count_params(model: nn.Module, method: str) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    if method == "dap":
        trainable = sum(p.numel() for p in model.trainable_parameters())
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def run_continual(cfg: CfgNode, progress: bool = True) -> RunResult:
    """Run the experiment described by ``cfg`` (frozen, from :func:`casdap.config.load_config`)."""
    validate(cfg)
    method = cfg.MODEL.TRANSFER_TYPE.lower()
    device = _device(cfg)
    set_threads("casdap cl", int(cfg.DATA.CROPSIZE), device.type)
    rank, world = _distributed(device)
    is_main = rank == 0
    seed = 0 if cfg.SEED is None else int(cfg.SEED)
    out = output_dir_of(cfg)
    workers = cfg.DATA.NUM_WORKERS

    resume = read_resume_checkpoint(out) if out.is_dir() else None
    finished = finished_metrics(out)
    if (resume is not None or finished is not None) and not cfg.SOLVER.AUTO_RESUME:
        held = f"checkpoints up to {resume[0].name}" if resume is not None else "a finished run"
        raise CasdapError(
            f"'{out}' already holds a run ({held}). Pass --auto_resume (SOLVER.AUTO_RESUME True) to continue it, "
            "or choose another OUTPUT_DIR"
        )

    seed_everything(seed)
    bench = build_benchmark(cfg, rank, world)
    if cfg.DATA.NUMBER_CLASSES != bench.num_classes or cfg.OUTPUT_DIR != str(out):
        cfg = cfg.clone()  # resolved: the class count from the data (DAP's -1), the run folder
        cfg.defrost()
        cfg.DATA.NUMBER_CLASSES = bench.num_classes
        cfg.OUTPUT_DIR = str(out)
        cfg.freeze()
    if finished is not None:
        check_compatible((out / "config.yaml").read_text(), cfg, out)
        if is_main:
            print(f"casdap cl: '{out}' holds a finished run ({finished['tasks_done']}/{finished['n_tasks']} tasks, "
                  f"final accuracy {finished['final_acc']:.4f}); nothing to do, its files are left as they are")
        return RunResult(finished, out)
    if resume is not None:
        check_compatible(resume[1]["config"], cfg, out)
    ensure_embedded_backbone(cfg, is_main, world)
    model = _build_model(cfg, method, bench.num_classes)
    # what the backbone really is (a weight file wins over MODEL.RANDOM_INIT when both exist)
    random_backbone = bool(getattr(getattr(model, "backbone", model), "random_init", cfg.MODEL.RANDOM_INIT))
    if random_backbone and is_main:
        print("casdap cl: the backbone is randomly initialised (MODEL.RANDOM_INIT True): no pretrained features")
    if world > 1:  # identical starting weights on every rank
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)
    tb_dir = out / "tensorboard" if is_main else None
    evaluator, loggers = _evaluator(method, tb_dir)
    progress_plugin = ProgressPlugin(bench.n_tasks, enabled=progress and is_main)
    strategy = _build_strategy(cfg, method, model, bench, device, evaluator, progress_plugin)
    trainable, total = _count_params(model, method)
    selection = cfg.MODEL.DAP.SELECTION if method == "dap" else None
    run_dir = RunDirectoryPlugin(
        out, bench.n_tasks, config_text=cfg.dump(), notes=_protocol_notes(cfg, method, selection, random_backbone),
        info={"method": method, "backbone": cfg.MODEL.BACKBONE, "dataset": bench.dataset, "seed": seed,
              "selection": selection, "random_init_backbone": random_backbone,
              "trainable_params": trainable, "total_params": total},
        joint=method == "joint", keep_final_checkpoint=cfg.MODEL.SAVE_CKPT, eval_batch=cfg.DATA.BATCH_SIZE,
        num_workers=workers, world=world, write=is_main, verbose=is_main,
    )
    strategy.plugins.append(run_dir)  # after the evaluator, whose metrics it writes

    start = 0
    if resume is not None:
        ckpt = resume[1]
        model.load_state_dict(ckpt["model"])
        start = int(ckpt["tasks_done"])
        run_dir.state = RunState(**ckpt["state"])
        restore_strategy(strategy, ckpt["strategy"], bench.scenario.train_stream, bench.task_classes, start)
        restore_rng_state(ckpt["rng"])
        if is_main:
            print(f"casdap cl: resuming {out} after task {start}/{bench.n_tasks}")

    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", cfg.dump())
        label = f" [{selection} key selection]" if selection else ""
        print(f"casdap cl: {method}{label} on {bench.dataset} ({bench.num_classes} classes, {bench.n_tasks} tasks "
              f"of {[len(c) for c in bench.task_classes]}), backbone {cfg.MODEL.BACKBONE}, seed {seed}, "
              f"{trainable:,} trainable / {total:,} parameters, device {device}"
              + (f", {world} processes" if world > 1 else "") + f" -> {out}")

    for lg in loggers:  # the protocol travels with the TensorBoard logs too
        lg.writer.add_text("run", f"method {method}, key selection {selection or '-'}, backbone {cfg.MODEL.BACKBONE}"
                           + (" (randomly initialised)" if random_backbone else "") + f", seed {seed}")

    try:
        train_stream, test_stream = bench.scenario.train_stream, bench.scenario.test_stream
        if method == "joint":  # every task at once: one training, one row (the upper bound)
            tasks = [(train_stream, test_stream)] if start < bench.n_tasks else []
        else:
            tasks = [(train_stream[t], test_stream[: t + 1]) for t in range(start, bench.n_tasks)]
        for train_part, test_part in tasks:
            strategy.train(train_part, num_workers=workers, reset_optimizer_state=True)
            if is_main:  # the run directory plugin writes the row
                strategy.eval(test_part, num_workers=workers)
            if world > 1:
                dist.barrier()
    except KeyboardInterrupt:
        if is_main:
            done = run_dir.tasks_done()
            where = f"after task {done}/{bench.n_tasks}" if done else "from the start (no task had finished)"
            print(f"\ncasdap cl: interrupted; the run resumes {where} with:\n"
                  f"  casdap cl --config-file {out / 'config.yaml'} --auto_resume True", file=sys.stderr, flush=True)
        raise

    metrics = run_dir.metrics(True)
    if is_main:
        for lg in loggers:
            lg.writer.close()
        print()
        print(format_summary_table([metrics]))
        print(f"\nrun directory: {out}  (TensorBoard: tensorboard --logdir {out / 'tensorboard'})")
    return RunResult(metrics, out, strategy)


def _protocol_notes(cfg: CfgNode, method: str, selection: str | None, random_backbone: bool) -> list[str]:
    """Lines of ``final_results.txt`` that say how the run was evaluated."""
    notes = []
    if selection and selection != "per_image":
        notes.append(f"Key selection: {selection}" + (
            " (reference protocol: each test batch holds one task and votes on its key)"
            if selection == "batch_majority" else " (oracle task identity: a diagnostic, not a result)"))
    if method == "dap" and cfg.MODEL.DAP.RESTRICT_TO_TASK:
        notes.append("Logits restricted to the selected key's task classes")
    if random_backbone:
        notes.append("Backbone: randomly initialised (MODEL.RANDOM_INIT True)")
    return notes

"""One continual-learning experiment: benchmark, method, task loop, evaluation, run directory.

Every method (``MODEL.TRANSFER_TYPE``) starts from the same backbone and sees the same stream.
After each task the run directory is brought up to date (metrics, matrix, checkpoint), so a run
killed mid-task resumes after its last finished task with ``SOLVER.AUTO_RESUME`` and ends with
the metrics an uninterrupted run would have produced.
"""

from __future__ import annotations

import copy
import os
import random
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm
from yacs.config import CfgNode

from casdap.checkpoint import read_checkpoint, save_checkpoint
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
from casdap.continual.results import (
    format_summary_table,
    summarize,
    write_acc_matrix_csv,
    write_final_results,
    write_json,
    write_text,
)
from casdap.continual.strategies import (
    BackboneClassifier,
    DAPStrategy,
    NCMClassifier,
    NCMStrategy,
    TaskSelectionAccuracy,
)
from casdap.engine.checkpoints import TASK_CHECKPOINT, numbered_checkpoints
from casdap.engine.seeding import capture_rng_state, restore_rng_state, seed_everything
from casdap.engine.threads import set_threads
from casdap.errors import CasdapError
from casdap.run_metrics import METRICS_FIELDS

__all__ = ["METHODS", "run_continual", "RunResult"]

METHODS = METHOD_NAMES
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FORMAT = "casdap-continual/1"
_ACC_KEY = re.compile(r"^Top1_Acc_Exp/eval_phase/[^/]+/(?:Task\d+/)?Exp(\d+)$")


@dataclass
class RunResult:
    metrics: dict[str, Any]
    output_dir: Path
    strategy: Any = None  # the trained Avalanche strategy (its ``model`` holds the final weights)


@dataclass
class _State:
    """What the task loop accumulates (and what a checkpoint restores)."""

    acc_matrix: list[list[float | None]] = field(default_factory=list)
    mixed: list[float | None] = field(default_factory=list)
    task_selection: list[float | None] = field(default_factory=list)
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    train_images: int = 0


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
    from casdap.models import dap as dap_models

    if method == "dap":
        return dap_models.build_dap_model(cfg)
    backbone = dap_models.build_backbone(cfg, num_classes=0)
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


# ------------------------------------------------------------------------- strategy state (resume)
def _find_plugin(strategy, kind):
    return next((p for p in strategy.plugins if isinstance(p, kind)), None)


def _strategy_state(strategy) -> dict[str, Any]:
    from avalanche.training.plugins import EWCPlugin

    state: dict[str, Any] = {
        "clock": {k: int(v) for k, v in vars(strategy.clock).items() if isinstance(v, int)},
    }
    if isinstance(strategy, DAPStrategy):
        state["class_to_task"] = dict(strategy.class_to_task)
    ewc = _find_plugin(strategy, EWCPlugin)
    if ewc is not None:
        state["ewc_saved"] = {int(e): {k: p.data.cpu() for k, p in d.items()} for e, d in ewc.saved_params.items()}
        state["ewc_importances"] = {int(e): {k: p.data.cpu() for k, p in d.items()} for e, d in ewc.importances.items()}
    rec = _find_plugin(strategy, RngRecorderPlugin)
    if rec is not None:
        state["replay_rng"] = dict(rec.states)
    return state


def _restore_strategy(strategy, state: dict[str, Any], bench: ContinualBenchmark, done: int) -> None:
    from avalanche.training.plugins import EWCPlugin, LwFPlugin, ReplayPlugin
    from avalanche.training.utils import ParamData

    for k, v in state["clock"].items():
        setattr(strategy.clock, k, v)
    if isinstance(strategy, DAPStrategy):
        strategy.class_to_task = {int(c): int(t) for c, t in state["class_to_task"].items()}
    ewc = _find_plugin(strategy, EWCPlugin)
    if ewc is not None:
        dev = strategy.device
        for attr, key in (("saved_params", "ewc_saved"), ("importances", "ewc_importances")):
            target = getattr(ewc, attr)
            for e, d in state[key].items():
                target[int(e)] = {k: ParamData(k, init_tensor=t.to(dev), device=dev) for k, t in d.items()}
    lwf = _find_plugin(strategy, LwFPlugin)
    if lwf is not None:
        lwf.lwf.prev_model = copy.deepcopy(strategy.model)
        lwf.lwf.expcount = done
        lwf.lwf.prev_classes_by_task[0] = {c for t in range(done) for c in bench.task_classes[t]}
    replay = _find_plugin(strategy, ReplayPlugin)
    rec = _find_plugin(strategy, RngRecorderPlugin)
    if replay is not None and rec is not None:
        # Rebuild the buffer exactly: the same updates, from the same RNG states.
        rec.states = {int(k): v for k, v in state["replay_rng"].items()}
        for t in range(done):
            torch.set_rng_state(rec.states[t])
            replay.storage_policy.post_adapt(strategy, bench.scenario.train_stream[t])


def _checkpoints(out: Path) -> list[Path]:
    """The run's per-task checkpoints, newest first."""
    return [path for _, path in reversed(numbered_checkpoints(out / CHECKPOINT_DIR, TASK_CHECKPOINT))]


def _read_resume_checkpoint(out: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of the run; an unreadable newer one is skipped with a warning."""
    for path in _checkpoints(out):
        try:
            ckpt = read_checkpoint(path)
            if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
                raise CasdapError(f"'{path}' is not a continual-learning checkpoint of this version")
        except CasdapError as e:
            warnings.warn(f"skipping {path.name}, which cannot be used ({e}); trying the one before it", stacklevel=2)
            continue
        return path, ckpt
    return None


def _finished_metrics(out: Path) -> dict[str, Any] | None:
    """The metrics of a finished run in ``out``, or None."""
    import json

    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(metrics, dict) and metrics.get("finished") and (out / "config.yaml").is_file():
        return metrics
    return None


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


# Settings that cannot change a run's results: they may differ between a run and its resumption.
RESULT_NEUTRAL_KEYS = frozenset({
    "OUTPUT_DIR", "DEVICE", "CUDNN_BENCHMARK", "NUM_GPUS", "NUM_SHARDS", "DIST_BACKEND", "DIST_INIT_PATH",
    "DIST_INIT_FILE", "DBG", "RUN_N_TIMES", "SOLVER.AUTO_RESUME", "SOLVER.LOG_EVERY_N", "SOLVER.DBG_TRAINABLE",
    "MODEL.SAVE_CKPT", "DATA.NUM_WORKERS", "DATA.PIN_MEMORY", "DATA.DATAPATH",
})
# Paths compared by the file they name, not by their spelling.
_PATH_KEYS = frozenset({"MODEL.WEIGHT_PATH", "MODEL.MODEL_ROOT"})


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def settings_changed(saved_cfg: str, cfg: CfgNode) -> list[str]:
    """``KEY: old -> new`` for every setting that changes results and differs from the saved run."""
    from casdap.config import get_defaults

    defaults = _flat(get_defaults())
    saved, now = _flat(CfgNode.load_cfg(saved_cfg)), _flat(cfg)
    changed = []
    for key in sorted(set(saved) | set(now)):
        if key in RESULT_NEUTRAL_KEYS:
            continue
        old, new = saved.get(key, defaults.get(key)), now.get(key, defaults.get(key))
        if key in _PATH_KEYS and old and new:
            old_path, new_path = Path(str(old)).resolve(), Path(str(new)).resolve()
            if old_path == new_path:
                continue
        if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
            old, new = list(old), list(new)
        if old != new:
            changed.append(f"{key}: {old!r} -> {new!r}")
    return changed


def _check_compatible(saved_cfg: str, cfg: CfgNode, out: Path) -> None:
    changed = settings_changed(saved_cfg, cfg)
    if changed:
        raise CasdapError(
            f"cannot resume '{out}': it was made with other settings, and resuming would label its results "
            f"with these ({'; '.join(changed)}). Use the run's own settings (casdap cl --config-file "
            f"{out / 'config.yaml'} --auto_resume True), or another OUTPUT_DIR for a new run"
        )


# ----------------------------------------------------------------------------------- evaluation
def _row_from_metrics(metrics: dict[str, Any], seen: int) -> list[float | None]:
    accs: dict[int, float] = {}
    for k, v in metrics.items():
        m = _ACC_KEY.match(k)
        if m:
            accs[int(m.group(1))] = float(v)
    return [accs.get(j) for j in range(seen)]


@torch.no_grad()
def _mixed_stream_accuracy(strategy, bench: ContinualBenchmark, row: list[float], selection: str | None, seed: int,
                           batch: int, workers: int) -> float:
    """Accuracy on one shuffled stream of every seen task's test images (batches mix tasks).

    Only DAP's batch-majority protocol lets an image's prediction depend on its batch mates. Every
    other protocol predicts each image alone, so the mixed stream's accuracy is the image-weighted
    mean of the per-task accuracies in ``row`` and needs no second pass over the test data.
    """
    from torch.utils.data import ConcatDataset, DataLoader

    seen = len(row)
    if selection != "batch_majority" and None not in row:
        sizes = bench.test_sizes[:seen]
        return sum(acc * n for acc, n in zip(row, sizes)) / sum(sizes)
    data = ConcatDataset([bench.scenario.test_stream[j].dataset for j in range(seen)])
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed * 1000 + seen))
    strategy.model.eval()
    hits = total = 0
    for x, y, *_ in loader:
        x, y = x.to(strategy.device), y.to(strategy.device)
        logits = strategy.predict(x, y)[0] if isinstance(strategy, DAPStrategy) else strategy.model(x)
        hits += int((logits.argmax(-1) == y).sum())
        total += len(y)
    return hits / max(total, 1)


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

    resume = _read_resume_checkpoint(out) if out.is_dir() else None
    finished = _finished_metrics(out)
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
        _check_compatible((out / "config.yaml").read_text(), cfg, out)
        if is_main:
            print(f"casdap cl: '{out}' holds a finished run ({finished['tasks_done']}/{finished['n_tasks']} tasks, "
                  f"final accuracy {finished['final_acc']:.4f}); nothing to do, its files are left as they are")
        return RunResult(finished, out)
    if resume is not None:
        _check_compatible(resume[1]["config"], cfg, out)
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

    state = _State()
    start = 0
    if resume is not None:
        ckpt = resume[1]
        model.load_state_dict(ckpt["model"])
        start = int(ckpt["tasks_done"])
        state = _State(**ckpt["state"])
        _restore_strategy(strategy, ckpt["strategy"], bench, start)
        restore_rng_state(ckpt["rng"])
        if is_main:
            print(f"casdap cl: resuming {out} after task {start}/{bench.n_tasks}")

    selection = cfg.MODEL.DAP.SELECTION if method == "dap" else None
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

    def n_done() -> int:
        return bench.n_tasks if method == "joint" and state.acc_matrix else len(state.acc_matrix)

    def metrics_dict(finished: bool) -> dict[str, Any]:
        s = summarize(state.acc_matrix, joint=method == "joint")
        sel = state.task_selection[-1] if state.task_selection else None
        metrics = {
            "method": method, "backbone": cfg.MODEL.BACKBONE, "dataset": bench.dataset, "seed": seed,
            "n_tasks": bench.n_tasks, "tasks_done": n_done(), "finished": finished,
            "acc_matrix": state.acc_matrix, **s,
            "task_selection_acc": sel if method == "dap" else None,
            "mixed_stream_acc": state.mixed[-1] if state.mixed else None,
            "selection": selection, "random_init_backbone": random_backbone,
            "wall_time_s": state.wall_time_s, "trainable_params": trainable, "total_params": total,
            "train_images_per_s": state.train_images / state.train_time_s if state.train_time_s else None,
        }
        assert metrics.keys() == METRICS_FIELDS.keys(), "metrics.json fields and run_metrics.METRICS_FIELDS differ"
        return metrics

    def finish_task(t: int, row: list[float | None], mixed: float | None, task_sel: float | None, t0: float):
        state.acc_matrix.append(row + [None] * (bench.n_tasks - len(row)))
        state.mixed.append(mixed)
        state.task_selection.append(task_sel)
        state.wall_time_s += time.perf_counter() - t0
        finished = t == bench.n_tasks - 1
        if is_main:
            metrics = metrics_dict(finished)
            if cfg.MODEL.SAVE_CKPT or not finished:
                save_checkpoint({
                    "format": CHECKPOINT_FORMAT, "tasks_done": t + 1, "config": cfg.dump(),
                    "model": model.state_dict(), "state": vars(state), "strategy": _strategy_state(strategy),
                    "rng": capture_rng_state(),
                }, out / CHECKPOINT_DIR / f"task_{t:03d}.pth")
            write_json(out / "metrics.json", metrics)
            if method == "ranpac":  # the method's own choices: the ridge strength of every task
                write_json(out / "ranpac.json", model.summary())
            write_acc_matrix_csv(out / "acc_matrix.csv", state.acc_matrix, bench.n_tasks)
            for lg in loggers:
                done = [v for v in row if v is not None]
                lg.writer.add_scalar("continual/avg_acc_seen_tasks", sum(done) / max(len(done), 1), t)
                if mixed is not None:
                    lg.writer.add_scalar("continual/mixed_stream_acc", mixed, t)
                if task_sel is not None:
                    lg.writer.add_scalar("continual/task_selection_acc", task_sel, t)
                lg.writer.flush()
            shown = " ".join("  -  " if v is None else f"{100 * v:5.1f}" for v in row)
            extra = f", task selection {100 * task_sel:.1f}%" if task_sel is not None else ""
            extra += f", mixed stream {100 * mixed:.1f}%" if mixed is not None else ""
            tqdm.write(f"after task {t + 1}/{bench.n_tasks}: acc per task [{shown}]{extra} "
                       f"(elapsed {state.wall_time_s:.1f}s)")
        if world > 1:
            dist.barrier()

    try:
        train_stream, test_stream = bench.scenario.train_stream, bench.scenario.test_stream
        if method == "joint" and start < bench.n_tasks:
            # Joint training sees every task at once: one training, one row (the upper bound).
            t0 = time.perf_counter()
            tt = time.perf_counter()
            strategy.train(train_stream, num_workers=workers)
            state.train_time_s += time.perf_counter() - tt
            state.train_images += sum(bench.train_sizes) * cfg.SOLVER.TOTAL_EPOCH * world
            row = _row_from_metrics(strategy.eval(test_stream, num_workers=workers), bench.n_tasks) if is_main else []
            mixed = _mixed_stream_accuracy(strategy, bench, row, selection, seed, cfg.DATA.BATCH_SIZE, workers) \
                if is_main else None
            finish_task(bench.n_tasks - 1, row, mixed, None, t0)
        else:
            for t in range(start, bench.n_tasks):
                t0 = time.perf_counter()
                tt = time.perf_counter()
                strategy.train(train_stream[t], num_workers=workers, reset_optimizer_state=True)
                state.train_time_s += time.perf_counter() - tt
                passes = 1 if method in ("ncm", *GRADIENT_FREE) else cfg.SOLVER.TOTAL_EPOCH
                if method == "aper":  # the first task adapts, then every task is one prototype pass
                    passes = cfg.SOLVER.TOTAL_EPOCH + 1 if t == 0 else 1
                state.train_images += bench.train_sizes[t] * passes * world
                row, mixed, task_sel = [], None, None
                if is_main:
                    results = strategy.eval(test_stream[: t + 1], num_workers=workers)
                    row = _row_from_metrics(results, t + 1)
                    if method == "dap":
                        task_sel = next((float(v) for k, v in results.items() if k.startswith("TaskSel_Stream")), None)
                    mixed = _mixed_stream_accuracy(strategy, bench, row, selection, seed, cfg.DATA.BATCH_SIZE, workers)
                finish_task(t, row, mixed, task_sel, t0)

    except KeyboardInterrupt:
        if is_main:
            done = n_done()
            where = f"after task {done}/{bench.n_tasks}" if done else "from the start (no task had finished)"
            print(f"\ncasdap cl: interrupted; the run resumes {where} with:\n"
                  f"  casdap cl --config-file {out / 'config.yaml'} --auto_resume True", file=sys.stderr, flush=True)
        raise

    metrics = metrics_dict(True)
    if is_main:
        notes = []
        if selection and selection != "per_image":
            notes.append(f"Key selection: {selection}" + (
                " (reference protocol: each test batch holds one task and votes on its key)"
                if selection == "batch_majority" else " (oracle task identity: a diagnostic, not a result)"))
        if method == "dap" and cfg.MODEL.DAP.RESTRICT_TO_TASK:
            notes.append("Logits restricted to the selected key's task classes")
        if random_backbone:
            notes.append("Backbone: randomly initialised (MODEL.RANDOM_INIT True)")
        write_final_results(out / "final_results.txt", cfg.dump(), state.acc_matrix, bench.n_tasks, notes)
        for lg in loggers:
            for k in ("final_acc", "forgetting", "learning_acc", "bwt"):
                if metrics[k] is not None:
                    lg.writer.add_scalar(f"final/{k}", metrics[k], bench.n_tasks - 1)
            lg.writer.close()
        print()
        print(format_summary_table([metrics]))
        print(f"\nrun directory: {out}  (TensorBoard: tensorboard --logdir {out / 'tensorboard'})")
    return RunResult(metrics, out, strategy)

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

from casdap.config import COMPAT_KEYS
from casdap.config.schema import MethodKeys, drop_unread, dump_read, unread_settings
from casdap.continual.benchmarks import build_benchmark
from casdap.continual.methods import METHOD_NAMES, check_config, get_method
from casdap.continual.methods.base import Method
from casdap.continual.plugins import (
    AutocastPlugin,
    GradClipPlugin,
    GradSyncPlugin,
    LRSchedulePlugin,
    MultiScalePlugin,
    ProgressPlugin,
)
from casdap.continual.results import format_summary_table, write_text
from casdap.continual.run_directory import RunDirectoryPlugin, RunState
from casdap.continual.run_reading import CHECKPOINT_DIR, check_compatible, finished_metrics, read_resume_checkpoint
from casdap.engine.optim_factory import build_group_optimizer
from casdap.engine.seeding import restore_rng_state, seed_everything
from casdap.engine.threads import set_threads
from casdap.errors import CasdapError
from casdap.files import remove_stale_temporaries

__all__ = ["METHODS", "run_continual", "RunResult", "ensure_embedded_backbone", "prepare_backbone"]

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
    data = (cfg.DATA.NAME or "data").replace("/", "_")  # eurosat/rgb: one folder
    return Path("output") / data / cfg.MODEL.TRANSFER_TYPE.lower() / f"seed{seed}"


# ---------------------------------------------------------------------------------------- methods
# Settings that name something: compared in lower case everywhere (as the config checks do).
_NAME_KEYS = (("MODEL", "TRANSFER_TYPE"), ("MODEL.DAP", "SELECTION"), ("MODEL.DAP", "INJECTION"),
              ("SOLVER", "OPTIMIZER"), ("SOLVER", "SCHEDULER"))


def _names_lowered(cfg: CfgNode) -> list[tuple[CfgNode, str]]:
    nodes = []
    for path, key in _NAME_KEYS:
        node = cfg
        for part in path.split("."):
            node = node[part]
        if isinstance(node[key], str) and node[key] != node[key].lower():
            nodes.append((node, key))
    return nodes


def _optimizer(cfg: CfgNode, method: Method, model: nn.Module) -> torch.optim.Optimizer | None:
    if not method.uses_optimizer:
        return None
    s = cfg.SOLVER
    return build_group_optimizer(method.param_groups(cfg, model), s.OPTIMIZER, s.BASE_LR, s.WEIGHT_DECAY,
                                 momentum=s.MOMENTUM, betas=(s.BETA1, s.BETA2))


def _build_strategy(cfg: CfgNode, method: Method, model: nn.Module, device: torch.device, evaluator,
                    progress: ProgressPlugin):
    plugins: list = [progress]
    if method.gradient_training:
        plugins.append(LRSchedulePlugin(cfg.SOLVER.SCHEDULER, cfg.SOLVER.WARMUP_EPOCH, cfg.SOLVER.WARMUP_STEPS))
        if cfg.CONTINUAL.MULTI_SCALE:
            plugins.append(MultiScalePlugin(cfg.DATA.CROPSIZE, 0 if cfg.SEED is None else int(cfg.SEED)))
        plugins.append(GradSyncPlugin())
        if cfg.SOLVER.GRAD_CLIP_APPLY and cfg.SOLVER.GRAD_CLIP > 0:
            plugins.append(GradClipPlugin(cfg.SOLVER.GRAD_CLIP))
    if cfg.USE_AMP:
        plugins.append(AutocastPlugin(device))
    optimizer = _optimizer(cfg, method, model)
    return method.build_strategy(
        cfg, model, optimizer, plugins, train_mb_size=cfg.DATA.BATCH_SIZE, train_epochs=cfg.SOLVER.TOTAL_EPOCH,
        eval_mb_size=eval_batch_size(cfg), device=device, evaluator=evaluator,
    )


def _evaluator(method: Method, tb_dir: Path | None):
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.logging import TensorboardLogger
    from avalanche.training.plugins import EvaluationPlugin

    metrics = [accuracy_metrics(epoch=True, experience=True, stream=True), loss_metrics(epoch=True, stream=True),
               *method.eval_metrics()]
    loggers = [TensorboardLogger(tb_log_dir=str(tb_dir))] if tb_dir is not None else []
    with warnings.catch_warnings():  # ranks other than 0 log nothing on purpose
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(*metrics, loggers=loggers), loggers


# ---------------------------------------------------------------------------------------- backbone
# Data sets that ship with an installed package, and the backbone their runs use by default: made
# by the documented pretraining protocol (casdap pretrain, docs/pretraining.md) when missing, by the
# command that starts the run (prepare_backbone), never inside run_continual.
# embedded_shift, embedded_domains: classes disjoint from the pretraining
EMBEDDED_DATASETS = ("digits", "embedded_shift", "embedded_domains")


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


def prepare_backbone(cfg: CfgNode) -> Path | None:
    """What a command calls before :func:`run_continual`: the embedded benchmark's backbone file,
    pretrained once when missing (:func:`ensure_embedded_backbone`). Under ``torchrun`` the process
    group is joined first, rank 0 makes the file and the other ranks wait for it at a barrier."""
    rank, world = _distributed(_device(cfg))
    return ensure_embedded_backbone(cfg, rank == 0, world)


# ---------------------------------------------------------------------------------------- runner
def _resolved(cfg: CfgNode, num_classes: int, out: Path) -> CfgNode:
    """The config as run: the class count from the data (DAP's -1), the run folder, names in lower case."""
    lowered = _names_lowered(cfg)
    if cfg.DATA.NUMBER_CLASSES == num_classes and cfg.OUTPUT_DIR == str(out) and not lowered:
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATA.NUMBER_CLASSES = num_classes
    cfg.OUTPUT_DIR = str(out)
    for node, key in _names_lowered(cfg):
        node[key] = node[key].lower()
    cfg.freeze()
    return cfg


def loader_arguments(cfg: CfgNode, device: torch.device) -> dict[str, Any]:
    """The data loaders' settings of every training and evaluation pass: ``DATA.NUM_WORKERS``, and
    ``DATA.PIN_MEMORY`` (``--pin_mem``) on CUDA, where pinned host memory speeds up the copies."""
    return {"num_workers": cfg.DATA.NUM_WORKERS, "pin_memory": bool(cfg.DATA.PIN_MEMORY) and device.type == "cuda"}


def eval_batch_size(cfg: CfgNode) -> int:
    """The batch size of every evaluation pass: ``DATA.EVAL_BATCH_SIZE``, or ``DATA.BATCH_SIZE`` when 0.
    Per-image predictions do not depend on it; only the batch-majority protocol does."""
    return int(cfg.DATA.EVAL_BATCH_SIZE) or int(cfg.DATA.BATCH_SIZE)


def _set_cudnn(cfg: CfgNode, device: torch.device) -> None:
    """``CUDNN_BENCHMARK``: cuDNN picks its fastest kernels for the run's shapes (CUDA only)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)


def _read_only(cfg: CfgNode, keys: MethodKeys) -> CfgNode:
    """``cfg`` with every setting its method does not read back at its default, named in one notice
    (``casdap cl`` has done so when loading; a config built in Python may still carry some)."""
    if not unread_settings(cfg, keys.reads, COMPAT_KEYS):
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    drop_unread(cfg, keys.method, keys.reads, COMPAT_KEYS, "the config given to the run")
    cfg.freeze()
    return cfg


def _load_model(model, state: dict, path: Path, out: Path) -> None:
    """The model's state from a run's checkpoint; one made with other parts of the pipeline (an older
    run's, whose config.yaml stated settings that took no effect then) is one clear error."""
    from casdap.models.prompt_state import LayoutMismatch

    try:
        model.load_state_dict(state)
    except LayoutMismatch as e:
        raise CasdapError(
            f"cannot resume '{out}' from {path.name}: {e.difference}. Resume it with the run's own settings "
            f"(casdap cl --config-file {out / 'config.yaml'} --auto_resume True), or start a new run in another "
            "OUTPUT_DIR") from None


def run_continual(cfg: CfgNode, progress: bool = True) -> RunResult:
    """Run the experiment described by ``cfg`` (frozen, from :func:`casdap.config.load_config`).

    A setting the method does not read is named in a notice and takes no effect; the saved
    ``config.yaml`` states only the settings the method reads. An embedded benchmark's backbone
    file must exist (or ``MODEL.RANDOM_INIT`` be set): commands make it first with
    :func:`prepare_backbone`.
    """
    keys = check_config(cfg)
    cfg = _read_only(cfg, keys)
    method = get_method(cfg.MODEL.TRANSFER_TYPE).for_config(cfg)
    device = _device(cfg)
    set_threads("casdap cl", int(cfg.DATA.CROPSIZE), device.type)
    _set_cudnn(cfg, device)
    rank, world = _distributed(device)
    is_main = rank == 0
    seed = 0 if cfg.SEED is None else int(cfg.SEED)
    out = output_dir_of(cfg)
    workers = cfg.DATA.NUM_WORKERS
    loader_args = loader_arguments(cfg, device)

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
    cfg = _resolved(cfg, bench.num_classes, out)
    config_text = dump_read(cfg, keys.reads)  # what the run reads: its config.yaml and checkpoints
    if finished is not None:
        check_compatible((out / "config.yaml").read_text(), cfg, out, keys.reads)
        if is_main:
            print(f"casdap cl: '{out}' holds a finished run ({finished['tasks_done']}/{finished['n_tasks']} tasks, "
                  f"final accuracy {finished['final_acc']:.4f}); nothing to do, its files are left as they are")
        return RunResult(finished, out)
    if resume is not None:
        check_compatible(resume[1]["config"], cfg, out, keys.reads)
    if is_main:  # what the writes of a killed run left half done
        remove_stale_temporaries(out, out / CHECKPOINT_DIR)
    model = method.build_model(cfg, bench.num_classes)
    if cfg.MODEL.FOLD_FROZEN_BN:  # frozen backbones run BatchNorm-folded; checkpoints stay unfolded
        from casdap.models.frozen_fold import fold_frozen_parts

        fold_frozen_parts(model)
    # what the backbone really is (a weight file wins over MODEL.RANDOM_INIT when both exist)
    random_backbone = bool(getattr(getattr(model, "backbone", model), "random_init", cfg.MODEL.RANDOM_INIT))
    if random_backbone and is_main:
        print("casdap cl: the backbone is randomly initialised (MODEL.RANDOM_INIT True): no pretrained features")
    if world > 1:  # identical starting weights on every rank
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)
    tb_dir = out / "tensorboard" if is_main else None
    evaluator, loggers = _evaluator(method, tb_dir)
    progress_plugin = ProgressPlugin(bench.n_tasks, enabled=progress and is_main, log_every=cfg.SOLVER.LOG_EVERY_N,
                                     verbose=is_main)
    strategy = _build_strategy(cfg, method, model, device, evaluator, progress_plugin)
    trainable, total = method.trainable_params(model), sum(p.numel() for p in model.parameters())
    fields = {"selection": None, **method.run_fields(cfg)}
    selection = fields["selection"]
    notes = [*method.protocol_notes(cfg),
             *(["Backbone: randomly initialised (MODEL.RANDOM_INIT True)"] if random_backbone else [])]
    run_dir = RunDirectoryPlugin(
        out, bench.n_tasks, config_text=config_text, notes=notes,
        info={"method": method.name, "backbone": cfg.MODEL.BACKBONE, "dataset": bench.dataset, "seed": seed,
              **fields, "random_init_backbone": random_backbone, "trainable_params": trainable,
              "total_params": total},
        joint=method.joint, keep_final_checkpoint=cfg.MODEL.SAVE_CKPT,
        keep_task_checkpoints=cfg.CONTINUAL.KEEP_TASK_CHECKPOINTS, eval_batch=eval_batch_size(cfg),
        num_workers=workers, pin_memory=loader_args["pin_memory"], world=world, write=is_main, verbose=is_main,
    )
    strategy.plugins.append(run_dir)  # after the evaluator, whose metrics it writes

    start = 0
    if resume is not None:
        ckpt = resume[1]
        _load_model(model, ckpt["model"], resume[0], out)
        start = int(ckpt["tasks_done"])
        run_dir.state = RunState(**ckpt["state"])
        strategy.load_state_dict(ckpt["strategy"], train_stream=bench.scenario.train_stream,
                                 task_classes=bench.task_classes, done=start)
        restore_rng_state(ckpt["rng"])
        if is_main:
            print(f"casdap cl: resuming {out} after task {start}/{bench.n_tasks}")
            if start >= bench.n_tasks:  # killed after its last checkpoint, before its result files
                run_dir.drop_earlier_checkpoints(bench.n_tasks - 1)  # before metrics.json says finished
                run_dir.write_results(strategy, finished=True)

    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", config_text)
        label = f" [{selection} key selection]" if selection else ""
        print(f"casdap cl: {method.name}{label} on {bench.dataset} ({bench.num_classes} classes, {bench.n_tasks} "
              f"tasks of {[len(c) for c in bench.task_classes]}), backbone {cfg.MODEL.BACKBONE}, seed {seed}, "
              f"{trainable:,} trainable / {total:,} parameters, device {device}"
              + (f", {world} processes" if world > 1 else "") + f" -> {out}")
        if cfg.SOLVER.DBG_TRAINABLE:  # DAP's debugging switch: name every parameter that learns
            names = [n for n, p in model.named_parameters() if p.requires_grad]
            print(f"casdap cl: {len(names)} trainable parameter tensors: {', '.join(names)}")

    for lg in loggers:  # the protocol travels with the TensorBoard logs too
        lg.writer.add_text("run", f"method {method.name}, key selection {selection or '-'}, backbone "
                           f"{cfg.MODEL.BACKBONE}" + (" (randomly initialised)" if random_backbone else "")
                           + f", seed {seed}")

    try:
        train_stream, test_stream = bench.scenario.train_stream, bench.scenario.test_stream
        if method.joint:  # every task at once: one training, one row (the upper bound)
            tasks = [(train_stream, test_stream)] if start < bench.n_tasks else []
        else:
            tasks = [(train_stream[t], test_stream[: t + 1]) for t in range(start, bench.n_tasks)]
        for train_part, test_part in tasks:
            strategy.train(train_part, reset_optimizer_state=True, **loader_args)
            if is_main:  # the run directory plugin writes the row
                strategy.eval(test_part, **loader_args)
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

"""Shared pieces of the continual-learning tests: a tiny CIFAR-100-layout data set, configs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from conftest import ROOT
from layouts import write_cifar

from casdap.config import load_config

DIGITS_YAML = ROOT / "configs" / "dap" / "digits.yaml"
DIGITS_STREAM = ROOT / "configs" / "streams" / "digits.yaml"  # the digits with no method's keys
CIFAR_YAML = ROOT / "configs" / "dap" / "cifar.yaml"
# A run keeps only its newest task checkpoint; tests that read an earlier task's add these overrides.
KEEP = ("CONTINUAL.KEEP_TASK_CHECKPOINTS", "True")


def write_tiny_cifar(root: Path, n_classes: int = 4, train_per_class: int = 8, test_per_class: int = 4,
                     seed: int = 0, noise: int = 40) -> Path:
    """A real ``cifar-100-python`` layout with class-dependent images (colour + uniform noise of
    +-``noise``: the larger, the more the classes overlap)."""
    rng = np.random.default_rng(seed)
    names = [f"class_{c}" for c in range(n_classes)]
    colours = rng.integers(0, 256, size=(n_classes, 3))
    for train, per in ((True, train_per_class), (False, test_per_class)):
        labels = np.repeat(np.arange(n_classes), per)
        jitter = rng.integers(-noise, noise, size=(len(labels), 32, 32, 3))
        images = np.clip(colours[labels][:, None, None, :] + jitter, 0, 255).astype(np.uint8)
        write_cifar(root, images, labels, names, "cifar100", train)
    return root


def tiny_cifar_cfg(data: Path, out: Path, method: str = "dap", *extra: str, tasks: int = 2):
    """cifar.yaml at the smallest size: 4 classes in ``tasks`` tasks, one epoch, on a random narrow
    CAS-ViT for tests (``rcvit_test``: what a tiny run checks does not need the real width)."""
    n = 4
    return load_config(CIFAR_YAML, [
        "MODEL.TRANSFER_TYPE", method, "MODEL.RANDOM_INIT", "True", "MODEL.BACKBONE", "rcvit_test",
        "DATA.DATAPATH", str(data),
        "MODEL.MODEL_ROOT", str(data / "no-backbone"),  # a ./model/ of the checkout must not be picked up
        "DATA.NUMBER_CLASSES", str(n), "DATA.CROPSIZE", "32", "DATA.BATCH_SIZE", "8", "DATA.NUM_WORKERS", "0",
        "CONTINUAL.INITIAL", str(n // tasks), "CONTINUAL.INCREMENT", str(n // tasks), "CONTINUAL.N_TASKS",
        str(tasks), "MODEL.DAP.PROMPT_POOL", str(tasks), "MODEL.DAP.NUM_TASKS_FOR_EMB", str(tasks),
        "SOLVER.TOTAL_EPOCH", "1", "OUTPUT_DIR", str(out), "SEED", "0", "BASELINES.REPLAY_MEM_SIZE", "8",
        "DEVICE", "cpu", *extra,
    ])


def ranpac_digits_cfg(out: Path, *extra: str):
    """The embedded digits with a random rcvit_test, a tenth of the training images: no augmentation, so
    features can be recomputed exactly."""
    return load_config(DIGITS_YAML, [
        "MODEL.TRANSFER_TYPE", "ranpac", "MODEL.RANDOM_INIT", "True", "MODEL.BACKBONE", "rcvit_test",
        "DATA.PERCENTAGE", "0.1", "DEVICE", "cpu",
        "OUTPUT_DIR", str(out), "BASELINES.RANPAC_PROJ_DIM", "300", "CONTINUAL.INITIAL", "5", "CONTINUAL.INCREMENT",
        "5", "CONTINUAL.N_TASKS", "2", *extra,
    ])


@dataclass
class LaunchedRun:
    """One run of a shared ``torchrun`` launch: its config, run folder and its part of rank 0's stdout."""

    cfg: object
    out: Path
    stdout: str


def launch_cl_runs(where: Path, runs: dict, nproc: int = 2) -> dict[str, LaunchedRun]:
    """Run every config of ``runs`` (name -> config) in one ``torchrun`` launch of ``nproc`` CPU processes
    (tests/cl_launch.py), in order; fails with the launch's stderr if it fails."""
    from cl_launch import END_OF_RUN

    argv: list[str] = []
    for name, cfg in runs.items():
        yaml = where / f"{name}.yaml"
        yaml.write_text(cfg.dump())
        argv += [*(["+"] if argv else []), "--config-file", str(yaml), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
           str(Path(__file__).parent / "cl_launch.py"), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=where, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = proc.stdout.split(END_OF_RUN + "\n")
    assert len(parts) == len(runs) + 1, proc.stdout[-3000:]
    return {name: LaunchedRun(cfg, Path(cfg.OUTPUT_DIR), part) for (name, cfg), part in zip(runs.items(), parts)}


def run_casdap(cmd: list[str], cwd: Path, **_) -> subprocess.CompletedProcess:
    """``python -m casdap ARGS`` run in this process, with the subprocess's exit code, stdout and
    stderr, for tests of what a command does rather than of starting it: a fresh process spends about
    10 CPU seconds importing torch, torchvision and avalanche. ``cmd`` is the subprocess's command
    line; other keywords of ``subprocess.run`` are accepted and ignored (output is always captured)."""
    from casdap.cli import main

    prefix = [sys.executable, "-m", "casdap"]
    assert list(cmd[:3]) == prefix, f"not a python -m casdap command: {cmd[:3]}"
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in cmd[3:]])
            except SystemExit as e:  # argparse's own errors and --help
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(list(cmd), code, out.getvalue(), err.getvalue())


def interrupt_during_task(monkeypatch, task: int) -> None:
    """Make a run raise KeyboardInterrupt (as Ctrl-C would) after its first step of ``task``."""
    from casdap.continual.plugins import ProgressPlugin

    original = ProgressPlugin.after_training_iteration

    def boom(self, strategy, **kwargs):
        original(self, strategy, **kwargs)
        if strategy.experience.current_experience == task:
            raise KeyboardInterrupt

    monkeypatch.setattr(ProgressPlugin, "after_training_iteration", boom)


def resume_after_interrupt(monkeypatch, cifar: Path, where: Path, full_metrics: dict, *extra: str,
                           method: str = "dap"):
    """Interrupt a run of ``method`` (DAP by default) with ``extra`` during task 1 in ``where/killed``,
    resume it, and check it ends as the uninterrupted run in ``where/full`` did: same matrix, task
    selection and task-1 checkpoint (every tensor equal). Returns the killed-then-resumed run's folder
    and its task-1 model state."""
    import pytest
    import torch

    from casdap.continual.runner import run_continual

    killed = where / "killed"
    with monkeypatch.context() as mp:
        interrupt_during_task(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            run_continual(tiny_cifar_cfg(cifar, killed, method, *extra), progress=False)
    assert json.loads((killed / "metrics.json").read_text())["tasks_done"] == 1
    resumed = run_continual(tiny_cifar_cfg(cifar, killed, method, *extra, "SOLVER.AUTO_RESUME", "True"),
                            progress=False).metrics
    assert resumed["acc_matrix"] == full_metrics["acc_matrix"] and resumed["finished"]
    assert resumed["task_selection_acc"] == full_metrics["task_selection_acc"]
    a = torch.load(where / "full" / "checkpoints" / "task_001.pth", weights_only=True)["model"]
    b = torch.load(killed / "checkpoints" / "task_001.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    return killed, a

"""The README's copy of the seed's CAS-DAP command lines runs as written (read from the README, so
the two cannot drift), on CIFAR-100-layout data at the smallest size the lines exercise. The first,
supervised line runs in tests/test_train_seed.py."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cl_support import write_tiny_cifar
from train_helpers import ROOT, readme_seed_lines

from casdap.models import create_model


def _checkout(where: Path) -> Path:
    """A working folder as a user has it: the entry point, the configs, data (one training image a
    class: one batch per task and epoch), Model Zoo weights."""
    work = where / "checkout"
    work.mkdir(parents=True)
    (work / "main.py").symlink_to(ROOT / "main.py")
    (work / "configs").symlink_to(ROOT / "configs")
    (work / "logs").mkdir()
    for data in (work / "data", where / "dataset" / "cifar100"):  # ./data and ../dataset/cifar100
        write_tiny_cifar(data, n_classes=100, train_per_class=1, test_per_class=1)
    (work / "model").mkdir()
    torch.save({"model": create_model("rcvit_xs", num_classes=1000).state_dict()}, work / "model" / "rcvit_xs.pth")
    return work


def _run(line: str, cwd: Path) -> subprocess.CompletedProcess:
    assert line.startswith("python ")
    command = shlex.quote(sys.executable) + line[len("python"):]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


def _seed_main_here(line: str, cwd: Path) -> tuple[int, str]:
    """``main.py``'s arguments of a README line (one with no redirection), run by its entry point in
    this process: (exit code, stderr)."""
    from casdap.cli import seed_main

    words = shlex.split(line)
    assert ">" not in words, line
    err, here = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = seed_main(words[words.index("main.py") + 1:])
    finally:
        os.chdir(here)
    return code, err.getvalue()


def _config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


@pytest.mark.slow
def test_readme_seed_lines_run_as_written(tmp_path):
    lines = readme_seed_lines()
    assert len(lines) == 3 and all("main.py" in line for line in lines)
    assert "--config-file" not in lines[0] and lines[1].endswith("--config-file ./configs/dap/cifar.yaml")
    # the first line (supervised CAS-ViT on CIFAR-100) runs as written in tests/test_train_seed.py

    first = _checkout(tmp_path / "a")
    done = _run(lines[1], first)  # --config-file last: the continual DAP run with the same flags
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accepted with no effect on a frozen-backbone continual run: --drop_path, --model_ema" in done.stderr
    log = (first / "logs" / "casdap2_res12.txt").read_text()
    assert "after task 10/10" in log
    cfg = _config(first / "output")
    assert cfg["MODEL"]["TRANSFER_TYPE"] == "dap" and cfg["DATA"]["NAME"] == "cifar100"
    assert (cfg["SOLVER"]["BASE_LR"], cfg["DATA"]["BATCH_SIZE"], cfg["SOLVER"]["TOTAL_EPOCH"]) == (6e-3, 128, 10)
    assert (cfg["SOLVER"]["WARMUP_STEPS"], cfg["DATA"]["CROPSIZE"], cfg["USE_AMP"]) == (1950, 32, False)

    # the folder holds the second line's run: the third line's arguments, given to main.py's entry in
    # this process (a torchrun launch only to be refused costs about 10 CPU seconds), never overwrite it
    before = (first / "output" / "metrics.json").read_bytes()
    code, err = _seed_main_here(lines[2], first)
    assert code == 2 and "casdap: error: 'output' already holds a run" in err, err[-3000:]
    assert (first / "output" / "metrics.json").read_bytes() == before

    second = _checkout(tmp_path / "b")  # the third line only: continual
    done = _run(lines[2], second)  # bf16 autocast, multi-scale batches, data under ../dataset/cifar100
    assert done.returncode == 0, done.stderr[-3000:]
    assert "after task 10/10" in done.stdout
    cfg = _config(second / "output")
    assert (cfg["DATA"]["BATCH_SIZE"], cfg["USE_AMP"], cfg["CONTINUAL"]["MULTI_SCALE"]) == (16, True, True)
    assert cfg["DATA"]["DATAPATH"] == "../dataset/cifar100" and cfg["SOLVER"]["TOTAL_EPOCH"] == 5

"""The README's first training command as written, and CPU DDP with two processes."""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from train_helpers import ROOT, env, readme_seed_lines, write_tiny_cifar

from casdap.checkpoint import read_checkpoint


def _seed_command() -> list[str]:
    """main.py's flags in the README's first seed line (supervised CIFAR-100), read from the README so
    that this test runs the line as written; its output redirection is left to the shell."""
    words = shlex.split(readme_seed_lines()[0])
    assert words[:6] == ["python", "-m", "torch.distributed.run", "--nproc_per_node", "1", "main.py"], words
    assert words[-2:] == [">", "casdap2_res.txt"] and "--config-file" not in words, words
    return words[6:-2]


SEED_CMD = _seed_command()


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _launcher_env() -> dict:
    e = env()
    e["PET_MASTER_PORT"] = _free_port()  # torch.distributed.run's --master_port, without changing the command
    return e


@pytest.mark.slow  # a torchrun launch of the README command (about 20 s)
def test_seed_command_as_written_runs_first_epoch(tmp_path):
    """`python -m torch.distributed.run --nproc_per_node 1 main.py <flags>` exactly as in the README's
    first seed line (tests/test_seed_lines.py runs the other two), with
    CIFAR-100 under ./data: 256 training images make one optimizer step of 2 x 128 per epoch. The
    run is stopped once epoch 0 is logged and checkpointed (10 epochs would take minutes here)."""
    write_tiny_cifar(tmp_path / "data", n_train=256, n_test=40, n_classes=100)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", str(ROOT / "main.py"), *SEED_CMD]
    out = tmp_path / "output"
    with open(tmp_path / "stdout.txt", "w") as stdout:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=_launcher_env(), stdout=stdout, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None:
                if (out / "log.txt").is_file() and (out / "checkpoint-0.pth").is_file():
                    break
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    text = (tmp_path / "stdout.txt").read_text()
    assert (out / "log.txt").is_file(), text[-3000:]

    first = json.loads((out / "log.txt").read_text().splitlines()[0])
    assert first["epoch"] == 0 and first["n_parameters"] > 2_000_000
    for key in ("train_loss", "train_lr", "test_acc1", "test_acc5", "test_loss", "epoch_time_s", "train_images_per_s"):
        assert key in first
    assert 0.0 <= first["test_acc1"] <= 100.0 and first["train_images_per_s"] > 0

    resolved = json.loads((out / "args.json").read_text())
    assert resolved["lr"] == 6e-3 and resolved["batch_size"] == 128 and resolved["epochs"] == 10
    assert resolved["warmup_steps"] == 1950 and resolved["update_freq"] == 2 and resolved["nb_classes"] == 100
    assert resolved["model_ema"] is False and resolved["use_amp"] is False and resolved["device"] == "cpu"

    state = read_checkpoint(out / "checkpoint-0.pth")
    assert state["epoch"] == 0 and {"model", "optimizer", "scaler", "rng_states", "args"} <= set(state)
    assert state["model"]["head.weight"].shape == (100, 220) and "dist_head.weight" not in state["model"]
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    # --print_verbose 1: a progress line for each of the 2 micro-batches (2 x 128 = 256 images per step).
    assert "Epoch: [0] [1/2]" in text and "Epoch: [0] [2/2]" in text, text[-3000:]
    assert "* Acc@1" in text


@pytest.mark.slow  # two processes start
def test_torchrun_two_cpu_processes_stay_in_sync_and_learn(tmp_path):
    write_tiny_cifar(tmp_path / "data", n_train=32, n_test=16, n_classes=4, variant="cifar10")
    launcher = tmp_path / "launch_and_dump.py"
    launcher.write_text(
        "import os, sys, torch\n"
        "from casdap.cli.train import main, parse_args\n"
        "result = main(parse_args(sys.argv[1:]))\n"
        "torch.save(result.model.state_dict(), f\"rank{os.environ['RANK']}.pt\")\n"
    )
    flags = ("--data_set CIFAR10 --model rcvit_xs --lr 3e-3 --batch_size 8 --update_freq 1 --epochs 3 "
             "--input_size 32 --num_workers 0 --warmup_epochs 0 --use_amp False --color_jitter 0 "
             "--smoothing 0 --drop_path 0 --output_dir out --print_verbose 0").split() + ["--aa", ""]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(launcher), *flags]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_launcher_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    logs = [json.loads(line) for line in (tmp_path / "out" / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in logs] == [0, 1, 2]
    assert logs[-1]["train_loss"] < logs[0]["train_loss"]
    assert "2 process(es)" in proc.stdout and proc.stdout.count("Averaged stats") == 3  # rank 0 prints only

import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_console_help():
    exe = str(Path(sys.executable).parent / "casdap")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "usage: casdap" in out.stdout


def test_demo_runs_real_training():
    out = subprocess.run(
        [sys.executable, "-m", "casdap", "demo", "--epochs", "1"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "epoch 1/1: train loss" in out.stdout and "test acc" in out.stdout

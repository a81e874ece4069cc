import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_console_help():
    exe = str(Path(sys.executable).parent / "casdap")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "usage: casdap" in out.stdout

import subprocess
import sys
from pathlib import Path

from conftest import ROOT

from casdap.cli import SUBCOMMANDS


def test_console_help_lists_every_command_without_importing_torch():
    """``casdap --help`` names every subcommand with its one-line summary, and answers before torch
    loads (each subcommand module is imported only for its arguments)."""
    exe = str(Path(sys.executable).parent / "casdap")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.startswith("usage: casdap [-h] [--version] COMMAND ...")
    listed = [line.split()[0] for line in out.stdout.split("positional arguments:")[1].split("options:")[0]
              .splitlines() if line.startswith("    ") and not line.startswith("      ")]
    assert listed == sorted(SUBCOMMANDS) == ["bench", "cl", "compare", "demo", "export", "pretrain", "train"]
    assert "run a class-incremental continual-learning experiment" in out.stdout
    probe = ("import sys\nfrom casdap.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print('torch loaded' if 'torch' in sys.modules else 'no torch')")
    lazy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert lazy.returncode == 0 and lazy.stdout.rstrip().endswith("no torch"), lazy.stdout[-300:] + lazy.stderr

import csv
import subprocess
import sys

import pytest
from cl_support import run_casdap
from conftest import copy_demo_backbone
from PIL import Image


@pytest.mark.slow  # the demo's runs at reduced size (about 20 s idle), from the session's pretrained backbone
def test_demo_end_to_end_at_reduced_size(tmp_path, demo_pretraining):
    """The demo's whole path: offline pretraining (the session's demo run made the backbone), DAP and
    baselines on the digits stream, compare."""
    first, printed = demo_pretraining
    assert "[1/3] backbone: pretraining rcvit_xs offline" in printed and "stage times: backbone " in printed
    assert (first / "model" / "rcvit_xs.pth").is_file() and (first / "model" / "rcvit_xs.json").is_file()

    out_dir = tmp_path / "demo"
    copy_demo_backbone(first, out_dir)
    cmd = [sys.executable, "-m", "casdap", "demo", "--out", str(out_dir), "--pretrain-epochs", "1",
           "--methods", "dap,finetune,linear,joint", "SOLVER.TOTAL_EPOCH", "1", "DATA.PERCENTAGE", "0.1"]
    out = run_casdap(cmd, cwd=tmp_path)  # in this process: no start-up imports
    assert out.returncode == 0, out.stderr[-3000:]
    assert "backbone: reusing" in out.stdout and "pretraining" not in out.stdout
    for method in ("dap", "finetune", "linear", "joint"):
        assert (out_dir / method / "seed0-77c23270" / "metrics.json").is_file()
        assert f"{method}/seed0-" in out.stdout
    rows = list(csv.DictReader(open(out_dir / "compare" / "runs.csv")))
    assert sorted(r["method"] for r in rows) == ["dap", "finetune", "joint", "linear"]
    heat = Image.open(out_dir / "compare" / "avg_accuracy.png")
    assert heat.size[0] > 100 and heat.size[1] > 100
    assert "TensorBoard: tensorboard --logdir" in out.stdout and "demo finished in" in out.stdout
    assert "on an idle 2-core machine" in out.stdout and "stage times: backbone " in out.stdout


def test_demo_rejects_unknown_method(tmp_path):
    out = subprocess.run([sys.executable, "-m", "casdap", "demo", "--methods", "dap,magic"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "unknown method(s) magic" in out.stderr
    assert not (tmp_path / "runs").exists()

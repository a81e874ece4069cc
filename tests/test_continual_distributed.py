import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cl_support import tiny_cifar_cfg, write_tiny_cifar
from conftest import ROOT


# dap with several keys per task: each rank seeds the keys from its own first batch, so rank 0's
# keys must reach the others
@pytest.mark.slow  # two processes per method start (about 10 s each)
@pytest.mark.parametrize("method,extra", [("finetune", []), ("dap", ["MODEL.DAP.KEYS_PER_TASK", "3"])])
def test_torchrun_two_cpu_processes_keep_identical_weights(tmp_path, method, extra):
    data = write_tiny_cifar(tmp_path / "cifar", train_per_class=8)
    out = tmp_path / "ddp"
    yaml = tmp_path / "ddp.yaml"
    yaml.write_text(tiny_cifar_cfg(data, out, method, "DATA.BATCH_SIZE", "4", *extra).dump())
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(Path(__file__).parent / "cl_launch.py"), "--config-file", str(yaml), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sums = json.loads((out / "rank_checksums.json").read_text())
    assert len(sums) == 2 and sums[0] == sums[1]  # every rank holds the same trained weights
    m = json.loads((out / "metrics.json").read_text())
    assert m["finished"] and m["tasks_done"] == 2
    assert proc.stdout.count("after task 2/2") == 1  # only rank 0 reports and writes
    assert len(list((out / "tensorboard").iterdir())) == 1

import json

import pytest


# dap with several keys per task: each rank seeds the keys from its own first batch, so rank 0's
# keys must reach the others (the runs: the torchrun_cl_runs fixture, one launch for all of them)
@pytest.mark.slow  # two processes start (about 25 s for the launch all distributed tests share)
@pytest.mark.parametrize("method", ["finetune", "dap", "l2p", "dualprompt", "coda_prompt"])
def test_torchrun_two_cpu_processes_keep_identical_weights(torchrun_cl_runs, method):
    run = torchrun_cl_runs[method]
    out = run.out
    sums = json.loads((out / "rank_checksums.json").read_text())
    assert len(sums) == 2 and sums[0] == sums[1]  # every rank holds the same trained weights
    m = json.loads((out / "metrics.json").read_text())
    assert m["finished"] and m["tasks_done"] == 2
    assert run.stdout.count("after task 2/2") == 1  # only rank 0 reports and writes
    assert len(list((out / "tensorboard").iterdir())) == 1

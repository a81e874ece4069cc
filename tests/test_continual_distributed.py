import json

import pytest

TIMING = ("wall_time_s", "train_images_per_s")


# dap with several keys per task: each rank seeds the keys from its own first batch, so rank 0's
# keys must reach the others (the runs: the torchrun_cl_runs fixture, one launch for all of them)
@pytest.mark.slow  # two processes start (about 25 s for the launch all distributed tests share)
@pytest.mark.parametrize("method", ["finetune", "dap", "l2p", "dualprompt", "coda_prompt"])
def test_torchrun_two_cpu_processes_keep_identical_weights(torchrun_cl_runs, method, tmp_path, monkeypatch):
    """Two ranks hold the same weights, and what rank 0 writes is what one process makes of them.

    Compared with a one-process run of the same config, exactly equal: every metric but the clock's
    (rank 0 alone evaluates, on the whole test set, so the same weights give the same logits bit for
    bit), the parameter counts, and the images trained on (every training image once an epoch, over
    both ranks). Not comparable: the weights one process would train itself. Each rank draws its own
    order and augmentations of its half of every class and steps on the mean of two half-batch
    gradients, so a single process takes other steps (twice as many at this batch size); so here the
    one-process run's training is replaced by the ranks' weights after each task. Statistics summed
    over ranks (the frozen-feature methods, Gaussian task inference) are compared with one process in
    test_prototype_methods and test_task_inference, to a tolerance: the order of summation changes
    the float rounding."""
    from avalanche.training.templates.update_type.sgd_update import SGDUpdate

    from casdap.checkpoint import read_checkpoint
    from casdap.continual.benchmarks import build_benchmark
    from casdap.continual.runner import run_continual

    run = torchrun_cl_runs[method]
    out = run.out
    sums = json.loads((out / "rank_checksums.json").read_text())
    assert len(sums) == 2 and sums[0] == sums[1]  # every rank holds the same trained weights
    m = json.loads((out / "metrics.json").read_text())
    assert m["finished"] and m["tasks_done"] == 2
    assert run.stdout.count("after task 2/2") == 1  # only rank 0 reports and writes
    assert len(list((out / "tensorboard").iterdir())) == 1

    ranks = [read_checkpoint(out / "checkpoints" / f"task_{t:03d}.pth") for t in range(2)]

    def ranks_weights(self, **kwargs):  # one epoch a task (SOLVER.TOTAL_EPOCH 1): the ranks' result
        self.model.load_state_dict(ranks[int(self.experience.current_experience)]["model"])

    cfg = run.cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = str(tmp_path / "one")
    cfg.freeze()
    monkeypatch.setattr(SGDUpdate, "training_epoch", ranks_weights)
    one = run_continual(cfg, progress=False).metrics
    assert {k: v for k, v in one.items() if k not in TIMING} == {k: v for k, v in m.items() if k not in TIMING}
    per_epoch = sum(build_benchmark(cfg).train_sizes)  # one process's training set
    assert ranks[-1]["state"]["train_images"] == per_epoch == 2 * 16

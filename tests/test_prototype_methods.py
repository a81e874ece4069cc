"""Prototype baselines of pretrained-model class-incremental learning (ranpac): the closed form, the
task-by-task accumulation, real runs with the run-directory contract, resuming, bad settings."""

import json

import pytest
import torch
import torch.nn.functional as F
from cl_support import DIGITS_YAML, interrupt_during_task, ranpac_digits_cfg, tiny_cifar_cfg, write_tiny_cifar
from test_continual_runs import CONTRACT

from casdap.cli import main
from casdap.continual.benchmarks import build_benchmark
from casdap.continual.prototypes import RIDGE_GRID, choose_ridge, ridge_solve, validation_sse
from casdap.continual.runner import run_continual


@pytest.fixture
def cifar(tmp_path):
    return write_tiny_cifar(tmp_path / "cifar", train_per_class=10)


_digits_cfg = ranpac_digits_cfg  # the embedded digits, random backbone, a tenth of the images


def _close(a, b, rel=1e-5):
    """Equal up to float32 rounding of the features, relative to the tensor's scale."""
    return torch.allclose(a, b, rtol=rel, atol=rel * float(b.abs().max()))


# ------------------------------------------------------------------------------------ closed form
def test_closed_form_equals_a_direct_least_squares_solve():
    gen = torch.Generator().manual_seed(0)
    h = torch.relu(torch.randn(40, 12, generator=gen, dtype=torch.float64))
    y = F.one_hot(torch.randint(0, 4, (40,), generator=gen), 4).double()
    for lam in (1e-3, 0.5, 20.0):
        w = ridge_solve(h.t() @ h, h.t() @ y, lam)
        # min ||H W - Y||^2 + lam ||W||^2 is the least-squares problem of [H; sqrt(lam) I] W = [Y; 0]
        a = torch.cat([h, lam ** 0.5 * torch.eye(12, dtype=h.dtype)])
        b = torch.cat([y, torch.zeros(12, 4, dtype=y.dtype)])
        assert torch.allclose(w, torch.linalg.lstsq(a, b).solution, atol=1e-9)
    # the held-out error from statistics alone is the squared error on the held-out rows
    hv, yv = h[:10], y[:10]
    assert validation_sse(w, hv.t() @ hv, hv.t() @ yv, 10) == pytest.approx(float(((hv @ w - yv) ** 2).sum()))
    # the chosen strength is the grid's best fit on the other rows, scored on the held-out ones
    lam, errors = choose_ridge(h.t() @ h, h.t() @ y, hv.t() @ hv, hv.t() @ yv, 10)
    ht, yt = h[10:], y[10:]
    direct = [float(((hv @ ridge_solve(ht.t() @ ht, ht.t() @ yt, g) - yv) ** 2).sum()) for g in RIDGE_GRID]
    assert errors == pytest.approx(direct, rel=1e-6) and lam == RIDGE_GRID[direct.index(min(direct))]


# ------------------------------------------------------------------------------------------ runs
def test_ranpac_run_directory_contract_and_separates_tiny_classes(tmp_path, cifar):
    out = tmp_path / "run"
    m = run_continual(tiny_cifar_cfg(cifar, out, "ranpac", "BASELINES.RANPAC_PROJ_DIM", "256"), progress=False).metrics
    assert set(m) == CONTRACT and m == json.loads((out / "metrics.json").read_text())
    assert m["method"] == "ranpac" and m["finished"] and m["tasks_done"] == 2 and m["selection"] is None
    assert m["trainable_params"] == 0 and m["learning_acc"] is not None and m["forgetting"] is not None
    assert (out / "acc_matrix.csv").read_text().splitlines()[0] == "after_task,task_0,task_1"
    assert (out / "final_results.txt").read_text().count("Final test Accuracy") == 1
    side = json.loads((out / "ranpac.json").read_text())
    assert side["proj_dim"] == 256 and len(side["ridge_per_task"]) == 2
    assert all(r in RIDGE_GRID for r in side["ridge_per_task"]) and side["held_out_images"] == 8  # a fifth of 40
    assert m["final_acc"] >= 0.9  # colour-coded classes: the ridge classifier separates them


def test_two_tasks_accumulate_what_one_task_of_their_union_does(tmp_path):
    two = run_continual(_digits_cfg(tmp_path / "two", "BASELINES.RANPAC_RIDGE", "10.0"), progress=False)
    one = run_continual(_digits_cfg(tmp_path / "one", "BASELINES.RANPAC_RIDGE", "10.0", "CONTINUAL.INITIAL", "10",
                                    "CONTINUAL.N_TASKS", "1"), progress=False)
    a, b = two.strategy.model, one.strategy.model
    assert torch.equal(a.projection, b.projection)  # seeded by SEED
    for name in ("gram", "targets", "class_counts"):  # float32 features: batch makeup moves the last digits
        assert _close(getattr(a, name), getattr(b, name)), name
    assert _close(a.weights, b.weights)
    # the same classifier: the same predictions on the whole test set
    assert two.metrics["mixed_stream_acc"] == pytest.approx(one.metrics["mixed_stream_acc"])
    # and the statistics are those of the training images themselves (no augmentation on the digits)
    bench = build_benchmark(_digits_cfg(tmp_path / "x"))
    x = torch.cat([torch.stack([e.dataset[i][0] for i in range(len(e.dataset))]) for e in bench.scenario.train_stream])
    with torch.no_grad():
        h = a.eval().hidden(x).double()
    assert _close(a.gram, h.t() @ h)
    # held out for choosing the strength: a fifth of every class
    assert int(a.val_counts.sum()) == pytest.approx(len(x) / 5, abs=10)


def test_ridge_is_chosen_on_held_out_images_and_logged(tmp_path, capsys):
    res = run_continual(_digits_cfg(tmp_path / "auto"), progress=False)
    model = res.strategy.model
    lam = float(model.ridges[1])
    want, _ = choose_ridge(model.gram, model.targets, model.val_gram, model.val_targets, float(model.val_counts.sum()))
    assert lam == want and lam in RIDGE_GRID
    assert torch.allclose(model.weights, ridge_solve(model.gram, model.targets, lam).float())  # fitted on all
    printed = capsys.readouterr().out
    assert "ranpac: task 1: ridge lambda" in printed and "held-out training images" in printed
    assert json.loads((tmp_path / "auto" / "ranpac.json").read_text())["ridge_per_task"][1] == lam


def test_resume_after_task_one_matches_the_uninterrupted_run(tmp_path, monkeypatch):
    full = run_continual(_digits_cfg(tmp_path / "full"), progress=False).metrics
    killed = tmp_path / "killed"
    with monkeypatch.context() as mp:
        interrupt_during_task(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            run_continual(_digits_cfg(killed), progress=False)
    assert json.loads((killed / "metrics.json").read_text())["tasks_done"] == 1
    resumed = run_continual(_digits_cfg(killed, "SOLVER.AUTO_RESUME", "True"), progress=False).metrics
    assert resumed["acc_matrix"] == full["acc_matrix"] and resumed["finished"]
    side = [json.loads((d / "ranpac.json").read_text()) for d in (killed, tmp_path / "full")]
    assert side[0] == side[1]
    a = torch.load(tmp_path / "full" / "checkpoints" / "task_001.pth", weights_only=True)["model"]
    b = torch.load(killed / "checkpoints" / "task_001.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a if k != "ridges")
    assert torch.equal(a["ridges"].nan_to_num(-1), b["ridges"].nan_to_num(-1))  # NaN: tasks not trained


@pytest.mark.parametrize("key,value", [
    ("BASELINES.RANPAC_RIDGE", "0"), ("BASELINES.RANPAC_RIDGE", "-1.5"),
    ("BASELINES.RANPAC_PROJ_DIM", "0"), ("BASELINES.RANPAC_PROJ_DIM", "-3"),
])
def test_bad_ranpac_settings_are_one_clear_error(tmp_path, capsys, key, value):
    out = tmp_path / "bad"
    code = main(["cl", "--config-file", str(DIGITS_YAML), "--output_dir", str(out), "--no-progress", "--device", "cpu",
                 "MODEL.RANDOM_INIT", "True", "MODEL.TRANSFER_TYPE", "ranpac", key, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and key in err[0] and "must be a positive" in err[0], err
    assert not (out / "metrics.json").exists()


@pytest.mark.slow  # two processes start (the launch all distributed tests share, about 25 s)
def test_torchrun_sums_the_statistics_of_every_rank(torchrun_cl_runs):
    from casdap.checkpoint import read_checkpoint

    run = torchrun_cl_runs["ranpac"]  # ranpac_digits_cfg, run by torchrun with two CPU processes
    out, cfg = run.out, run.cfg
    assert run.stdout.count("ranpac: task 2: ridge lambda") == 1  # rank 0 reports
    model = read_checkpoint(out / "checkpoints" / "task_001.pth")["model"]
    shards = sum(sum(build_benchmark(cfg, r, 2).train_sizes) for r in range(2))
    assert int(model["class_counts"].sum()) == shards  # both ranks' images, added up
    lam = float(model["ridges"][1])
    assert _close(model["weights"], ridge_solve(model["gram"], model["targets"], lam).float())


# -------------------------------------------------------------------------------------------- aper
def test_aper_adapts_on_the_first_task_only_then_classifies_by_prototypes(tmp_path, cifar):
    out = tmp_path / "aper"
    res = run_continual(tiny_cifar_cfg(cifar, out, "aper"), progress=False)
    m = res.metrics
    assert set(m) == CONTRACT and m["method"] == "aper" and m["finished"] and m["forgetting"] is not None
    assert 0 < m["trainable_params"] < m["total_params"]  # the adapted copy and its head, not the pretrained one
    first, last = (torch.load(out / "checkpoints" / f"task_00{t}.pth", weights_only=True)["model"] for t in (0, 1))
    assert bool(first["adapted"]) and bool(last["adapted"])
    for k in first:  # after the first task only the prototypes change
        if not k.startswith("class_"):
            assert torch.equal(first[k], last[k]), k
    moved = [k for k in first if k.startswith("backbone.") and k.endswith("weight")
             and not torch.equal(first[k], first["pretrained." + k[len("backbone."):]])]
    assert moved  # the copy was trained; the pretrained backbone was not
    assert int(first["class_counts"].sum()) == 20 and int(last["class_counts"].sum()) == 40  # one pass per task
    assert m["final_acc"] >= 0.75  # colour-coded fixture classes: prototypes separate them


def test_aper_resume_after_task_one_matches_the_uninterrupted_run(tmp_path, cifar, monkeypatch):
    full = run_continual(tiny_cifar_cfg(cifar, tmp_path / "full", "aper"), progress=False).metrics
    killed = tmp_path / "killed"
    with monkeypatch.context() as mp:
        interrupt_during_task(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            run_continual(tiny_cifar_cfg(cifar, killed, "aper"), progress=False)
    resumed = run_continual(tiny_cifar_cfg(cifar, killed, "aper", "SOLVER.AUTO_RESUME", "True"), progress=False)
    assert resumed.metrics["acc_matrix"] == full["acc_matrix"] and resumed.metrics["finished"]
    assert not any(p.requires_grad for p in resumed.strategy.model.parameters())  # the loaded copy stays frozen
    a = torch.load(tmp_path / "full" / "checkpoints" / "task_001.pth", weights_only=True)["model"]
    b = torch.load(killed / "checkpoints" / "task_001.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

"""Prototype baselines of pretrained-model class-incremental learning (ranpac): the closed form, the
task-by-task accumulation, real runs with the run-directory contract, resuming, bad settings."""

import json

import pytest
import torch
import torch.nn.functional as F
from cl_support import DIGITS_STREAM, KEEP, interrupt_during_task, ranpac_digits_cfg, tiny_cifar_cfg, write_tiny_cifar
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
    m = run_continual(tiny_cifar_cfg(cifar, out, "ranpac", "BASELINES.RANPAC_PROJ_DIM", "256",
                                     "MODEL.BACKBONE", "rcvit_xs"), progress=False).metrics
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
    code = main(["cl", "--config-file", str(DIGITS_STREAM), "--output_dir", str(out), "--no-progress",
                 "--device", "cpu", "MODEL.RANDOM_INIT", "True", "MODEL.TRANSFER_TYPE", "ranpac", key, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and key in err[0] and "must be a positive" in err[0], err
    assert not (out / "metrics.json").exists()


@pytest.mark.slow  # two processes start (the launch all distributed tests share)
def test_torchrun_sums_the_statistics_of_every_rank(torchrun_cl_runs):
    from casdap.checkpoint import read_checkpoint
    from casdap.continual.methods import get_method

    runs = {name: torchrun_cl_runs[name] for name in ("ranpac", "slda", "fecam", "slda-first-session")}
    cfgs = {name: run.cfg for name, run in runs.items()}  # ranpac_digits_cfg, run by torchrun with two CPU processes
    out = runs["ranpac"].stdout + runs["slda"].stdout + runs["fecam"].stdout + runs["slda-first-session"].stdout
    assert out.count("ranpac: task 2: ridge lambda") == 1  # rank 0 reports
    assert out.count("slda: task 2: shrinkage") == 2 and out.count("fecam: task 2: shrinkage") == 1
    cfg = cfgs["ranpac"]
    shards = sum(sum(build_benchmark(cfg, r, 2).train_sizes) for r in range(2))
    model = read_checkpoint(runs["ranpac"].out / "checkpoints" / "task_001.pth")["model"]
    assert int(model["class_counts"].sum()) == shards  # both ranks' images, added up
    lam = float(model["ridges"][1])
    assert _close(model["weights"], ridge_solve(model["gram"], model["targets"], lam).float())
    # slda / fecam: the statistics summed over the ranks are those one process computes on both shards
    shard_sets = [e.dataset for r in range(2) for e in build_benchmark(cfg, r, 2).scenario.train_stream]
    x = torch.cat([torch.stack([d[i][0] for i in range(len(d))]) for d in shard_sets])
    y = torch.cat([torch.tensor([int(d[i][1]) for i in range(len(d))]) for d in shard_sets])
    for name in ("slda", "fecam"):
        ddp = read_checkpoint(runs[name].out / "checkpoints" / "task_001.pth")["model"]
        model = get_method(name).build_model(cfgs[name], 10)
        model.load_state_dict(ddp)
        moments = model.empty_moments()
        with torch.no_grad():
            model.add_moments(moments, model.eval().features(x), y)
        for key, value in zip(("class_sums", "class_counts", "second"), moments):
            assert _close(ddp[key], value), (name, key)
        fitted = model.solve(ddp["class_sums"], ddp["class_counts"], ddp["second"], float(ddp["shrinkages"][1]))
        for key, value in fitted.items():
            assert _close(ddp[key].double(), value.double(), rel=1e-4), (name, key)
    first = read_checkpoint(runs["slda-first-session"].out / "checkpoints" / "task_001.pth")["model"]
    assert bool(first["adapted"]) and int(first["class_counts"].sum()) == shards


# -------------------------------------------------------------------------------------------- aper
def test_aper_adapts_on_the_first_task_only_then_classifies_by_prototypes(tmp_path, cifar):
    out = tmp_path / "aper"
    res = run_continual(tiny_cifar_cfg(cifar, out, "aper", *KEEP), progress=False)
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


# ------------------------------------------------------------------------------ slda, fecam
def _features(n=60, d=6, k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    return torch.randn(n, d, generator=gen) + 3 * torch.randn(k, d, generator=gen)[y], y


class _Pooled(torch.nn.Module):
    """A stand-in backbone: the input is its own pooled feature."""

    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def forward_pooled(self, x):
        return x


def test_slda_predicts_by_avalanches_streaming_lda_rule():
    from avalanche.training import StreamingLDA

    from casdap.continual.discriminants import SLDAClassifier

    x, y = _features()
    model = SLDAClassifier(_Pooled(6), 3)
    moments = model.empty_moments()
    model.add_moments(moments, x, y)
    model.add_statistics(*moments)
    model.fit(0.1)
    ref = StreamingLDA(slda_model=torch.nn.Identity(), criterion=torch.nn.CrossEntropyLoss(), input_size=6,
                       num_classes=3, shrinkage_param=0.1)
    means = torch.stack([x[y == c].mean(0) for c in range(3)])
    centred = x - means[y]
    ref.muK, ref.cK, ref.num_updates = means, torch.bincount(y).float(), len(x)
    ref.Sigma = centred.t() @ centred / len(x)  # the pooled within-class covariance of all images
    assert torch.allclose(model(x), ref.predict(x), atol=1e-4)


def test_fecam_scores_are_mahalanobis_distances_under_normalised_shrunk_covariances():
    import torch.nn.functional as F

    from casdap.continual.discriminants import FeCAMClassifier

    x, y = _features(n=90)
    model = FeCAMClassifier(_Pooled(6), 4)  # class 3 never trained
    moments = model.empty_moments()
    model.add_moments(moments, x, y)
    model.add_statistics(*moments)
    model.fit(0.5)
    logits = model(x[:5])
    assert (logits[:, 3] < logits[:, :3].amin(1)).all()  # never trained: never wins
    for c in range(3):
        xc = F.normalize(x[y == c].double(), dim=-1)  # the statistics of the normalised features
        cov = torch.cov(xc.t())  # unbiased, as np.cov
        off = ~torch.eye(6, dtype=torch.bool)
        shrunk = cov + 0.5 * (cov.diagonal().mean() * torch.eye(6) + cov[off].mean() * off)
        sd = shrunk.diagonal().sqrt()
        precision = torch.linalg.inv(shrunk / (sd[:, None] * sd[None]))
        diff = F.normalize(x[:5].double(), dim=-1) - xc.mean(0)
        want = -((diff @ precision) * diff).sum(-1)
        assert torch.allclose(logits[:, c].double(), want, rtol=1e-4, atol=1e-4), c


def test_fecam_depends_only_on_the_directions_of_the_training_features():
    """FeCAM scores L2-normalised features, so its class statistics must be those of normalised
    features too: rescaling training images' features changes nothing. (Statistics of the raw
    features, scored against normalised ones, cost 12 points on embedded_shift.)"""
    from casdap.continual.discriminants import FeCAMClassifier

    x, y = _features(n=90)
    scale = 0.2 + 5 * torch.rand(len(x), 1, generator=torch.Generator().manual_seed(1))
    logits = []
    for feats in (x, x * scale):
        model = FeCAMClassifier(_Pooled(6), 3)
        moments = model.empty_moments()
        model.add_moments(moments, feats, y)
        model.add_statistics(*moments)
        model.fit(0.5)
        logits.append(model(x[:10]))
    assert torch.allclose(logits[0], logits[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["slda", "fecam"])
def test_discriminant_statistics_in_two_parts_equal_one_pass(name):
    from casdap.continual.discriminants import FeCAMClassifier, SLDAClassifier

    cls = {"slda": SLDAClassifier, "fecam": FeCAMClassifier}[name]
    x, y = _features(n=80, k=4)
    parts, whole = cls(_Pooled(6), 4), cls(_Pooled(6), 4)
    for sel in (y < 2, y >= 2):  # task 0: classes 0-1, task 1: classes 2-3
        m = parts.empty_moments()
        parts.add_moments(m, x[sel], y[sel])
        parts.add_statistics(*m)
        parts.fit(0.2)
    m = whole.empty_moments()
    whole.add_moments(m, x, y)
    whole.add_statistics(*m)
    whole.fit(0.2)
    for key, value in whole.state_dict().items():
        if key not in ("shrinkages", "held_out_acc"):
            assert _close(parts.state_dict()[key].double(), value.double()), key


@pytest.mark.parametrize("name", ["slda", "fecam"])
def test_discriminant_runs_accumulate_what_one_task_of_their_union_does(tmp_path, name):
    fixed = [f"BASELINES.{name.upper()}_SHRINKAGE", "0.1"]
    two = run_continual(_digits_cfg(tmp_path / "two", "MODEL.TRANSFER_TYPE", name, *fixed), progress=False)
    one = run_continual(_digits_cfg(tmp_path / "one", "MODEL.TRANSFER_TYPE", name, *fixed, "CONTINUAL.INITIAL", "10",
                                    "CONTINUAL.N_TASKS", "1"), progress=False)
    a, b = two.strategy.model.state_dict(), one.strategy.model.state_dict()
    for key in a:
        if not key.startswith("backbone.") and key not in ("shrinkages", "held_out_acc"):
            assert _close(a[key].double(), b[key].double(), rel=1e-4), key
    assert two.metrics["mixed_stream_acc"] == pytest.approx(one.metrics["mixed_stream_acc"])
    side = json.loads((tmp_path / "two" / f"{name}.json").read_text())
    assert side["shrinkage_per_task"] == [0.1, 0.1] and side["shrinkage_grid"] is None


def test_slda_shrinkage_is_chosen_on_held_out_images_and_logged(tmp_path, capsys):
    from casdap.continual.discriminants import SLDA_GRID

    res = run_continual(_digits_cfg(tmp_path / "auto", "MODEL.TRANSFER_TYPE", "slda"), progress=False)
    m = res.metrics
    assert set(m) == CONTRACT and m["method"] == "slda" and m["finished"] and m["trainable_params"] == 0
    printed = capsys.readouterr().out
    assert "slda: task 2: shrinkage" in printed and "held-out training images of the task" in printed
    side = json.loads((tmp_path / "auto" / "slda.json").read_text())
    assert len(side["shrinkage_per_task"]) == 2 and all(s in SLDA_GRID for s in side["shrinkage_per_task"])
    assert all(0 < a <= 1 for a in side["held_out_acc_per_task"]) and side["first_session"] is False
    # fitted on every training image (held-out ones included) with the chosen value
    model = res.strategy.model
    want = model.solve(model.class_sums, model.class_counts, model.second, side["shrinkage_per_task"][1])
    assert torch.equal(model.weights, want["weights"]) and torch.equal(model.bias, want["bias"])


@pytest.mark.parametrize("name,extra", [
    ("slda", []), ("fecam", ["BASELINES.FECAM_SHRINKAGE", "auto"]),
    ("ncm", ["BASELINES.FIRST_SESSION", "True", "SOLVER.TOTAL_EPOCH", "1"]),
])
def test_discriminant_and_first_session_resume_matches_the_uninterrupted_run(tmp_path, monkeypatch, name, extra):
    args = ["MODEL.TRANSFER_TYPE", name, *extra]
    full = run_continual(_digits_cfg(tmp_path / "full", *args), progress=False).metrics
    killed = tmp_path / "killed"
    with monkeypatch.context() as mp:
        interrupt_during_task(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            run_continual(_digits_cfg(killed, *args), progress=False)
    resumed = run_continual(_digits_cfg(killed, *args, "SOLVER.AUTO_RESUME", "True"), progress=False)
    assert resumed.metrics["acc_matrix"] == full["acc_matrix"] and resumed.metrics["finished"]
    a = torch.load(tmp_path / "full" / "checkpoints" / "task_001.pth", weights_only=True)["model"]
    b = torch.load(killed / "checkpoints" / "task_001.pth", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k].nan_to_num(-1), b[k].nan_to_num(-1)) for k in a)
    if name == "ncm":  # the first session adapted the backbone once, and the loaded one stays frozen
        assert bool(b["adapted"]) and not any(p.requires_grad for p in resumed.strategy.model.parameters())


def test_first_session_adapts_the_backbone_on_the_first_task_only(tmp_path, cifar):
    out = tmp_path / "fs"
    res = run_continual(tiny_cifar_cfg(cifar, out, "ranpac", "BASELINES.RANPAC_PROJ_DIM", "64",
                                       "BASELINES.FIRST_SESSION", "True", *KEEP), progress=False)
    m = res.metrics
    assert set(m) == CONTRACT and m["method"] == "ranpac" and m["finished"]
    assert m["trainable_params"] > 0  # the backbone and the head of the first task
    assert "First session" in (out / "final_results.txt").read_text()
    fresh = run_continual(tiny_cifar_cfg(cifar, tmp_path / "plain", "ranpac", "BASELINES.RANPAC_PROJ_DIM", "64"),
                          progress=False).strategy.model.state_dict()
    first, last = (torch.load(out / "checkpoints" / f"task_00{t}.pth", weights_only=True)["model"] for t in (0, 1))
    assert bool(first["adapted"])
    moved = [k for k in fresh if k.startswith("backbone.") and k.endswith("weight")
             and not torch.equal(first[k], fresh[k])]
    assert moved  # the first task trained the backbone
    for k in first:  # after it, only the classifier's statistics change
        if k.startswith(("backbone.", "head.", "projection")):
            assert torch.equal(first[k], last[k]), k


@pytest.mark.parametrize("key,value,words", [
    ("BASELINES.SLDA_SHRINKAGE", "1.5", "must be a number in [0, 1]"),
    ("BASELINES.SLDA_SHRINKAGE", "-0.1", "must be a number in [0, 1]"),
    ("BASELINES.FECAM_SHRINKAGE", "2.0", "must be a number in [0, 1]"),
    ("BASELINES.FIRST_SESSION", "True", "is not read by method dap"),
])
def test_bad_discriminant_settings_are_one_clear_error(tmp_path, capsys, key, value, words):
    out = tmp_path / "bad"
    method = "fecam" if "FECAM" in key else ("dap" if "FIRST" in key else "slda")
    code = main(["cl", "--config-file", str(DIGITS_STREAM), "--output_dir", str(out), "--no-progress",
                 "--device", "cpu", "MODEL.RANDOM_INIT", "True", "MODEL.TRANSFER_TYPE", method, key, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and key in err[0] and words in err[0], err
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize("name", ["slda", "fecam"])
def test_features_with_nan_are_one_clear_error(tmp_path, capsys, monkeypatch, name):
    from casdap.models.casvit import CASViT

    monkeypatch.setattr(CASViT, "forward_pooled", lambda self, x: torch.full((len(x), self.num_features), float("nan")))
    out = tmp_path / "nan"
    code = main(["cl", "--config-file", str(DIGITS_STREAM), "--output_dir", str(out), "--no-progress",
                 "--device", "cpu", "MODEL.RANDOM_INIT", "True", "DATA.PERCENTAGE", "0.05",
                 "MODEL.TRANSFER_TYPE", name])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{name}:" in err[0] and "NaN" in err[0], err
    assert not (out / "metrics.json").exists()

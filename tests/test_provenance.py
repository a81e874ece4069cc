"""What a run records is what ran: resume refuses changed settings, a finished run is left as it
is, an unreadable checkpoint falls back to the one before, Ctrl-C says how to resume, an embedded
benchmark makes its missing backbone, and CAS-ViT flags map onto the config they name."""

import json
import shlex

import pytest
import torch
from cl_support import DIGITS_YAML, KEEP, interrupt_during_task, tiny_cifar_cfg, write_tiny_cifar

from casdap.checkpoint import read_checkpoint
from casdap.cli import main
from casdap.cli.cl import flag_overrides, parse_cl_args
from casdap.config import load_config
from casdap.continual.run_reading import settings_changed
from casdap.continual.runner import run_continual


@pytest.fixture
def cifar(tmp_path):
    return write_tiny_cifar(tmp_path / "cifar")


def _files(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _killed_run(tmp_path, cifar, monkeypatch, method="linear"):
    killed = tmp_path / "killed"
    with monkeypatch.context() as mp:
        interrupt_during_task(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            run_continual(tiny_cifar_cfg(cifar, killed, method), progress=False)
    return killed


def test_resume_with_a_changed_learning_rate_is_refused_naming_old_and_new(tmp_path, cifar, monkeypatch, capsys):
    killed = _killed_run(tmp_path, cifar, monkeypatch)
    before = _files(killed)
    cfg = tiny_cifar_cfg(cifar, killed, "linear", "SOLVER.AUTO_RESUME", "True", "SOLVER.BASE_LR", "0.02",
                         "SOLVER.TOTAL_EPOCH", "2")
    with pytest.raises(Exception) as err:
        run_continual(cfg, progress=False)
    message = str(err.value)
    assert "SOLVER.BASE_LR: 0.01 -> 0.02" in message and "SOLVER.TOTAL_EPOCH: 1 -> 2" in message
    assert "cannot resume" in message and "\n" not in message
    assert _files(killed) == before  # nothing written
    # the number of loader workers changes the augmentations drawn, so the training images: refused too
    workers = tiny_cifar_cfg(cifar, killed, "linear", "SOLVER.AUTO_RESUME", "True", "DATA.NUM_WORKERS", "1")
    with pytest.raises(Exception, match=r"DATA.NUM_WORKERS: 0 -> 1"):
        run_continual(workers, progress=False)
    assert _files(killed) == before
    # settings that cannot change results may differ: the resumed run ends as the uninterrupted one,
    # to the bit (the same metrics but for the clock, the same weights)
    resumed = run_continual(tiny_cifar_cfg(cifar, killed, "linear", "SOLVER.AUTO_RESUME", "True",
                                           "SOLVER.LOG_EVERY_N", "7", "DATA.PIN_MEMORY", "False"), progress=False)
    full = run_continual(tiny_cifar_cfg(cifar, tmp_path / "full", "linear"), progress=False)
    timing = ("wall_time_s", "train_images_per_s")
    assert {k: v for k, v in resumed.metrics.items() if k not in timing} == {
        k: v for k, v in full.metrics.items() if k not in timing}
    assert resumed.metrics["finished"] and resumed.metrics["tasks_done"] == 2
    weights = [read_checkpoint(run / "checkpoints" / "task_001.pth")["model"] for run in (killed, tmp_path / "full")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_settings_changed_ignores_paths_spelled_differently(tmp_path, cifar):
    a = tiny_cifar_cfg(cifar, tmp_path / "r", "dap", "MODEL.WEIGHT_PATH", str(tmp_path / "w.pth"))
    b = tiny_cifar_cfg(cifar, tmp_path / "r2", "dap", "MODEL.WEIGHT_PATH", str(tmp_path / "." / "w.pth"),
                       "DEVICE", "auto", "DATA.PIN_MEMORY", "False")
    assert settings_changed(a.dump(), b) == []
    c = tiny_cifar_cfg(cifar, tmp_path / "r", "dap", "MODEL.WEIGHT_PATH", str(tmp_path / "other.pth"), "USE_AMP",
                       "True")
    assert [s.split(":")[0] for s in settings_changed(a.dump(), c)] == ["MODEL.WEIGHT_PATH", "USE_AMP"]


def test_finished_run_is_reported_and_left_untouched(tmp_path, cifar, capsys):
    out = tmp_path / "run"
    first = run_continual(tiny_cifar_cfg(cifar, out, "ncm"), progress=False).metrics
    before = _files(out)
    again = run_continual(tiny_cifar_cfg(cifar, out, "ncm", "SOLVER.AUTO_RESUME", "True"), progress=False)
    printed = capsys.readouterr().out
    assert "holds a finished run (2/2 tasks" in printed and "resuming" not in printed
    assert again.metrics == json.loads(json.dumps(first)) and _files(out) == before
    with pytest.raises(Exception, match=r"DATA.BATCH_SIZE: 8 -> 4"):  # never relabelled either
        run_continual(tiny_cifar_cfg(cifar, out, "ncm", "SOLVER.AUTO_RESUME", "True", "DATA.BATCH_SIZE", "4"),
                      progress=False)
    assert _files(out) == before


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, cifar):
    full = run_continual(tiny_cifar_cfg(cifar, tmp_path / "full", "linear"), progress=False).metrics
    out = tmp_path / "run"
    run_continual(tiny_cifar_cfg(cifar, out, "linear", *KEEP, tasks=2), progress=False)
    (out / "checkpoints" / "task_001.pth").write_bytes(b"truncated")
    (out / "metrics.json").unlink()  # as if killed while the last task was being written
    with pytest.warns(UserWarning, match="skipping task_001.pth"):
        resumed = run_continual(tiny_cifar_cfg(cifar, out, "linear", "SOLVER.AUTO_RESUME", "True"), progress=False)
    assert resumed.metrics["acc_matrix"] == full["acc_matrix"]


def test_ctrl_c_prints_the_command_that_resumes_the_run(tmp_path, cifar, monkeypatch, capsys):
    full = run_continual(tiny_cifar_cfg(cifar, tmp_path / "full", "linear"), progress=False).metrics
    killed = _killed_run(tmp_path, cifar, monkeypatch)
    err = capsys.readouterr().err
    line = next(s.strip() for s in err.splitlines() if s.strip().startswith("casdap cl --config-file"))
    assert "after task 1/2" in err and line.endswith("--auto_resume True")
    assert main([*shlex.split(line)[1:], "--no-progress"]) == 0
    assert json.loads((killed / "metrics.json").read_text())["acc_matrix"] == full["acc_matrix"]


def test_missing_embedded_backbone_is_pretrained_once_and_reused(tmp_path, monkeypatch, capsys):
    from casdap.pretrain import train as pretrain

    monkeypatch.setitem(pretrain.DEFAULT_PROTOCOL, "epochs", 1)  # the documented protocol, shortened
    monkeypatch.setitem(pretrain.DEFAULT_PROTOCOL, "images_per_class", 2)
    monkeypatch.chdir(tmp_path)
    small = ["DATA.PERCENTAGE", "0.05", "SOLVER.TOTAL_EPOCH", "1", "MODEL.TRANSFER_TYPE", "ncm"]
    assert main(["cl", "--config-file", str(DIGITS_YAML), "--no-progress", *small]) == 0
    printed = capsys.readouterr().out
    backbone = tmp_path / "model" / "embedded" / "rcvit_xs.pth"
    assert "no rcvit_xs backbone at 'model/embedded/rcvit_xs.pth': pretraining it once" in printed
    side = json.loads(backbone.with_suffix(".json").read_text())
    assert side["what_the_backbone_saw"]["source"].startswith("glyphs") and side["epochs"] == 1
    assert (tmp_path / "output" / "digits" / "ncm" / "seed0" / "metrics.json").is_file()  # the documented folder
    assert main(["cl", "--config-file", str(DIGITS_YAML), "--no-progress", *small, "SEED", "1"]) == 0
    assert "pretraining it once" not in capsys.readouterr().out


def test_casvit_flags_map_or_are_named_and_misspelt_ones_are_errors(tmp_path, capsys):
    args, opts = parse_cl_args([
        "--data_set", "CIFAR10", "--warmup_steps", "30", "--multi_scale_sampler", "--opt", "sgd", "--opt_betas",
        "0.8", "0.95", "--clip_grad", "2", "--finetune", "zoo.pth", "--drop_path", "0.2", "--model_ema", "True",
        "--mixup", "0.8", "SOLVER.TOTAL_EPOCH", "3", "--config-file", str(DIGITS_YAML),
    ])
    pairs, unused = flag_overrides(args)
    cfg = load_config(args.config_file, [*pairs, *opts])
    assert (cfg.DATA.NAME, cfg.SOLVER.WARMUP_STEPS, cfg.CONTINUAL.MULTI_SCALE, cfg.SOLVER.OPTIMIZER) == (
        "cifar10", 30, True, "sgd")
    assert (cfg.SOLVER.BETA1, cfg.SOLVER.BETA2, cfg.SOLVER.GRAD_CLIP, cfg.SOLVER.GRAD_CLIP_APPLY) == (0.8, 0.95, 2.0,
                                                                                                     True)
    assert cfg.MODEL.WEIGHT_PATH == "zoo.pth" and cfg.SOLVER.TOTAL_EPOCH == 3
    assert unused == ["--drop_path", "--model_ema", "--mixup"]
    for argv, says in (
        (["--config-file", str(DIGITS_YAML), "--epochz", "3"], "unknown flag --epochz. Did you mean --epochs?"),
        (["--config-file", str(DIGITS_YAML), "--use_amp", "perhaps"], "expected True or False, got 'perhaps'"),
        (["--config-file", str(DIGITS_YAML), "--eval", "True"], "--eval True (evaluation only) has no continual"),
        (["--data_set", "CIFAR"], "the following arguments are required: --config-file"),
    ):
        assert main(["cl", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "output").exists()


@pytest.mark.parametrize("kind", ["linear", "linear_decay"])
def test_dap_linear_schedule_is_warmup_then_constant(kind):
    """DAP's "linear" (its WarmupConstantSchedule) warms up, then keeps the base rate."""
    from types import SimpleNamespace

    import torch

    from casdap.continual.plugins import LRSchedulePlugin

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    strategy = SimpleNamespace(dataloader=range(3), train_epochs=2, optimizer=opt)
    plugin = LRSchedulePlugin(kind, warmup_steps=2)
    rates = []
    for _ in range(6):
        plugin.before_training_iteration(strategy)
        rates.append(opt.param_groups[0]["lr"])
        plugin.after_update(strategy)
    assert rates[:2] == pytest.approx([0.0, 0.05])  # warmup
    if kind == "linear":
        assert rates[2:] == pytest.approx([0.1] * 4)
    else:
        assert 0.1 > rates[2] > rates[3] > rates[4] > rates[5] > 0


def test_multi_scale_batches_take_the_samplers_sides_and_repeat_on_resume():
    from types import SimpleNamespace

    import torch

    from casdap.continual.plugins import MultiScalePlugin

    assert MultiScalePlugin(224).sides == [160, 192, 224, 256, 288, 320]  # CAS-ViT's 160-320 px around 224
    assert MultiScalePlugin(32).sides == [32, 64]

    def sides(seed, steps):
        plugin, seen = MultiScalePlugin(32, seed), []
        for step in steps:
            strategy = SimpleNamespace(clock=SimpleNamespace(train_iterations=step), mbatch=[torch.rand(2, 3, 32, 32)])
            plugin.before_forward(strategy)
            seen.append(strategy.mbatch[0].shape[-1])
        return seen

    drawn = sides(0, range(20))
    assert set(drawn) == {32, 64} and drawn[10:] == sides(0, range(10, 20))  # a resumed run draws the same

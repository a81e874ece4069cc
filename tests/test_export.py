import importlib

import numpy as np
import pytest
import torch

import casdap
from casdap.cli import main


def _absent(*names: str) -> list[str]:
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


# The export extra (onnx, onnxscript, onnxruntime) is part of the test extra, absent only in a bare
# install. Writing a graph needs onnx and onnxscript; checking it, onnxruntime. The error paths
# below run the command with --no-check, and the class-split test needs none of them.
needs_export = pytest.mark.skipif(bool(_absent("onnx", "onnxscript")), reason="onnx / onnxscript not installed")
needs_ort = pytest.mark.skipif(bool(_absent("onnx", "onnxscript", "onnxruntime")),
                               reason="the export extra (onnx, onnxscript, onnxruntime) is not installed")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A distilled rcvit_xs with 10 classes and trained-like BatchNorm statistics, exported by the CLI."""
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = casdap.create_model("rcvit_xs", num_classes=10)
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        elif isinstance(m, torch.nn.Linear):
            m.weight.data.normal_(0, 0.5, generator=gen)
    ckpt = casdap.save_checkpoint({"model": model.state_dict()}, tmp / "xs.pth")
    onnx_path = tmp / "xs.onnx"
    return model.eval(), ckpt, onnx_path


@needs_ort
@pytest.mark.slow  # ONNX export of rcvit_xs and onnxruntime (about 10 s)
def test_export_cli_writes_a_graph_that_matches_pytorch(exported, capsys):
    model, ckpt, onnx_path = exported
    code = main(["export", "--model", "rcvit_xs", "--checkpoint", str(ckpt), "--onnx", str(onnx_path),
                 "--input-size", "32", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert onnx_path.is_file() and not onnx_path.with_name(onnx_path.name + ".partial").exists()
    assert "(OK, tolerance 0.0001)" in out and "onnxruntime" in out and "PyTorch eager" in out
    # independent check: another batch size (the batch axis is dynamic) against the unfolded model
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32)
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (5, 10)
    assert np.abs(got - want).max() <= 1e-4 and np.abs(want).max() > 0.5


@needs_export
def test_export_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    code = main(["export", "--model", "rcvit_xs", "--checkpoint", str(tmp_path / "none.pth"),
                 "--onnx", str(tmp_path / "x.onnx"), "--no-check"])
    err = capsys.readouterr().err.splitlines()  # the thread notice, printed once a process, may come first
    assert code == 2 and err[-1].startswith("casdap: error: ") and "does not exist" in err[-1]
    assert [line for line in err if "error" in line] == err[-1:]
    assert not (tmp_path / "x.onnx").exists()


@needs_export
def test_export_rejects_sizes_the_backbone_cannot_take(exported, tmp_path, capsys):
    _, ckpt, _ = exported
    code = main(["export", "--model", "rcvit_xs", "--checkpoint", str(ckpt), "--onnx", str(tmp_path / "x.onnx"),
                 "--input-size", "50", "--no-check"])
    assert code == 2 and "multiple of 32" in capsys.readouterr().err


@pytest.fixture(scope="module")
def restricted_run(tmp_path_factory):
    """A real two-task DAP run at 32 px, two keys per task, whose evaluation restricts logits to the
    selected key's task."""
    from cl_support import KEEP, tiny_cifar_cfg, write_tiny_cifar

    from casdap.continual.runner import run_continual

    tmp = tmp_path_factory.mktemp("restricted_run")
    cifar = write_tiny_cifar(tmp / "cifar")
    # prompts in the last stage only: a smaller graph, a quicker export
    cfg = tiny_cifar_cfg(cifar, tmp / "run", "dap", "MODEL.DAP.RESTRICT_TO_TASK", "True", "MODEL.DAP.STAGES", "[3]",
                         "MODEL.DAP.KEYS_PER_TASK", "2", *KEEP)  # a test reads task_000.pth
    result = run_continual(cfg, progress=False)
    return result, cfg


def _test_images(cfg):
    from casdap.continual.benchmarks import build_benchmark

    items = [item for exp in build_benchmark(cfg).scenario.test_stream for item in exp.dataset]
    return torch.stack([item[0] for item in items]), torch.tensor([int(item[1]) for item in items])


@needs_ort
@pytest.mark.slow  # a continual run, then ONNX export of CAS-DAP and onnxruntime
def test_export_follows_the_run_size_and_logit_restriction(restricted_run, tmp_path, capsys):
    import copy

    result, cfg = restricted_run
    run_dir = result.output_dir
    strategy = result.strategy
    assert strategy.class_to_task == {0: 0, 1: 0, 2: 1, 3: 1}
    x, y = _test_images(cfg)
    # The 1-epoch random-backbone run sends every test image to task 0's keys; point each task's last
    # key at the query of one of its test images, so that key selection inside the graph maps a key to
    # its task and both rows of the restriction are exercised. The run's checkpoint keeps everything
    # else (class-to-task map included).
    ckpt = casdap.checkpoint.read_checkpoint(run_dir / "checkpoints" / "task_001.pth")
    model = copy.deepcopy(strategy.model).eval()
    picks = [int((y < 2).nonzero()[0]), int((y >= 2).nonzero()[0])]
    with torch.no_grad():
        assert model.keys_per_task == 2
        model.dap_keys[[t * model.keys_per_task + 1 for t in (0, 1)]] = model.forward_query(x[picks])
    ckpt["model"] = model.state_dict()
    ckpt_path = casdap.save_checkpoint(ckpt, tmp_path / "task_001.pth")
    onnx_path = tmp_path / "run.onnx"
    code = main(["export", "--config", str(run_dir / "config.yaml"), "--checkpoint", str(ckpt_path),
                 "--onnx", str(onnx_path), "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "exporting CAS-DAP at 32 px; logits restricted to the selected key's task" in out
    assert "export vs the run's evaluation" in out and out.count("(OK, tolerance 0.0001)") == 2
    assert out.count("key indices identical") == 2  # the run's evaluation, then onnxruntime
    assert "note:" not in out  # no size given: the run's, silently
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 32, 32]
    assert [o.name for o in session.get_outputs()] == ["logits", "key_idx"]
    logits, keys = session.run(None, {"images": x.numpy()})
    original = strategy.model
    strategy.model = model
    try:
        want_logits, want_keys = strategy.predict(x, y)  # the run's own evaluation path
    finally:
        strategy.model = original
    assert np.array_equal(keys, want_keys.numpy()) and set(keys[picks].tolist()) == {0, 1}
    assert np.abs(logits - want_logits.numpy()).max() <= 1e-4
    splits = [[0, 1], [2, 3]]
    for row, k in zip(logits, keys):
        outside = [c for c in range(4) if c not in splits[k]]
        assert (row[outside] == -1e4).all() and (row[splits[k]] > -1e3).all()


@needs_export
def test_export_input_size_option_overrides_the_run_with_a_notice(restricted_run, tmp_path, capsys):
    result, _ = restricted_run
    run_dir = result.output_dir
    # the output folder is missing: everything up to writing the graph runs, then one error (no slow export)
    code = main(["export", "--config", str(run_dir / "config.yaml"), "--checkpoint",
                 str(run_dir / "checkpoints" / "task_001.pth"), "--onnx", str(tmp_path / "none" / "x.onnx"),
                 "--input-size", "64", "--opts", "MODEL.DAP.RESTRICT_TO_TASK", "False", "--threads", "1", "--no-check"])
    captured = capsys.readouterr()
    assert code == 2 and "does not exist" in captured.err
    out = captured.out
    assert out.startswith("note: exporting at --input-size 64 px, the run used DATA.CROPSIZE 32 px\n")
    assert "exporting CAS-DAP at 64 px; all logits (MODEL.DAP.RESTRICT_TO_TASK False)" in out
    assert "unrestricted logits): max |logit diff| 0.00e+00, key indices identical" in out


def test_export_class_splits_without_the_run_map(restricted_run):
    from casdap.export import run_class_splits

    result, cfg = restricted_run
    ckpt = casdap.checkpoint.read_checkpoint(result.output_dir / "checkpoints" / "task_000.pth")
    assert run_class_splits(ckpt, cfg, 2, "ck")[0] == [[0, 1], []]  # the run's map after task 0
    # a bare state dict: natural label order from CONTINUAL.*, every task assumed trained; after
    # task 0 (tasks_done recorded) the second task has no classes
    assert run_class_splits({"model": ckpt["model"]}, cfg, 2, "ck")[0] == [[0, 1], [2, 3]]
    assert run_class_splits({"model": ckpt["model"], "tasks_done": 1}, cfg, 3, "ck")[0] == [[0, 1], [], []]


@needs_export
def test_export_restriction_without_class_splits_is_one_clear_error(restricted_run, tmp_path, capsys):
    result, _ = restricted_run
    run_dir = result.output_dir
    ckpt = casdap.checkpoint.read_checkpoint(run_dir / "checkpoints" / "task_001.pth")
    bare = casdap.save_checkpoint({"model": ckpt["model"]}, tmp_path / "bare.pth")
    onnx_path = tmp_path / "x.onnx"
    code = main(["export", "--config", str(run_dir / "config.yaml"), "--opts", "CONTINUAL.SHUFFLE_CLASSES", "True",
                 "--checkpoint", str(bare), "--onnx", str(onnx_path), "--no-check"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "RESTRICT_TO_TASK" in err and "no class-to-task map" in err and "RUN/checkpoints/task_XXX.pth" in err
    assert str(bare) in err and not onnx_path.exists()


def test_export_without_the_extra_names_the_missing_package_and_the_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as in an install without it
    code = main(["export", "--model", "rcvit_xs", "--checkpoint", str(tmp_path / "none.pth"),
                 "--onnx", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "'onnxruntime' is not installed" in err and "pip install 'casdap[export]'" in err
    assert not (tmp_path / "x.onnx").exists()

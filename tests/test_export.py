import numpy as np
import pytest
import torch

import casdap
from casdap.cli import main

ort = pytest.importorskip("onnxruntime")  # part of the test extra; absent only in a bare install


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


def test_export_cli_writes_a_graph_that_matches_pytorch(exported, capsys):
    model, ckpt, onnx_path = exported
    code = main(["export", "--model", "rcvit_xs", "--checkpoint", str(ckpt), "--onnx", str(onnx_path),
                 "--input-size", "32", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert onnx_path.is_file() and not onnx_path.with_name(onnx_path.name + ".partial").exists()
    assert "(OK, tolerance 0.0001)" in out and "onnxruntime" in out and "PyTorch eager" in out
    # independent check: another batch size (the batch axis is dynamic) against the unfolded model
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32)
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (5, 10)
    assert np.abs(got - want).max() <= 1e-4 and np.abs(want).max() > 0.5


def test_export_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    code = main(["export", "--model", "rcvit_xs", "--checkpoint", str(tmp_path / "none.pth"),
                 "--onnx", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    assert not (tmp_path / "x.onnx").exists()


def test_export_rejects_sizes_the_backbone_cannot_take(exported, tmp_path, capsys):
    _, ckpt, _ = exported
    code = main(["export", "--model", "rcvit_xs", "--checkpoint", str(ckpt), "--onnx", str(tmp_path / "x.onnx"),
                 "--input-size", "50"])
    assert code == 2 and "multiple of 32" in capsys.readouterr().err


def test_export_casdap_with_key_selection_inside_the_graph(tmp_path, capsys):
    from conftest import ROOT

    from casdap.config import load_config
    from casdap.models.dap import build_dap_model

    config = str(ROOT / "configs" / "dap" / "cifar.yaml")
    # prompts in the last stage only (a smaller graph, a quicker export); two keys per task
    small = ["MODEL.DAP.STAGES", "[3]", "MODEL.DAP.KEYS_PER_TASK", "2"]
    dap = build_dap_model(load_config(config, [*small, "MODEL.RANDOM_INIT", "True"])).eval()
    gen = torch.Generator().manual_seed(3)
    for n, p in dap.named_parameters():  # trained-like prompts, keys, task embeddings and head
        if not n.startswith("backbone."):
            p.data.normal_(0, 0.3, generator=gen)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():  # one task's first key per test image, so per-image selection differs by image
        dap.dap_keys[0:16:2] = dap.forward_query(x)
    ckpt = casdap.save_checkpoint({"model": dap.state_dict()}, tmp_path / "dap.pth")
    onnx_path = tmp_path / "dap.onnx"
    code = main(["export", "--config", config, "--opts", *small, "--checkpoint", str(ckpt), "--onnx", str(onnx_path),
                 "--input-size", "32", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "key indices identical" in out and "(OK, tolerance 0.0001)" in out
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "key_idx"]
    logits, keys = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = dap(x)  # per-image selection, as in the graph
    assert np.array_equal(keys, want.key_idx.numpy()) and len(set(keys.tolist())) > 2
    assert np.abs(logits - want.logits.numpy()).max() <= 1e-4

import os
import pickle

import pytest
import torch

import casdap
from casdap import CasdapError, load_checkpoint, save_checkpoint


@pytest.fixture
def source():
    torch.manual_seed(0)
    return casdap.create_model("rcvit_xs", num_classes=10)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "wrap,key",
    [
        (lambda sd: sd, None),
        (lambda sd: {"model": sd, "epoch": 3}, None),
        (lambda sd: {"state_dict": sd}, None),
        (lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}, None),
        (lambda sd: {"model": {}, "model_ema": sd}, "model_ema"),
    ],
    ids=["bare", "model", "state_dict", "ddp-prefix", "ema"],
)
def test_accepted_layouts(source, tmp_path, wrap, key):
    path = tmp_path / "ck.pth"
    torch.save(wrap(source.state_dict()), path)
    target = casdap.create_model("rcvit_xs", num_classes=10)
    load_checkpoint(target, path, key=key)
    assert _same(source, target)


def test_official_args_namespace_is_accepted(source, tmp_path):
    import argparse

    path = tmp_path / "ck.pth"
    torch.save({"model": source.state_dict(), "args": argparse.Namespace(lr=6e-3)}, path)
    target = casdap.create_model("rcvit_xs", num_classes=10)
    load_checkpoint(target, path)
    assert _same(source, target)


def test_strict_error_lists_missing_unexpected_and_shapes(source, tmp_path):
    sd = source.state_dict()
    sd.pop("norm.weight")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "ck.pth"
    torch.save(sd, path)
    target = casdap.create_model("rcvit_xs", num_classes=100)
    with pytest.raises(CasdapError) as e:
        load_checkpoint(target, path)
    msg = str(e.value)
    assert "missing keys (1): norm.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "head.weight: checkpoint (10, 220) vs model (100, 220)" in msg


def test_finetune_drops_mismatched_heads(source, tmp_path):
    path = tmp_path / "ck.pth"
    torch.save({"model": source.state_dict()}, path)
    target = casdap.create_model("rcvit_xs", num_classes=100)
    head_before = target.head.weight.clone()
    report = load_checkpoint(target, path, finetune=True)
    assert sorted(report.dropped) == ["dist_head.bias", "dist_head.weight", "head.bias", "head.weight"]
    assert torch.equal(target.head.weight, head_before)
    assert torch.equal(target.norm.weight, source.norm.weight)
    assert "dropped 4 tensors" in report.summary()


def test_finetune_keeps_matching_head(source, tmp_path):
    path = tmp_path / "ck.pth"
    torch.save(source.state_dict(), path)
    target = casdap.create_model("rcvit_xs", num_classes=10)
    assert load_checkpoint(target, path, finetune=True).dropped == []
    assert _same(source, target)


def test_truncated_file(source, tmp_path):
    path = tmp_path / "ck.pth"
    torch.save({"model": source.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CasdapError, match=r"ck.pth' is truncated or not a PyTorch checkpoint"):
        load_checkpoint(source, path)


def test_not_a_checkpoint(source, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(CasdapError, match="notes.txt"):
        load_checkpoint(source, path)


def test_missing_file(source, tmp_path):
    with pytest.raises(CasdapError, match="does not exist"):
        load_checkpoint(source, tmp_path / "nope.pth")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def test_pickle_that_would_run_code_is_refused(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model": source.state_dict(), "payload": _Exploit()}, path)
    with pytest.raises(CasdapError, match="could run code"):
        load_checkpoint(source, path)
    assert not (tmp_path / "PWNED_MARKER").exists()
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CasdapError):
        load_checkpoint(source, raw)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_non_tensor_state_dict_is_rejected(source, tmp_path):
    path = tmp_path / "ck.pth"
    torch.save({"model": {"a": 1}}, path)
    with pytest.raises(CasdapError, match="not a state dict"):
        load_checkpoint(source, path)


def test_atomic_save_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ck.pth"
    save_checkpoint({"w": torch.ones(2)}, path)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        save_checkpoint({"w": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]


def test_numbered_checkpoints_found_in_order_and_pruned(tmp_path):
    from casdap.checkpoint import TASK_CHECKPOINT, latest_checkpoint, numbered_checkpoints, prune_checkpoints

    for name in ("checkpoint-10.pth", "checkpoint-2.pth", "checkpoint-best.pth", "task_1.pth", "task_0.pth"):
        save_checkpoint({"x": 1}, tmp_path / name)
    assert [n for n, _ in numbered_checkpoints(tmp_path)] == [2, 10]
    assert [p.name for _, p in numbered_checkpoints(tmp_path, TASK_CHECKPOINT)] == ["task_0.pth", "task_1.pth"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10.pth"
    prune_checkpoints(tmp_path, keep=1)
    assert [p.name for _, p in numbered_checkpoints(tmp_path)] == ["checkpoint-10.pth"]
    assert (tmp_path / "checkpoint-best.pth").is_file() and latest_checkpoint(tmp_path / "none") is None

"""The embedded_domains stream: 5 tasks of 10 classes, each its own source and look; characters
disjoint from the pretraining and embedded_shift; a validation split apart from training; seeded
renders; a tiny CAS-DAP run end to end. Tiny image counts; measurements in docs/embedded_domains.md."""

import json

import pytest
import torch
from conftest import ROOT

from casdap.config import load_config
from casdap.continual.benchmarks import build_benchmark
from casdap.continual.runner import EMBEDDED_DATASETS
from casdap.data import domain_stream
from casdap.data.domain_stream import DOMAIN_TASKS, LOOKS, domain_characters, render_domain_stream
from casdap.data.glyph_stream import SHIFT_TASKS, shape_similarity
from casdap.data.glyphs import GLYPH_SETS, glyph_characters, is_digit_like
from casdap.errors import CasdapError

DOMAINS_YAML = ROOT / "configs" / "dap" / "embedded_domains.yaml"


@pytest.fixture
def tiny_stream(monkeypatch):
    """build_benchmark renders 4 training and 2 test images per class."""
    monkeypatch.setattr(domain_stream, "TRAIN_PER_CLASS", 4)
    monkeypatch.setattr(domain_stream, "TEST_PER_CLASS", 2)


def _stream_images(stream) -> torch.Tensor:
    return torch.stack([x for exp in stream for x, *_ in exp.dataset]).flatten(1)


def test_five_tasks_of_ten_classes_each_its_own_source_and_look(tiny_stream):
    assert len(DOMAIN_TASKS) == 5 and all(len(t.characters) == 10 for t in DOMAIN_TASKS)
    assert len({t.source for t in DOMAIN_TASKS}) == 5
    looks = [t.look for t in DOMAIN_TASKS]
    assert len(set(looks)) == 5 and set(looks[1:]) == set(LOOKS)
    assert DOMAIN_TASKS[0] == ("digits", "0123456789", "handwriting")
    bench = build_benchmark(load_config(DOMAINS_YAML))
    assert bench.dataset == "embedded_domains" and bench.num_classes == 50
    assert bench.task_classes == [list(range(10 * t, 10 * t + 10)) for t in range(5)]
    assert bench.train_sizes == [40] * 5 and bench.test_sizes == [20] * 5
    assert bench.class_names[:2] == ["digits:0", "digits:1"] and bench.class_names[10].startswith("canadian")
    assert "embedded_domains" in EMBEDDED_DATASETS


def test_characters_are_disjoint_from_the_pretraining_and_embedded_shift():
    chars = domain_characters()
    assert len(chars) == len(set(chars)) == 40
    pretraining = set(glyph_characters(tuple(GLYPH_SETS)))  # every set any pretraining source can use
    shift = {c for _, cs in SHIFT_TASKS for c in cs}
    assert not set(chars) & pretraining and not set(chars) & shift
    assert not any(is_digit_like(c) for c in chars)
    # no look-alike either: raster correlation over rotations/mirrors against every pretraining
    # glyph, the digits and embedded_shift's characters (clear look-alikes score 0.84-1.00)
    reference = sorted(pretraining) + list("0123456789") + sorted(shift)
    worst = shape_similarity(chars, reference)[0]
    assert worst[0] <= 0.75, worst
    assert shape_similarity(["ᐃ", "ا"], reference)[-1][0] > 0.95  # syllabic i ~ Δ, alif ~ l: left out


def test_same_seed_same_tensors_other_seed_differs():
    a = render_domain_stream(0, 2, 1)
    render_domain_stream.cache_clear()  # a fresh render, not the cached tensors
    b = render_domain_stream(0, 2, 1)
    c = render_domain_stream(1, 2, 1)
    assert a[0] is not b[0]
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert torch.equal(a[1], c[1]) and torch.equal(a[3], c[3])  # same labels
    for t in range(5):  # every task's images change with the seed, the digits' draws included
        rows = a[1] == 10 * t
        assert not torch.equal(a[0][rows], c[0][rows]), DOMAIN_TASKS[t].source


def test_training_and_test_images_are_separate():
    x_tr, y_tr, x_te, y_te = render_domain_stream(0, 3, 2)
    assert x_tr.shape == (150, 3, 32, 32) and x_te.shape == (100, 3, 32, 32)
    assert y_tr.tolist() == torch.arange(50).repeat_interleave(3).tolist()
    assert x_tr.min() >= 0 and x_tr.max() <= 1
    assert torch.cdist(x_te.flatten(1), x_tr.flatten(1)).min() > 0.5


def test_validation_split_is_apart_from_training_and_never_reads_the_test_images(tiny_stream):
    cfg = load_config(DOMAINS_YAML, ["DATA.VALIDATION", "0.25"])
    bench = build_benchmark(cfg)
    assert bench.train_sizes == [30] * 5 and bench.test_sizes == [10] * 5
    fit, held = _stream_images(bench.scenario.train_stream), _stream_images(bench.scenario.test_stream)
    full = build_benchmark(load_config(DOMAINS_YAML))
    train, test = _stream_images(full.scenario.train_stream), _stream_images(full.scenario.test_stream)
    assert torch.cdist(held, fit).min() > 0  # no validation image is a training image
    assert torch.cdist(held, test).min() > 0  # nor a test image: they are held-out training images
    assert torch.cdist(held, train).min() == 0


def test_bad_settings_are_one_clear_error(tiny_stream):
    with pytest.raises(CasdapError, match="16 to 64 pixels"):
        build_benchmark(load_config(DOMAINS_YAML, ["DATA.CROPSIZE", "224"]))
    with pytest.raises(CasdapError, match="divide into the tasks"):
        build_benchmark(load_config(DOMAINS_YAML, ["CONTINUAL.N_TASKS", "10"]))
    with pytest.raises(CasdapError, match="fewer than 200 training"):
        render_domain_stream(0, 200, 20)


def test_a_tiny_cas_dap_run_end_to_end(tmp_path, tiny_stream):
    from casdap.cli import main

    out = tmp_path / "run"
    assert main(["cl", "--config-file", str(DOMAINS_YAML), "--output_dir", str(out), "--no-progress",
                 "MODEL.RANDOM_INIT", "True", "MODEL.MODEL_ROOT", str(tmp_path / "none"), "DEVICE", "cpu",
                 "SOLVER.TOTAL_EPOCH", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "embedded_domains" and metrics["tasks_done"] == 5 and metrics["finished"]
    assert len(metrics["acc_matrix"]) == 5 and 0 <= metrics["wtp"] <= 1 and 0 <= metrics["tii"] <= 1

"""The embedded_shift stream: seeded renders, classes disjoint from the backbone's pretraining, the
benchmark's shape, clear errors. Tiny image counts; the measured difficulty is in docs/embedded_shift.md."""

import pytest
import torch
from conftest import ROOT

from casdap.config import load_config
from casdap.continual.benchmarks import build_benchmark
from casdap.continual.runner import EMBEDDED_DATASETS, ensure_embedded_backbone
from casdap.data import glyph_stream
from casdap.data.glyph_stream import (
    SHIFT_TASKS,
    describe_shift_stream,
    render_shift_stream,
    shape_similarity,
    shift_characters,
)
from casdap.data.glyphs import GLYPH_SETS, glyph_characters, is_digit_like
from casdap.errors import CasdapError
from casdap.pretrain.sources import SOURCES
from casdap.pretrain.train import DEFAULT_PROTOCOL, _shift_classes_seen

SHIFT_YAML = ROOT / "configs" / "dap" / "embedded_shift.yaml"


@pytest.fixture
def tiny_stream(monkeypatch):
    """build_benchmark renders 4 training and 2 test images per class."""
    monkeypatch.setattr(glyph_stream, "TRAIN_PER_CLASS", 4)
    monkeypatch.setattr(glyph_stream, "TEST_PER_CLASS", 2)


def test_same_seed_same_tensors_other_seed_differs():
    a = render_shift_stream(0, 2, 1)
    render_shift_stream.cache_clear()  # a fresh render, not the cached tensors
    b = render_shift_stream(0, 2, 1)
    c = render_shift_stream(1, 2, 1)
    assert a[0] is not b[0]
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[2], c[2])
    assert torch.equal(a[1], c[1])  # same labels, other images


def test_classes_disjoint_from_everything_the_backbone_can_be_pretrained_on():
    stream = shift_characters()
    assert len(stream) == len(set(stream)) == 100
    every_glyph = set(glyph_characters(tuple(GLYPH_SETS)))
    assert not set(stream) & every_glyph
    assert not any(is_digit_like(c) for c in stream)
    # the default protocol's source (what model/embedded/rcvit_xs.pth saw), as its sidecar records it
    assert DEFAULT_PROTOCOL["source"] in SOURCES
    assert _shift_classes_seen(glyph_characters(("latin", "greek", "symbols"))) == []
    assert _shift_classes_seen(["glyphs:latin/A", f"glyphs:x/{stream[5]}"]) == [stream[5]]
    # and no stream character is a look-alike of a pretraining class or a digit (raster correlation
    # over rotations/mirrors; clear look-alikes such as Օ~O or ☓~X score 0.94-1.00)
    worst = shape_similarity()[0]
    assert worst[0] <= 0.82, worst
    assert shape_similarity(["Օ", "☓"])[-1][0] > 0.9


def test_every_character_renders_in_several_fonts():
    fonts = describe_shift_stream()["fonts_per_class"]
    assert len(fonts) == 100 and min(len(f) for f in fonts.values()) >= glyph_stream.MIN_FONTS


def test_train_and_test_are_separate_renders():
    x_tr, y_tr, x_te, y_te = render_shift_stream(0, 3, 2)
    assert x_tr.shape == (300, 3, 32, 32) and x_te.shape == (200, 3, 32, 32)
    assert x_tr.min() >= 0 and x_tr.max() <= 1
    assert torch.cdist(x_te.flatten(1), x_tr.flatten(1)).min() > 1.0


def test_benchmark_is_ten_tasks_of_ten_classes(tiny_stream):
    cfg = load_config(SHIFT_YAML)
    bench = build_benchmark(cfg)
    assert bench.dataset == "embedded_shift" and bench.num_classes == 100
    assert bench.task_classes == [list(range(10 * t, 10 * t + 10)) for t in range(10)]
    assert bench.train_sizes == [40] * 10 and bench.test_sizes == [20] * 10
    assert bench.class_names[0].startswith(f"{SHIFT_TASKS[0][0]}:{SHIFT_TASKS[0][1][0]}")
    x, y = bench.scenario.train_stream[0].dataset[0][:2]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    raw_x, raw_y = render_shift_stream(0, 4, 2)[:2]
    normalised = (raw_x[raw_y == y] - 0.5) / 0.25  # the backbone's input scale
    assert any(torch.allclose(x, r) for r in normalised)
    half = build_benchmark(load_config(SHIFT_YAML, ["DATA.PERCENTAGE", "0.5", "SEED", "1"]))
    assert half.train_sizes == [20] * 10 and half.test_sizes == [20] * 10


def test_bad_settings_are_one_clear_error(tiny_stream):
    with pytest.raises(CasdapError, match="16 to 64 pixels"):
        build_benchmark(load_config(SHIFT_YAML, ["DATA.CROPSIZE", "224"]))
    with pytest.raises(CasdapError, match="divide into the tasks"):
        build_benchmark(load_config(SHIFT_YAML, ["CONTINUAL.N_TASKS", "5"]))
    with pytest.raises(CasdapError, match="training images per class"):
        render_shift_stream(0, 0, 1)


def test_uses_the_embedded_backbone(tmp_path):
    assert "embedded_shift" in EMBEDDED_DATASETS
    cfg = load_config(SHIFT_YAML, ["MODEL.MODEL_ROOT", str(tmp_path)])
    (tmp_path / "rcvit_xs.pth").write_bytes(b"")  # present: reused, never pretrained again
    assert ensure_embedded_backbone(cfg) == tmp_path / "rcvit_xs.pth"
    digits = load_config(ROOT / "configs" / "dap" / "digits.yaml")
    assert load_config(SHIFT_YAML).MODEL.MODEL_ROOT == digits.MODEL.MODEL_ROOT  # the same backbone file


def test_pretraining_a_missing_backbone_leaves_the_run_random_streams_alone(tmp_path, monkeypatch):
    """The first run on a fresh checkout pretrains in its own process; its seeded streams must go on
    as if the file had been there, or its results differ from every later run with the same seed."""
    import random

    import numpy as np

    from casdap.pretrain import train as pretrain

    def fake_pretrain(model_name, path, **protocol):  # draws from every global stream, as training does
        torch.manual_seed(123)
        torch.rand(3), np.random.rand(3), random.random()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")

    monkeypatch.setattr(pretrain, "pretrain_backbone", fake_pretrain)
    cfg = load_config(SHIFT_YAML, ["MODEL.MODEL_ROOT", str(tmp_path / "fresh")])
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    ensure_embedded_backbone(cfg)
    after = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    ensure_embedded_backbone(cfg)  # the file exists now: nothing is pretrained
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert (tmp_path / "fresh" / "rcvit_xs.pth").is_file()
    assert torch.equal(after[0], again[0]) and np.array_equal(after[1], again[1]) and after[2] == again[2]


def test_the_command_pretrains_a_missing_backbone_and_run_continual_never_does(tmp_path, monkeypatch):
    from casdap.cli import main
    from casdap.continual.runner import run_continual
    from casdap.pretrain import train as pretrain

    made = []

    def fake_pretrain(model_name, path, **protocol):
        made.append(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")

    monkeypatch.setattr(pretrain, "pretrain_backbone", fake_pretrain)
    root, digits = tmp_path / "fresh", ROOT / "configs" / "dap" / "digits.yaml"  # embedded too, quicker to build
    with pytest.raises(CasdapError):  # no backbone file, and no pretraining inside the run
        run_continual(load_config(digits, ["MODEL.MODEL_ROOT", str(root), "OUTPUT_DIR", str(tmp_path / "a")]),
                      progress=False)
    assert made == []
    # the command makes the file first (the empty fake then fails to load: one error line)
    assert main(["cl", "--config-file", str(digits), "--output_dir", str(tmp_path / "b"),
                 "MODEL.MODEL_ROOT", str(root)]) == 2
    assert made == [root / "rcvit_xs.pth"]


def test_a_cas_dap_run_folder_stays_within_what_it_must_hold(tmp_path, tiny_stream):
    """The shipped CAS-DAP setting on the stream (2 tasks of 50 classes, 4 training images a class,
    1 epoch: the stored tensors' shapes are set by the 100 classes, not by the data or the epochs)
    keeps one checkpoint, within what resuming and export need, so growth shows here, not as a full disk.

    The checkpoint holds, with K = 100 classes and C = 220 pooled features (rcvit_xs):
      the Gaussian task predictor's per-class precisions, K x C x C float32 = 19.36 MB (no outer
        products of the query: each class's Gaussian is fixed when its task ends);
      the LDA head's within-class scatter of the prompted features, C x C float64 = 0.39 MB, and the
        sums of both statistics, 2 x K x C float64 = 0.35 MB;
      every parameter once, in float32: 4 x total_params (metrics.json; 3.14 M here, 12.5 MB);
      1 MB for the rest: BatchNorm statistics, counts, the random states, the zip records of ~600 tensors.
    The shipped run (10 tasks of 10 classes, 4.34 M parameters) keeps one checkpoint of 38.5 MB by the
    same count (it kept 10 of 115.0 MB, 1.15 GB, when every class's outer products were kept and
    every task's checkpoint)."""
    from casdap.continual.runner import run_continual

    out = tmp_path / "run"
    cfg = load_config(SHIFT_YAML, [
        "MODEL.RANDOM_INIT", "True", "MODEL.MODEL_ROOT", str(tmp_path / "none"), "DEVICE", "cpu",
        "OUTPUT_DIR", str(out), "SOLVER.TOTAL_EPOCH", "1", "CONTINUAL.INITIAL", "50", "CONTINUAL.INCREMENT", "50",
        "CONTINUAL.N_TASKS", "2", "MODEL.DAP.NUM_TASKS_FOR_EMB", "2", "MODEL.DAP.PROMPT_POOL", "2",
    ])
    metrics = run_continual(cfg, progress=False).metrics
    k, c, mb = 100, 220, 1_000_000
    checkpoint_budget = k * c * c * 4 + c * c * 8 + 2 * k * c * 8 + 4 * metrics["total_params"] + 1 * mb
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["task_001.pth"]  # the newest only: what resume and export read
    sizes = [p.stat().st_size for p in checkpoints]
    assert max(sizes) <= checkpoint_budget, (sizes, checkpoint_budget)
    state = torch.load(checkpoints[-1], weights_only=True)["model"]
    assert not [n for n in state if n.endswith("_outer")] and state["prompted_scatter"].shape == (c, c)
    # everything else (config, metrics, accuracy matrix, final results, TensorBoard events): under 1 MB
    folder = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert folder <= len(checkpoints) * checkpoint_budget + 1 * mb, (folder, checkpoint_budget)

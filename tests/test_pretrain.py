import json

import pytest
import torch

from casdap import create_model, load_checkpoint
from casdap.checkpoint import read_checkpoint
from casdap.cli import main
from casdap.data.glyphs import GLYPH_SETS, glyph_characters, is_digit_like
from casdap.errors import CasdapError
from casdap.pretrain import build_source, pretrain_backbone, sidecar_path
from casdap.pretrain.evaluate import cosine_geometry, nearest_mean_accuracy
from casdap.pretrain.sources import to_digits_look

ALL_SETS = tuple(GLYPH_SETS)


def test_glyph_classes_contain_no_digit_like_character():
    chars = glyph_characters(ALL_SETS)
    assert len(chars) == len(set(chars)) > 100
    assert not set("0123456789") & set(chars)
    assert not [c for c in chars if is_digit_like(c)]
    assert all(is_digit_like(c) for c in "7²½Ⅻ٣")
    assert not any(is_digit_like(c) for c in "AoOlIZSgqαΩ@")
    with pytest.raises(CasdapError, match="unknown glyph set"):
        glyph_characters(("latin", "digits"))


def test_glyph_source_images_have_the_digits_look():
    src = build_source("letters", images_per_class=3, seed=0)
    x, y = src.sample(epoch=0)
    assert src.num_classes == 52 and src.class_names[:3] == ["A", "B", "C"]
    assert x.shape == (52 * 3, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(torch.bincount(y), torch.full((52,), 3))
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey as RGB, like the digits
    assert (x.flatten(1).amax(1) > 0.5).all()  # every image has ink
    # same seed and epoch -> same images; a new epoch -> new images
    x2, _ = build_source("letters", images_per_class=3, seed=0).sample(epoch=0)
    x3, _ = src.sample(epoch=1)
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    # different characters look different: mean image of 'O' vs 'I'
    o, i = x[y == src.class_names.index("O")].mean(0), x[y == src.class_names.index("I")].mean(0)
    assert (o - i).abs().mean() > 0.05


def test_digits_look_is_counts_of_4x4_blocks():
    bitmaps = torch.zeros(2, 32, 32)
    bitmaps[0, :4, :4] = 1  # one full block
    bitmaps[1, :2, :4] = 1  # half a block
    small = to_digits_look(bitmaps, image_size=8)
    assert small.shape == (2, 3, 8, 8)
    assert small[0, 0, 0, 0] == 1.0 and small[1, 0, 0, 0] == 0.5 and small[:, :, 1:, 1:].sum() == 0
    assert torch.allclose(small * 16, (small * 16).round())  # values are counts 0..16 over 16


def test_fractal_source_shapes_and_determinism():
    src = build_source("fractals", images_per_class=2, seed=3)
    x, y = src.sample(0)
    assert src.num_classes == 100 and x.shape == (200, 3, 32, 32) and y.max() == 99
    assert (x.flatten(1).amax(1) > 0).all()
    assert torch.equal(x, build_source("fractals", images_per_class=2, seed=3).sample(0)[0])
    assert not torch.equal(x, build_source("fractals", images_per_class=2, seed=4).sample(0)[0])


def test_unknown_source_and_bad_counts_are_refused():
    with pytest.raises(CasdapError, match="unknown pretraining source 'digits'"):
        build_source("digits", 4, 0)
    with pytest.raises(CasdapError, match="at least 1"):
        build_source("letters", 0, 0)


def test_nearest_mean_and_cosine_geometry():
    means = torch.eye(3) * 5
    train_y = torch.arange(3).repeat_interleave(4)
    test_y = torch.tensor([0, 1, 2, 2])
    train_f = means[train_y] + 0.1 * torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    test_f = means[test_y]
    assert nearest_mean_accuracy(train_f, train_y, test_f, test_y, "euclidean") == 1.0
    assert nearest_mean_accuracy(train_f, train_y, test_f, torch.tensor([1, 1, 2, 2]), "cosine") == 0.75
    geo = cosine_geometry(train_f, train_y, test_f, test_y)
    assert abs(geo["mean_cosine"] - 2 / 12) < 1e-4  # 2 of the 12 ordered pairs coincide, the rest are orthogonal
    assert geo["task_margin"] > 0.9


def test_tiny_pretraining_writes_loadable_checkpoint_and_sidecar(tmp_path):
    out = tmp_path / "model" / "rcvit_xs.pth"
    side = pretrain_backbone("rcvit_xs", out, epochs=3, seed=0, source="letters", images_per_class=5,
                             batch_size=52, lr=3e-3, warmup_epochs=0, progress=False)
    # the checkpoint: official layout, single head over the 52 letters
    sd = read_checkpoint(out)["model"]
    assert sd["head.weight"].shape == (52, 220) and not any(k.startswith("dist_head") for k in sd)
    same = create_model("rcvit_xs", num_classes=52, distillation=False)
    load_checkpoint(same, out)  # strict
    digits_model = create_model("rcvit_xs", num_classes=10)
    report = load_checkpoint(digits_model, out, finetune=True)
    assert "head.weight" in report.dropped and "dist_head.weight" in report.missing
    assert torch.equal(digits_model.state_dict()["patch_embed.0.weight"], sd["patch_embed.0.weight"])
    # the sidecar says exactly what was seen
    on_disk = json.loads(sidecar_path(out).read_text())
    assert on_disk == json.loads(json.dumps(side))
    saw = on_disk["what_the_backbone_saw"]
    assert saw["source"] == "glyphs:latin" and saw["num_classes"] == 52 and len(saw["class_names"]) == 52
    assert not [c for c in saw["class_names"] if is_digit_like(c)]
    assert on_disk["images_seen"] == 3 * 52 * 5 and on_disk["epochs"] == 3 and on_disk["seed"] == 0
    assert on_disk["digits_seen"] is False and on_disk["wall_time_s"] > 0
    assert on_disk["embedded_shift_classes_seen"] == []  # none of the embedded_shift stream's classes
    assert on_disk["input"]["mean"] == [0.5] * 3 and on_disk["input"]["std"] == [0.25] * 3
    losses = [e["train_loss"] for e in on_disk["log"]]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.3, losses
    # a fresh network does not give the saved features: the weights really were trained
    fresh = create_model("rcvit_xs", num_classes=10).eval()
    digits_model.eval()
    probe = torch.rand(4, 3, 32, 32)
    assert not torch.allclose(fresh.forward_pooled(probe), digits_model.forward_pooled(probe))
    # a new head over the saved backbone (finetune=True) sees exactly the features the checkpoint's own
    # model sees: every backbone weight and BatchNorm statistic carried over, nothing but the head dropped
    assert torch.equal(same.eval().forward_pooled(probe), digits_model.forward_pooled(probe))


def test_cli_pretrain_runs_and_evaluates(tmp_path, capsys):
    out = tmp_path / "rcvit_xs.pth"
    rc = main(["pretrain", "--source", "letters", "--epochs", "1", "--images-per-class", "2", "--out", str(out),
               "--quiet", "--evaluate"])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file() and sidecar_path(out).is_file()
    assert "52 classes, 104 images, 1 epochs" in text and "ncm_acc" in text and "task_acc" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "expected a positive integer, got 0"),
        (["--images-per-class", "many"], "expected a positive integer, got 'many'"),
        (["--source", "digits"], "invalid choice: 'digits'"),
        (["--model", "rcvit_xx"], "unknown model 'rcvit_xx'"),
        (["--out", "weights.pt"], "should end in .pth"),
        (["--lr", "0"], "learning rate must be positive"),
        (["--out", "blocker/rcvit_xs.pth"], "'blocker' is a file, not a directory"),
        (["--out", "model"], "should end in .pth"),
    ],
)
def test_cli_rejects_bad_input(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("not a directory")
    try:
        rc = main(["pretrain", "--quiet", *argv])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]  # nothing written


def test_source_names_of_the_command_line_are_the_sources():
    from casdap.pretrain.protocol import DEFAULT_PROTOCOL, SOURCE_NAMES
    from casdap.pretrain.sources import SOURCES

    assert tuple(SOURCES) == SOURCE_NAMES and DEFAULT_PROTOCOL["source"] in SOURCES


def test_glyph_stream_and_pretraining_sources_share_glyphs_without_importing_each_other():
    import subprocess
    import sys

    probes = [
        "import sys, casdap.data.glyph_stream; assert 'casdap.pretrain.sources' not in sys.modules; "
        "import casdap.data.glyphs as g, casdap.pretrain.sources as s; assert s.glyph_characters is g.glyph_characters",
        "import sys, casdap.pretrain.sources; assert 'casdap.data.glyph_stream' not in sys.modules",
    ]
    for code in probes:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-1500:]

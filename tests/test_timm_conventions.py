"""The CAS-ViT variants as timm models: pretrained configs, Model Zoo files through timm's own
pretrained path, and timm's feature-extraction interface."""

import argparse

import pytest
import timm
import torch
from synthetic_weights import read_manifest, synthetic_state_dict
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config

import casdap
from casdap.checkpoint import save_checkpoint

VARIANTS = ["rcvit_xs", "rcvit_s", "rcvit_m", "rcvit_t"]
STAGES_64x96 = [(48, 16, 24), (56, 8, 12), (112, 4, 6), (220, 2, 3)]  # rcvit_xs, strides 4 to 32


def _zoo_file(official_fixture, path, dense_norms=False):
    """rcvit_xs random weights as the Model Zoo stores them: under ``model`` with the DDP prefix,
    beside the training ``args`` and ``epoch``; optionally with the dense-prediction variant's norms."""
    sd = synthetic_state_dict(read_manifest(official_fixture / "manifest_rcvit_xs.json"), seed=0)
    if dense_norms:
        for i, dim in zip((0, 2, 4, 6), (48, 56, 112, 220)):
            sd[f"norm{i}.weight"], sd[f"norm{i}.bias"] = torch.ones(dim), torch.zeros(dim)
    obj = {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 299, "args": argparse.Namespace(lr=6e-3)}
    return save_checkpoint(obj, path)


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("dense_norms", [False, True], ids=["classification", "dense-norms"])
def test_model_zoo_file_through_timm_equals_the_repo_loader(official_fixture, tmp_path, dense_norms):
    path = _zoo_file(official_fixture, tmp_path / "rcvit_xs.pth", dense_norms)
    via_timm = timm.create_model("rcvit_xs", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    ours = casdap.create_model("rcvit_xs")
    casdap.load_checkpoint(ours, path)
    ours.eval()
    assert _same_state(via_timm, ours)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(via_timm(x), ours(x))
        assert torch.equal(via_timm.forward_features(x), ours.forward_features(x))


def test_model_zoo_file_with_a_new_class_count_keeps_fresh_heads(official_fixture, tmp_path):
    path = _zoo_file(official_fixture, tmp_path / "rcvit_xs.pth")
    torch.manual_seed(0)
    overlay = dict(file=str(path))
    via_timm = timm.create_model("rcvit_xs", pretrained=True, num_classes=10, pretrained_cfg_overlay=overlay)
    torch.manual_seed(0)
    ours = casdap.create_model("rcvit_xs", num_classes=10)
    report = casdap.load_checkpoint(ours, path, finetune=True)
    assert sorted(report.dropped) == ["dist_head.bias", "dist_head.weight", "head.bias", "head.weight"]
    assert via_timm.head.out_features == 10 and _same_state(via_timm, ours)


def test_pretrained_without_a_file_says_how_to_give_one(tmp_path):
    with pytest.raises(ValueError, match="pretrained_cfg_overlay=dict\\(file="):
        timm.create_model("rcvit_xs", pretrained=True)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        timm.create_model("rcvit_xs", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "nope.pth")))


@pytest.mark.parametrize("name", VARIANTS)
def test_data_config_is_the_imagenet_one(name):
    for model in (casdap.create_model(name, num_classes=10), timm.create_model(name)):
        cfg = resolve_data_config({}, model=model)
        assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"
        assert cfg["mean"] == IMAGENET_DEFAULT_MEAN and cfg["std"] == IMAGENET_DEFAULT_STD
        assert cfg["crop_pct"] == pytest.approx(224 / 256)
    assert model.pretrained_cfg["first_conv"] == "patch_embed.0"
    assert tuple(model.pretrained_cfg["classifier"]) == ("head", "dist_head")
    assert model.pretrained_cfg["num_classes"] == 1000


def test_forward_intermediates_follows_timm():
    model = casdap.create_model("rcvit_xs").eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    shapes = lambda feats: [tuple(f.shape[1:]) for f in feats]  # noqa: E731
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x)) and shapes(feats) == STAGES_64x96
        assert all(f.shape[0] == 2 for f in feats)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert shapes(last_two) == STAGES_64x96[2:] and torch.equal(last_two[-1], feats[-1])
        picked = model.forward_intermediates(x, indices=[0, -2], intermediates_only=True)
        assert shapes(picked) == [STAGES_64x96[0], STAGES_64x96[2]] and torch.equal(picked[0], feats[0])
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)
        assert torch.equal(normed[0], final)
        early, only = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert torch.equal(early, feats[1]) and torch.equal(only[0], feats[1])
        with pytest.raises(ValueError, match="NCHW"):
            model.forward_intermediates(x, output_fmt="NHWC")


def test_features_only_and_pruning():
    x = torch.randn(1, 3, 64, 96)
    features = timm.create_model("rcvit_xs", features_only=True, out_indices=(1, 2)).eval()
    assert features.feature_info.channels() == [56, 112] and features.feature_info.reduction() == [8, 16]
    with torch.no_grad():
        assert [tuple(f.shape[1:]) for f in features(x)] == STAGES_64x96[1:3]
    model = casdap.create_model("rcvit_xs").eval()
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        assert model.prune_intermediate_layers([0, 1]) == [0, 1]
        got = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert len(model.stages) == 2 and model.num_features == 56 and isinstance(model.head, torch.nn.Identity)
    assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_a_model_file_registering_the_same_names_leaves_ours_in_timm(tmp_path):
    """``casdap bench --reference`` imports a model file whose builders register with timm under
    our names; afterwards timm builds our model, with its pretrained config, again."""
    from casdap.bench import load_reference
    from casdap.models.casvit import CASViT

    path = tmp_path / "rcvit.py"
    path.write_text(
        "from timm.models import register_model\n"
        "from casdap.models.casvit import CASViT, VARIANTS\n\n"
        "class RCViT(CASViT):\n    pass\n\n"
        "@register_model\ndef rcvit_xs(**kwargs):\n    return RCViT(*VARIANTS['rcvit_xs'], **kwargs)\n"
    )
    reference = load_reference(path, "rcvit_xs", casdap.create_model("rcvit_xs"))
    assert type(reference).__name__ == "RCViT"
    model = timm.create_model("rcvit_xs")
    assert type(model) is CASViT and model.pretrained_cfg["tag"] == "in1k"
    assert resolve_data_config({}, model=model)["crop_pct"] == pytest.approx(0.875)

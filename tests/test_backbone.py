import pytest
import timm
import torch
from synthetic_weights import manifest_of, read_manifest, synthetic_state_dict

import casdap
from casdap.checkpoint import save_checkpoint

VARIANTS = ["rcvit_xs", "rcvit_s", "rcvit_m", "rcvit_t"]


@pytest.mark.parametrize(
    "name,millions", [("rcvit_xs", 3.20), ("rcvit_s", 5.76), ("rcvit_m", 12.42), ("rcvit_t", 21.76)]
)
def test_parameter_counts(name, millions):
    model = casdap.create_model(name, num_classes=1000)
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6, 2) == millions


def test_timm_registration_after_import():
    model = timm.create_model("rcvit_xs", num_classes=100, drop_path_rate=0.1)
    assert model.head.out_features == 100 and model.dist_head.out_features == 100
    assert set(VARIANTS) <= set(timm.list_models("rcvit_*"))


def test_unknown_model_lists_valid_names():
    with pytest.raises(casdap.CasdapError, match="rcvit_xs.*Did you mean 'rcvit_xs'"):
        casdap.create_model("rcvit_x")


@pytest.mark.parametrize("name", VARIANTS)
def test_state_dict_layout_matches_official_manifest(name, official_fixture):
    official = read_manifest(official_fixture / f"manifest_{name}.json")
    ours = manifest_of(casdap.create_model(name, num_classes=1000))
    assert [(k, list(s), d) for k, s, d in ours] == [(k, list(s), d) for k, s, d in official]


@pytest.mark.parametrize("name", VARIANTS)
def test_official_checkpoint_parity(name, official_fixture, tmp_path):
    """Official layout with DDP prefix, saved and read back through load_checkpoint, reproduces
    the official model's outputs at 224 and 32 pixels."""
    sd = synthetic_state_dict(read_manifest(official_fixture / f"manifest_{name}.json"), seed=0)
    path = save_checkpoint({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 299}, tmp_path / "w.pth")
    model = casdap.create_model(name, num_classes=1000)
    report = casdap.load_checkpoint(model, path)
    assert report.source_key == "model" and not report.missing and not report.unexpected
    expected = torch.load(official_fixture / f"expected_{name}_seed0.pt", weights_only=True)
    model.eval()
    with torch.no_grad():
        for res in (224, 32):
            x = expected[f"input_{res}"]
            feats = model.forward_pooled(x)
            logits = model(x)
            assert (feats - expected[f"features_{res}"]).abs().max() < 1e-4
            assert (logits - expected[f"logits_{res}"]).abs().max() < 1e-4


def test_recipe_is_seed_general(official_fixture):
    """The recipe is a function of (layout, seed): the manifest and the model's own layout give
    identical weights for any seed, and different seeds give different networks."""
    official = read_manifest(official_fixture / "manifest_rcvit_xs.json")
    model = casdap.create_model("rcvit_xs", num_classes=1000).eval()
    for seed in (1, 7):
        a = synthetic_state_dict(official, seed)
        b = synthetic_state_dict(manifest_of(model), seed)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    outs = []
    for seed in (0, 1):
        model.load_state_dict(synthetic_state_dict(official, seed), strict=True)
        with torch.no_grad():
            outs.append(model(x))
    assert torch.isfinite(outs[1]).all() and not torch.allclose(outs[0], outs[1])
    g = torch.Generator().manual_seed(1)
    first_conv = 0.5 * torch.randn(24, 3, 3, 3, generator=g) / 27**0.5
    assert torch.equal(synthetic_state_dict(official, 1)["patch_embed.0.weight"], first_conv)


def test_distillation_heads_train_and_eval():
    model = casdap.create_model("rcvit_xs", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    out, dist = model(x)
    assert out.shape == dist.shape == (2, 10)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        avg = model.forward_head(feats)
        assert torch.allclose(avg, (model.head(model.pool(feats)) + model.dist_head(model.pool(feats))) / 2)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 220)
    plain = casdap.create_model("rcvit_xs", num_classes=10, distillation=False).train()
    assert plain(x).shape == (2, 10) and "dist_head.weight" not in plain.state_dict()


def test_multiscale_intermediates_and_any_resolution():
    model = casdap.create_model("rcvit_xs", num_classes=0).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, 64, 96), intermediates_only=True)
        assert [tuple(f.shape[1:]) for f in feats] == [(48, 16, 24), (56, 8, 12), (112, 4, 6), (220, 2, 3)]
        assert model(torch.randn(1, 3, 40, 40)).shape == (1, 220)


def test_drop_path_is_stochastic_in_training_only():
    model = casdap.create_model("rcvit_xs", num_classes=10, drop_path_rate=0.5, distillation=False)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_a_pass_split_at_any_stage_equals_the_whole_pass():
    """forward_to_stage then forward_from_stage (the prompted models' split), and a block_fn that only
    calls the block, give the pooled features of forward_pooled exactly; block_fn sees every block once."""
    torch.manual_seed(0)
    model = casdap.create_model("rcvit_xs", num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        whole = model.forward_pooled(x)
        for stage in range(len(model.layers)):
            seen: list[tuple[int, int]] = []

            def block_fn(s, i, block, h, seen=seen):
                seen.append((s, i))
                return block(h)

            h = model.forward_to_stage(x, stage)
            assert torch.equal(model.forward_from_stage(h, stage), whole)
            assert torch.equal(model.forward_from_stage(h, stage, block_fn), whole)
            assert seen == [(s, i) for s in range(stage, len(model.layers)) for i in range(model.layers[s])]

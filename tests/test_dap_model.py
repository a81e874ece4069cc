import logging

import pytest
import torch

import casdap
from casdap.config import load_config
from casdap.models.build import build_backbone, build_dap_model
from casdap.models.dap import CASDAP, MASKED_LOGIT, restrict_logits

INJECTIONS = ["kv", "pool", "attn", "attn+mix"]  # "+mix": with the channel-mixing generator


def _backbone(seed: int = 0):
    torch.manual_seed(seed)
    bb = casdap.create_model("rcvit_xs", num_classes=0, distillation=False)
    # non-trivial BN statistics, so "unchanged" and "equal to the backbone" mean something
    with torch.no_grad():
        for m in bb.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return bb


def _model(injection="kv", stages=(2, 3), num_tasks=5, seed=0):
    """``injection`` with options: ``"attn+mix"`` (channel map), ``"attn+mix+task"`` (per-task maps)."""
    injection, *options = injection.split("+")
    return CASDAP(_backbone(seed), num_classes=10, num_tasks=num_tasks, num_tokens=4, task_emb_dim=8,
                  stages=stages, injection=injection, channel_mix="mix" in options, keys_per_task=1,
                  task_generators="task" in options)


def _train_steps(model, task_id, steps=3, size=32, lr=0.05):
    opt = torch.optim.Adam(model.trainable_parameters(), lr=lr)
    model.train()
    g = torch.Generator().manual_seed(task_id)
    for _ in range(steps):
        x = torch.randn(4, 3, size, size, generator=g)
        y = torch.randint(0, 10, (4,), generator=g)
        out = model(x, task_id=task_id)
        loss = torch.nn.functional.cross_entropy(out.logits, y) - 0.1 * out.pull
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _snapshot(named):
    return {n: p.detach().clone() for n, p in named}


@pytest.mark.parametrize("injection", [*INJECTIONS, "attn+mix+task"])
def test_only_prompt_parts_and_head_train_and_backbone_is_bitwise_unchanged(injection):
    model = _model(injection)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("dap_", "head.")) for n in trainable)
    assert {id(p) for p in model.trainable_parameters()} == {
        id(p) for n, p in model.named_parameters() if n in trainable
    }
    start = _snapshot(model.named_parameters())
    _train_steps(model, task_id=1)
    assert model.training and not model.backbone.training
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), f"backbone tensor {k} changed"
    assert all(p.grad is None for p in model.backbone.parameters())
    # every trainable tensor (generators, FiLM, gates, keys, task embedding, head) was wired in
    # and moved; the zero-initialised gates open first, then the token-axis maps follow
    for n, p in model.named_parameters():
        if n in trainable:
            assert not torch.equal(p, start[n]), f"{n} did not train"


def test_backbone_stays_in_eval_mode_even_if_switched():
    model = _model()
    model.train()
    model.backbone.train()  # a careless caller
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model(torch.randn(2, 3, 32, 32), task_id=0)
    assert not model.backbone.training
    assert all(torch.equal(v, before[k]) for k, v in model.backbone.state_dict().items())


@pytest.mark.parametrize("injection", ["kv", "attn+mix"])
def test_freeze_token_axis_stops_structure_while_film_and_keys_train(injection):
    model = _train_steps(_model(injection), task_id=0)
    model.freeze_token_axis()
    structure = {n for n, _ in model.named_parameters()
                 if n.endswith(("token_map.weight", "token_map.bias", "channel_mix.weight", "channel_mix.bias",
                                "gate_a", "gate_b"))}
    assert ("+mix" in injection) == any("channel_mix" in n for n in structure)
    assert structure
    assert not ({id(p) for n, p in model.named_parameters() if n in structure}
                & {id(p) for p in model.trainable_parameters()})
    start = _snapshot(model.named_parameters())
    _train_steps(model, task_id=1)
    for n, p in model.named_parameters():
        if n in structure:
            assert torch.equal(p, start[n]), f"{n} changed after freeze_token_axis"
    for n in ("dap_task_predictor.keys", "dap_task_emb.weight", "dap_blocks.3.0.generator.film.weight", "head.weight"):
        assert not torch.equal(dict(model.named_parameters())[n], start[n]), f"{n} stopped training"


@pytest.mark.parametrize("injection", ["kv+task", "attn+mix+task"])
def test_per_task_maps_train_only_the_trained_tasks_rows(injection):
    """With per-task generator maps a later task leaves an earlier task's maps bitwise unchanged,
    and freezing the shared structure after the first task leaves the per-task maps training."""
    model = _train_steps(_model(injection), task_id=0)
    model.freeze_token_axis()
    maps = {n: p for n, p in model.named_parameters() if ".task_token_map." in n or ".task_channel_mix." in n}
    assert ("+mix" in injection) == any(".task_channel_mix." in n for n in maps)
    assert maps and all(p.requires_grad for p in maps.values())
    start = _snapshot(maps.items())
    _train_steps(model, task_id=1)
    for n, p in maps.items():
        assert torch.equal(p[0], start[n][0]), f"{n}: task 0's maps changed while task 1 trained"
        assert torch.equal(p[2:], start[n][2:]), f"{n}: an untrained task's maps changed"
    assert any(not torch.equal(p[1], start[n][1]) for n, p in maps.items()), "task 1's maps did not train"


@pytest.mark.parametrize("injection", [*INJECTIONS, "attn+mix+task"])
def test_initial_model_is_exactly_the_frozen_backbone(injection):
    """Tolerance 0: with the gates at their initial zeros every prompt term adds exactly 0.0."""
    model = _model(injection, stages=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        # trained-looking FiLM, keys and token maps: only the zero gates guarantee equivalence
        for n, p in model.named_parameters():
            if n.startswith("dap_") and "gate" not in n:
                p.normal_()
        for size in (32, 224):
            x = torch.randn(2, 3, size, size)
            ref = model.backbone.forward_pooled(x)
            out = model(x)
            assert torch.equal(model.forward_prompted(x, out.key_idx), ref)
            assert torch.equal(out.logits, model.head(ref))
        # the check can fail: open the gates and the prompts change the features
        for block in model._prompted_blocks():
            if block.gate_a is not None:
                block.gate_a.fill_(0.5)
            block.gate_b.fill_(0.5)
        x = torch.randn(2, 3, 32, 32)
        assert (model.forward_prompted(x, torch.tensor([0, 1])) - model.backbone.forward_pooled(x)).abs().max() > 1e-5


@pytest.mark.parametrize("injection", INJECTIONS)
def test_any_resolution_and_multiscale_batches(injection):
    model = _train_steps(_model(injection), task_id=0, steps=1)
    model.eval()
    with torch.no_grad():
        for size in (32, 64, 224):
            out = model(torch.randn(2, 3, size, size))
            assert out.logits.shape == (2, 10) and out.key_idx.shape == (2,) and out.pull.dim() == 0
            assert torch.isfinite(out.logits).all()
    model.train()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.01)
    for size in (32, 48, 96, 40):  # multi-scale sampler: a new size every batch
        out = model(torch.randn(2, 3, size, size), task_id=1)
        opt.zero_grad()
        (out.logits.logsumexp(1).mean() - out.pull).backward()
        opt.step()
        assert torch.isfinite(out.logits).all()


def _model_with_known_picks(injection="kv"):
    """Keys 0..2 set to the queries of images 0..2, so those images pick keys 0, 1, 2."""
    model = _train_steps(_model(injection), task_id=0, steps=1).eval()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.dap_keys[:3] = model.forward_query(x[:3])
    return model, x


@pytest.mark.parametrize("injection", ["kv", "attn+mix+task"])
def test_per_image_selection_is_independent_of_batch_mates(injection):
    model, x = _model_with_known_picks(injection)
    if "task" in injection:  # every task's maps different, so a wrong task's maps would show
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 3:
                    p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    with torch.no_grad():
        picks = model(x).key_idx
        assert picks[:3].tolist() == [0, 1, 2]
        perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
        shuffled = model(x[perm])
        assert torch.equal(shuffled.key_idx, picks[perm])
        assert torch.allclose(shuffled.logits, model(x).logits[perm], atol=1e-5)
        assert model(x[:1]).key_idx.item() == 0
        alone = torch.cat([model(x[i:i + 1]).logits for i in range(6)])  # one task per batch
        assert torch.allclose(alone, model(x).logits, atol=1e-4)


def test_batch_majority_depends_on_batch_mates_and_oracle_uses_given_id():
    model, x = _model_with_known_picks()
    with torch.no_grad():
        a = model(torch.stack([x[0], x[1], x[1]]), selection="batch_majority").key_idx
        b = model(torch.stack([x[0], x[0], x[2]]), selection="batch_majority").key_idx
        assert a.tolist() == [1, 1, 1] and b.tolist() == [0, 0, 0]
        assert model(x, task_id=4, selection="oracle").key_idx.tolist() == [4] * 6
        ids = torch.tensor([4, 3, 2, 1, 0, 4])
        out = model(x, task_id=ids, selection="oracle")
        assert torch.equal(out.key_idx, ids)
        assert torch.equal(out.logits, model.head(model.forward_prompted(x, ids)))
    with pytest.raises(casdap.CasdapError, match="oracle"):
        model(x, selection="oracle")
    with pytest.raises(casdap.CasdapError, match="num_tasks"):
        model(x, task_id=5)
    with pytest.raises(casdap.CasdapError, match="selection"):
        model(x, selection="majority")


def test_several_keys_per_task_select_the_task_of_the_nearest_key():
    model = CASDAP(_backbone(), num_classes=10, num_tasks=3, num_tokens=4, task_emb_dim=8, keys_per_task=2,
                   stages=(2, 3), injection="kv").eval()
    assert model.dap_keys.shape == (6, model.num_features)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        q = model.forward_query(x)
        model.dap_keys[5] = q[0]  # task 2's second key
        model.dap_keys[2] = q[1]  # task 1's first key
        out = model(x[:2])
        assert out.key_idx.tolist() == [2, 1]
        assert torch.allclose(out.pull, torch.tensor(1.0), atol=1e-5)  # each image is its key's query
        assert torch.equal(out.logits, model.head(model.forward_prompted(x[:2], out.key_idx)))
        sim = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(model.dap_keys, dim=1).t()
        assert torch.allclose(model.task_similarity(q), sim.view(4, 3, 2).amax(2))


def test_pull_moves_only_the_nearest_key_of_the_trained_task():
    model = CASDAP(_backbone(), num_classes=10, num_tasks=3, num_tokens=4, task_emb_dim=8, keys_per_task=2,
                   stages=(2, 3), injection="kv")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        model.dap_keys[3] = model.forward_query(x).mean(0)  # task 1's second key sits by the batch
    out = model(x, task_id=1)
    out.pull.backward()
    moved = model.dap_keys.grad.abs().sum(1) > 0
    assert moved.tolist() == [False, False, False, True, False, False]


def _task_selection_after_pull(keys_per_task: int) -> float:
    """Keys trained by the pull term alone on queries where each task is two far-apart clusters."""
    torch.manual_seed(0)
    model = CASDAP(_backbone(), num_classes=4, num_tasks=2, num_tokens=4, task_emb_dim=8, keys_per_task=keys_per_task,
                   stages=(2, 3), injection="kv")
    dim = model.num_features
    centres = torch.eye(dim)[:4] * 5.0
    centres[3] = (centres[0] + centres[1]) / 2 ** 0.5  # task 1's second cluster sits where task 0's mean points
    cluster_task = [0, 0, 1, 1]

    def sample(c: int, n: int) -> torch.Tensor:
        return centres[c] + 0.3 * torch.randn(n, dim)

    for t in range(2):
        opt = torch.optim.Adam([model.dap_keys], lr=0.05)
        model.seed_keys(t, torch.cat([sample(c, 16) for c in range(4) if cluster_task[c] == t]))
        for _ in range(100):
            q = torch.cat([sample(c, 16) for c in range(4) if cluster_task[c] == t])
            loss = -model.task_similarity(q)[:, t].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        q = torch.cat([sample(c, 50) for c in range(4)])
        truth = torch.tensor(cluster_task).repeat_interleave(50)
        return (model.task_similarity(q).argmax(1) == truth).float().mean().item()


def test_seeded_keys_start_on_different_modes_and_keep_their_norm():
    torch.manual_seed(1)
    model = CASDAP(_backbone(), num_classes=4, num_tasks=2, num_tokens=4, task_emb_dim=8, keys_per_task=3,
                   stages=(2, 3), injection="kv")
    before = model.dap_keys.detach().clone()
    modes = torch.eye(model.num_features)[:3] * 4.0
    batch = torch.cat([modes[i] + 0.1 * torch.randn(20, model.num_features) for i in range(3)])
    model.seed_keys(1, batch)
    keys = model.dap_keys.detach()
    assert torch.equal(keys[:3], before[:3])  # task 0 untouched
    assert torch.allclose(keys[3:].norm(dim=1), before[3:].norm(dim=1))
    nearest_mode = (torch.nn.functional.normalize(keys[3:], dim=1) @ modes.t()).argmax(1)
    assert sorted(nearest_mode.tolist()) == [0, 1, 2]
    single = CASDAP(_backbone(), num_classes=4, num_tasks=2, num_tokens=4, task_emb_dim=8,
                    stages=(2, 3), injection="kv", keys_per_task=1)
    kept = single.dap_keys.detach().clone()
    single.seed_keys(0, batch)
    assert torch.equal(single.dap_keys, kept)  # DAP's single key keeps its random init


def test_several_keys_per_task_learn_tasks_that_one_key_cannot_separate():
    one, two = _task_selection_after_pull(1), _task_selection_after_pull(2)
    assert two > 0.95 and one < 0.8, (one, two)


@pytest.mark.parametrize("stages", [(2, 3), (1, 3)])
def test_shared_prefix_equals_separate_query_and_prompted_passes(stages):
    model = _train_steps(_model(stages=stages), task_id=2, steps=2).eval()
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        out = model(x)
        query = model.forward_query(x)  # a full, separate un-prompted pass
        sim = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(model.dap_keys, dim=1).t()
        assert torch.equal(out.key_idx, sim.argmax(1))
        assert torch.allclose(out.pull, sim.gather(1, out.key_idx[:, None]).mean(), atol=1e-6)
        assert torch.equal(out.logits, model.head(model.forward_prompted(x, out.key_idx)))
        assert not torch.allclose(model.forward_prompted(x, out.key_idx), query, atol=1e-4)  # prompts act


def test_restrict_logits_keeps_selected_task_classes():
    logits = torch.arange(12.0).reshape(2, 6)
    out = restrict_logits(logits, torch.tensor([0, 2]), [[0, 1], [2, 3], [4, 5]])
    assert out[0].argmax() == 1 and out[1].argmax() == 5
    assert torch.equal(out[0, :2], logits[0, :2]) and (out[0, 2:] == MASKED_LOGIT).all()
    assert torch.isfinite(torch.nn.functional.cross_entropy(out, torch.tensor([1, 5])))
    # a wrongly selected task excludes the true class: the batch-mean loss must still be finite
    wrong = restrict_logits(torch.zeros(64, 6), torch.zeros(64, dtype=torch.long),
                            [[0, 1], [2, 3], [4, 5]])
    assert torch.isfinite(torch.nn.functional.cross_entropy(wrong, torch.full((64,), 5)))


def _cfg(**kv):
    base = {"DATA.NUMBER_CLASSES": "10", "CONTINUAL.N_TASKS": "5", "MODEL.DAP.PROMPT_POOL": "5",
            "MODEL.DAP.NUM_TASKS_FOR_EMB": "5"}
    base.update(kv)
    return load_config(None, [t for k, v in base.items() for t in (k, v)])


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory):
    """An official-layout checkpoint (both 1000-class heads) of a seeded rcvit_xs."""
    torch.manual_seed(7)
    src = casdap.create_model("rcvit_xs", num_classes=1000)
    root = tmp_path_factory.mktemp("zoo")
    path = casdap.save_checkpoint({"model": src.state_dict()}, root / "rcvit_xs.pth")
    return path, src.state_dict()


def _assert_loaded(model, ref):
    sd = model.backbone.state_dict()
    assert not any(k.startswith(("head.", "dist_head.")) for k in sd)
    assert all(torch.equal(v, ref[k]) for k, v in sd.items())


def test_build_from_weight_path_and_from_model_root(pretrained_file, tmp_path):
    path, ref = pretrained_file
    model = build_dap_model(_cfg(**{"MODEL.WEIGHT_PATH": str(path), "MODEL.MODEL_ROOT": str(tmp_path)}))
    _assert_loaded(model, ref)
    assert model.num_classes == 10 and model.num_tasks == 5 and model.random_init is False
    assert model.dap_keys.shape[0] == 5  # DAP: one key per task unless KEYS_PER_TASK says otherwise
    model = build_dap_model(_cfg(**{"MODEL.WEIGHT_PATH": str(path), "MODEL.DAP.KEYS_PER_TASK": "3"}))
    assert model.dap_keys.shape[0] == 15 and model.keys_per_task == 3
    model = build_dap_model(_cfg(**{"MODEL.MODEL_ROOT": str(path.parent)}))
    _assert_loaded(model, ref)
    plain = build_backbone(_cfg(**{"MODEL.MODEL_ROOT": str(path.parent)}))  # non-DAP methods: own head
    assert plain.head.out_features == 10 and plain.dist_head is None


def test_build_without_weights_names_both_places_unless_random_init(tmp_path, caplog):
    cfg = _cfg(**{"MODEL.MODEL_ROOT": str(tmp_path)})
    with pytest.raises(casdap.CasdapError) as err:
        build_dap_model(cfg)
    assert "MODEL.WEIGHT_PATH" in str(err.value) and str(tmp_path / "rcvit_xs.pth") in str(err.value)
    with pytest.raises(casdap.CasdapError, match="MODEL.WEIGHT_PATH '.*nope.pth' does not exist"):
        build_dap_model(_cfg(**{"MODEL.WEIGHT_PATH": str(tmp_path / "nope.pth"), "MODEL.RANDOM_INIT": "True"}))
    with caplog.at_level(logging.WARNING):
        model = build_dap_model(_cfg(**{"MODEL.MODEL_ROOT": str(tmp_path), "MODEL.RANDOM_INIT": "True"}))
    assert model.random_init is True and "RANDOMLY INITIALISED" in caplog.text


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"MODEL.DAP.INJECTION": "prefix"}, "INJECTION"),
        ({"MODEL.DAP.PROMPT_POOL": "3"}, "PROMPT_POOL"),
        ({"MODEL.DAP.STAGES": "[4]"}, "STAGES"),
        ({"DATA.NUMBER_CLASSES": "-1"}, "NUMBER_CLASSES"),
        ({"MODEL.DAP.KEYS_PER_TASK": "0"}, "KEYS_PER_TASK"),
        ({"MODEL.DAP.SELECTION": "majority"}, "SELECTION must be one of per_image, batch_majority, oracle"),
    ],
)
def test_bad_dap_settings_are_clear_errors(overrides, match):
    with pytest.raises(casdap.CasdapError, match=match):
        build_dap_model(_cfg(**{"MODEL.RANDOM_INIT": "True", **overrides}))


def test_without_prompts_in_the_last_block_it_runs_as_the_backbone_block():
    """DAP's ImageNet-R setting: the last block of the last stage gets no generator and no prompts."""
    full = CASDAP(_backbone(), num_classes=10, num_tasks=2, num_tokens=4, task_emb_dim=8,
                  stages=(3,), injection="kv", keys_per_task=1)
    cut = CASDAP(_backbone(), num_classes=10, num_tasks=2, num_tokens=4, task_emb_dim=8, stages=(3,),
                 prompt_last_block=False, injection="kv", keys_per_task=1)
    assert [len(full.dap_blocks["3"]), len(cut.dap_blocks["3"])] == [2, 1]
    _train_steps(cut, task_id=0, steps=2)  # non-zero prompts, so "unprompted" is visible
    cut.eval()
    x, idx = torch.randn(3, 3, 32, 32), torch.zeros(3, dtype=torch.long)
    bb = cut.backbone
    with torch.no_grad():
        h = cut.dap_blocks["3"][0](bb.stages[3][0], cut._prefix(x), cut.dap_task_emb(idx))
        expected = bb.forward_head(bb.norm(bb.stages[3][1](h)), pre_logits=True)
        assert torch.allclose(cut.forward_prompted(x, idx), expected, atol=1e-6)
    cfg = load_config(None, ["MODEL.RANDOM_INIT", "True", "DATA.NAME", "imagenet_r", "DATA.NUMBER_CLASSES", "10",
                             "CONTINUAL.N_TASKS", "2", "MODEL.DAP.PROMPT_POOL", "2", "MODEL.DAP.NUM_TASKS_FOR_EMB", "2",
                             "MODEL.MODEL_ROOT", "/nonexistent"])
    assert len(build_dap_model(cfg).dap_blocks["3"]) == 1  # the reference's choice for imagenet_r


def test_prompts_off_injects_nothing_and_trains_keys_and_head():
    """MODEL.DAP.NUM_DAP_TOKENS 0, the ablation that says what the prompts add: the features are the
    frozen backbone's exactly, before and after training; keys and head still learn."""
    model = CASDAP(_backbone(), num_classes=10, num_tasks=2, num_tokens=0, task_emb_dim=8,
                   stages=(2, 3), injection="kv", keys_per_task=1)
    assert len(model.dap_blocks) == 0
    keys, head = model.dap_keys.detach().clone(), model.head.weight.detach().clone()
    _train_steps(model, task_id=1, steps=2)
    assert not torch.equal(keys, model.dap_keys) and not torch.equal(head, model.head.weight)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for task in (0, 1):
            assert torch.equal(model.forward_prompted(x, torch.full((3,), task)), model.backbone.forward_pooled(x))
    with pytest.raises(casdap.CasdapError, match="num_tokens must be 0 \\(prompts off\\) or more"):
        CASDAP(_backbone(), num_classes=10, num_tasks=2, num_tokens=-1, task_emb_dim=16,
               stages=(2, 3), injection="kv", keys_per_task=1)

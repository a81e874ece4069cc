"""CAS-DAP's prompt sources (MODEL.DAP.PROMPT_SOURCE dap | static | none): ``none`` is the prompts-off
ablation bit for bit, ``static``'s tokens are per task and image-independent, and forbidden settings
are one clear error. Every source with every query, task inference and prediction runs end to end in
tests/test_combinations_*.py."""

from __future__ import annotations

import json
import re

import pytest
import torch
from cl_support import CIFAR_YAML, tiny_cifar_cfg, write_tiny_cifar

from casdap.config import load_config
from casdap.continual.methods import check_config, method_keys
from casdap.continual.runner import run_continual
from casdap.errors import CasdapError

MATRICES = ("acc_matrix", "wtp_matrix", "tii_matrix", "task_selection_acc", "mixed_stream_acc")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("sources") / "cifar", train_per_class=4, test_per_class=2)


def _metrics(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


# ----------------------------------------------------------------------- none: prompts off
def test_source_none_is_the_prompts_off_ablation_bit_for_bit(tmp_path, cifar):
    """``PROMPT_SOURCE none`` and DAP's ablation ``NUM_DAP_TOKENS 0`` (kept as its alias) are one run."""
    runs = {"none": ("MODEL.DAP.PROMPT_SOURCE", "none"), "tokens0": ("MODEL.DAP.NUM_DAP_TOKENS", "0")}
    for name, extra in runs.items():
        run_continual(tiny_cifar_cfg(cifar, tmp_path / name, "dap", "MODEL.DAP.RESTRICT_TO_TASK", "True", *extra),
                      progress=False)
    a, b = (_metrics(tmp_path / name) for name in runs)
    for key in MATRICES:
        assert a[key] == b[key], key
    assert a["trainable_params"] == b["trainable_params"]
    sa, sb = (torch.load(tmp_path / n / "checkpoints" / "task_001.pth", weights_only=False)["model"] for n in runs)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert "Prompt source: none" in (tmp_path / "none" / "final_results.txt").read_text()


# ----------------------------------------------------------------------- static: the model
def _backbone():
    import casdap

    return casdap.create_model("rcvit_xs", num_classes=0, distillation=False)


def _model(source: str, **kw):
    from casdap.models.dap import CASDAP

    torch.manual_seed(0)
    return CASDAP(_backbone(), num_classes=4, num_tasks=2, num_tokens=2, task_emb_dim=8, stages=(2, 3),
                  prompt_source=source, **kw)


def test_static_prompts_start_as_the_frozen_backbone_and_do_not_depend_on_the_image():
    model = _model("static").eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x).feats, model.backbone.forward_pooled(x))
        for block in model._prompted_blocks():
            block.generator.tokens.normal_()
            block.gate_b.fill_(0.5)
        h = torch.randn(3, model.backbone.embed_dims[3], 1, 1)
        emb = model.dap_task_emb(torch.tensor([1, 1, 1]))
        generator = model.dap_blocks["3"][0].generator
        one = generator(h, emb, 1)
        assert torch.equal(one[0], one[1]) and torch.equal(one[0], one[2])  # same task: same prompts
        assert torch.equal(one, generator(torch.randn_like(h), emb, torch.tensor([1, 1, 1])))  # image ignored
        assert not torch.equal(one, generator(h, model.dap_task_emb(torch.tensor([0, 0, 0])), 0))
        assert not torch.equal(one, generator(h, model.dap_task_emb(torch.tensor([0, 0, 0])), 1))  # FiLM by e_t
        assert not torch.equal(model(x, task_id=0).feats, model(x, task_id=1).feats)  # prompts reach the features
    dap = _model("dap").dap_blocks["3"][0].generator
    with torch.no_grad():
        dap.token_map.weight.normal_()
        assert not torch.equal(*(dap(t, emb, 1) for t in (h, torch.randn_like(h))))  # dap's depend on it


def test_static_tokens_are_task_rows_and_train_only_the_trained_task():
    model = _model("static").train()
    with torch.no_grad():
        for block in model._prompted_blocks():
            block.gate_b.fill_(0.5)
    model(torch.randn(2, 3, 32, 32), task_id=1).logits.sum().backward()
    for block in model._prompted_blocks():
        tokens = block.generator.tokens
        assert tokens.grad[0].abs().sum() == 0 and tokens.grad[1].abs().sum() > 0
    rows = {id(p): r.tolist() for p, r in model.task_rows([0], [0, 1])}
    assert all(rows.get(id(b.generator.tokens)) == [0] for b in model._prompted_blocks())


# ----------------------------------------------------------------------- forbidden settings
@pytest.mark.parametrize("overrides, message", [
    (["MODEL.DAP.PROMPT_SOURCE", "pool"], "unknown MODEL.DAP.PROMPT_SOURCE 'pool' (use one of dap, static, none)"),
    # the registry's pools are run by the method of their name, never as a source of CAS-DAP's blocks
    *[(["MODEL.DAP.PROMPT_SOURCE", pool],
       f"MODEL.DAP.PROMPT_SOURCE {pool} is a prompt pool, chosen once per image from the query rather than made in "
       f"each prompted block: run it as MODEL.TRANSFER_TYPE {pool} (its settings are MODEL.PROMPT's), not as a "
       "PROMPT_SOURCE of TRANSFER_TYPE dap") for pool in ("l2p", "dualprompt", "coda_prompt")],
    (["MODEL.DAP.PROMPT_SOURCE", "static", "MODEL.DAP.CHANNEL_MIX", "True"],
     "MODEL.DAP.CHANNEL_MIX is an option of DAP's generator (MODEL.DAP.PROMPT_SOURCE dap), not of "
     "PROMPT_SOURCE static: set it False"),
    (["MODEL.DAP.PROMPT_SOURCE", "none", "MODEL.DAP.TASK_GENERATORS", "True"],
     "MODEL.DAP.TASK_GENERATORS is an option of DAP's generator (MODEL.DAP.PROMPT_SOURCE dap), not of "
     "PROMPT_SOURCE none: set it False"),
    (["MODEL.DAP.PROMPT_SOURCE", "static", "MODEL.DAP.NUM_DAP_TOKENS", "0"],
     "MODEL.DAP.NUM_DAP_TOKENS 0 makes no prompt: with MODEL.DAP.PROMPT_SOURCE static set it to 1 or more, "
     "or set PROMPT_SOURCE none for no prompt"),
])
def test_forbidden_prompt_source_settings_are_one_clear_error(overrides, message):
    cfg = load_config(None, ["DATA.NAME", "digits", "CONTINUAL.N_TASKS", "2", "MODEL.DAP.PROMPT_POOL", "2",
                             "MODEL.DAP.NUM_TASKS_FOR_EMB", "2", *overrides])
    with pytest.raises(CasdapError, match=f"^{re.escape(message)}$"):
        check_config(cfg)


def test_the_prompt_pools_are_sources_of_the_registry_each_run_by_the_method_of_its_name():
    """One registry of prompt sources: the block sources CAS-DAP builds per prompted block and the
    pools the prompt-pool model builds once; MODEL.TRANSFER_TYPE l2p (dualprompt, coda_prompt) is
    the user-facing name of the pool it puts in the model's source slot."""
    from casdap import dap_registry as R
    from casdap.continual.methods import METHODS, get_method, prompt_source_of
    from casdap.models.prompt_pools import PromptPoolModel
    from casdap.models.prompt_sources import PromptSource
    from casdap.models.prompt_sources.pool import PoolSource

    assert R.block_sources() == ("dap", "static", "none")
    assert tuple(R.PROMPT_SOURCES) == (*R.block_sources(), *R.POOL_SOURCES) == R.PROMPT_SOURCE_NAMES
    assert {n for n, schema in METHODS.items() if schema.prompt_source} == set(R.POOL_SOURCES)
    for pool in R.POOL_SOURCES:
        cls = R.load("prompt_source", R.PROMPT_SOURCES, pool)
        assert issubclass(cls, PoolSource) and issubclass(cls, PromptSource) and not cls.per_block
        assert prompt_source_of(pool) == pool and "MODEL.DAP.PROMPT_SOURCE" not in METHODS[pool].reads
        cfg = load_config(CIFAR_YAML, ["MODEL.TRANSFER_TYPE", pool, "MODEL.RANDOM_INIT", "True",
                                       "DATA.NUMBER_CLASSES", "4", "MODEL.PROMPT.COMPONENTS", "20"])
        model = get_method(pool).build_model(cfg, 4)
        assert isinstance(model, PromptPoolModel) and type(model.source) is cls and model.source_name == pool
        with pytest.raises(CasdapError, match=f"^MODEL.DAP.PROMPT_SOURCE is not read by method {pool} "):
            load_config(CIFAR_YAML, ["MODEL.TRANSFER_TYPE", pool, "MODEL.DAP.PROMPT_SOURCE", pool],
                        reads=method_keys)  # the method names its source: the key is never silently ignored
    with pytest.raises(CasdapError, match="^method dap runs no prompt pool"):
        prompt_source_of("dap")
    with pytest.raises(CasdapError, match=r"^prompt_source l2p is a prompt pool, .*: build "
                                          r"casdap\.models\.prompt_pools\.PromptPoolModel\(\.\.\., source='l2p'\)$"):
        _model("l2p")
    with pytest.raises(CasdapError, match="^prompt pool source must be one of l2p, dualprompt, coda_prompt, got 'dap'"):
        PromptPoolModel(_backbone(), 4, num_tasks=2, source="dap", stages=[3])
    with pytest.raises(CasdapError, match="^prompt source l2p has no task variable: task inference"):
        PromptPoolModel(_backbone(), 4, num_tasks=2, source="l2p", stages=[3], task_predictor="gaussian")
    with pytest.raises(CasdapError, match="^prompt source l2p L2PPool does not take g_blocks"):
        PromptPoolModel(_backbone(), 4, num_tasks=2, source="l2p", stages=[3], g_blocks=1)


def test_the_model_refuses_generator_options_for_sources_without_a_generator():
    with pytest.raises(CasdapError, match="prompt source none makes no prompts: channel_mix and task_generators"):
        _model("none", channel_mix=True)
    with pytest.raises(CasdapError, match="prompt source StaticPrompts does not take channel_mix"):
        _model("static", channel_mix=True)

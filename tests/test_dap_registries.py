"""Registries of task predictors, selections and prompt sources; DAP's defaults in one place; names
in any case; no host sync in a training step; old state dicts still load."""

import inspect
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import casdap
from casdap import dap_defaults as D
from casdap import dap_registry as R
from casdap.config import get_defaults, load_config
from casdap.continual.methods import check_config, checks
from casdap.models.build import build_dap_model
from casdap.models.dap import CASDAP, restrict_logits
from casdap.models.prompt_sources import PromptSource
from casdap.models.task_inference import ClassStatistics, TaskPredictor


def _backbone(seed: int = 0):
    torch.manual_seed(seed)
    return casdap.create_model("rcvit_xs", num_classes=0, distillation=False)


def _small(**kw):
    args = dict(num_classes=6, num_tasks=3, num_tokens=2, task_emb_dim=8, stages=(3,))
    args.update(kw)
    return CASDAP(_backbone(), **args)


def test_names_come_without_torch():
    code = ("import sys; import casdap.dap_registry, casdap.dap_defaults, casdap.config.validate, casdap.config, "
            "casdap.continual.methods; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_entry_loads_and_follows_its_contract():
    for name in R.TASK_PREDICTORS:
        assert issubclass(R.load("task_predictor", R.TASK_PREDICTORS, name), TaskPredictor)
    for name in R.PROMPT_SOURCES:
        assert issubclass(R.load("prompt_source", R.PROMPT_SOURCES, name), PromptSource)
    for name in R.SELECTIONS:
        assert callable(R.load("selection", R.SELECTIONS, name))
    assert checks.INJECTION_NAMES is R.INJECTION_NAMES and checks.SELECTION_NAMES is R.SELECTION_NAMES
    with pytest.raises(casdap.CasdapError,
                       match="task_predictor must be one of keys, gaussian, head, lda, got 'gauss'"):
        _small(task_predictor="gauss")
    with pytest.raises(casdap.CasdapError, match="prompt_source must be one of dap, static, none, got 'pool'"):
        _small(prompt_source="pool")


def test_one_place_for_the_defaults():
    """The Python API builds with DAP's defaults, the same values the config's MODEL.DAP holds."""
    model = CASDAP(_backbone(), num_classes=10, num_tasks=5, num_tokens=10, task_emb_dim=16, keys_per_task=8)
    assert model.stages == tuple(D.STAGES) == (2, 3) and model.injection == D.INJECTION == "kv"
    assert model.dap_keys.shape == (5 * 8, model.num_features) and model.keys_per_task == 8
    params = inspect.signature(CASDAP).parameters
    dap = get_defaults().MODEL.DAP
    pairs = {"num_tasks": dap.PROMPT_POOL, "num_tokens": dap.NUM_DAP_TOKENS, "task_emb_dim": dap.TASK_EMB,
             "stages": tuple(dap.STAGES), "injection": dap.INJECTION, "keys_per_task": dap.KEYS_PER_TASK,
             "channel_mix": dap.CHANNEL_MIX, "task_generators": dap.TASK_GENERATORS, "query": dap.QUERY,
             "prompt_backbone": dap.PROMPT_BACKBONE}
    for arg, value in pairs.items():
        assert params[arg].default == value, arg
    assert params["prompt_source"].default == D.PROMPT_SOURCE and params["task_predictor"].default == D.TASK_PREDICTOR
    assert (dap.STAGES, dap.INJECTION, dap.NUM_DAP_TOKENS, dap.TASK_EMB) == ([2, 3], "kv", 3, 64)
    assert (dap.SIM_LAMBDA, dap.CURRENT_LAMBDA) == (D.SIM_LAMBDA, D.CURRENT_LAMBDA) == (0.5, 1.0)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 10)


def test_names_in_any_case():
    x = torch.randn(2, 3, 32, 32)
    lower, upper = _small(injection="kv").eval(), _small(injection="KV").eval()
    assert upper.injection == "kv" and upper.dap_blocks["3"][0].injection == "kv"
    upper.load_state_dict(lower.state_dict())
    with torch.no_grad():
        assert torch.equal(upper(x, selection="PER_IMAGE").logits, lower(x).logits)
        assert upper(x, selection="Batch_Majority").key_idx.shape == (2,)
    cfg = load_config(None, ["MODEL.DAP.INJECTION", "KV", "MODEL.DAP.SELECTION", "Per_Image", "MODEL.RANDOM_INIT",
                             "True", "MODEL.MODEL_ROOT", "/nonexistent", "DATA.NUMBER_CLASSES", "4",
                             "CONTINUAL.N_TASKS", "2", "MODEL.DAP.PROMPT_POOL", "2",
                             "MODEL.DAP.NUM_TASKS_FOR_EMB", "2"])
    check_config(cfg)
    assert build_dap_model(cfg).injection == "kv"


def test_model_errors_name_arguments_and_build_names_config_keys():
    with pytest.raises(casdap.CasdapError, match=r"^stages must name stages 0\.\.3"):
        _small(stages=(4,))
    with pytest.raises(casdap.CasdapError, match="^keys_per_task must be at least 1"):
        _small(keys_per_task=0)
    with pytest.raises(casdap.CasdapError, match="^injection must be one of kv, pool, attn, got 'prefix'"):
        _small(injection="prefix")
    with pytest.raises(casdap.CasdapError, match="task predictor KeyTaskPredictor does not take shrink"):
        from casdap.models.injection import build_checked
        from casdap.models.task_inference import KeyTaskPredictor
        build_checked("task predictor", KeyTaskPredictor, (2, 8), {"shrink": 0.1})
    base = ["MODEL.RANDOM_INIT", "True", "MODEL.MODEL_ROOT", "/nonexistent", "DATA.NUMBER_CLASSES", "4",
            "CONTINUAL.N_TASKS", "2", "MODEL.DAP.PROMPT_POOL", "2", "MODEL.DAP.NUM_TASKS_FOR_EMB", "2"]
    for key, value in (("MODEL.DAP.TASK_EMB", "0"), ("MODEL.DAP.NUM_DAP_TOKENS", "-1"), ("MODEL.DAP.STAGES", "[5]")):
        with pytest.raises(casdap.CasdapError, match=key):
            build_dap_model(load_config(None, [*base, key, value]))


def test_old_state_dicts_with_dap_keys_still_load():
    model = _small(keys_per_task=2)
    with torch.no_grad():
        model.dap_keys.normal_()
    old = {("dap_keys" if k == "dap_task_predictor.keys" else k): t for k, t in model.state_dict().items()}
    assert "dap_keys" in old and "dap_task_predictor.keys" not in old
    fresh = _small(keys_per_task=2)
    fresh.load_state_dict(old, strict=True)
    assert torch.equal(fresh.dap_keys, model.dap_keys)
    wrapped = nn.ModuleDict({"model": _small(keys_per_task=2)})  # a prefix, as inside a larger module
    wrapped.load_state_dict({f"model.{k}": t for k, t in old.items()}, strict=True)
    assert torch.equal(wrapped["model"].dap_keys, model.dap_keys)


# -- host syncs ----------------------------------------------------------------------------------
SYNCS = ("item", "__bool__", "__int__", "__index__", "__float__", "tolist", "unique", "nonzero", "numpy")


@pytest.fixture
def count_syncs(monkeypatch):
    """Every tensor -> Python read (and ``unique``/``nonzero``, whose output size needs one) counted."""
    calls = []

    def wrap(name, fn):
        def counted(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return counted

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    for name in ("unique", "nonzero", "bincount"):
        monkeypatch.setattr(torch, name, wrap(f"torch.{name}", getattr(torch, name)))
    return calls


@pytest.mark.parametrize("options", [{}, {"task_generators": True, "channel_mix": True, "injection": "attn"},
                                     {"injection": "pool", "keys_per_task": 3}])
def test_a_training_step_reads_nothing_back_from_the_device(options, count_syncs):
    model = _small(stages=(2, 3), **options).train()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    splits = [[0, 1], [2, 3], [4, 5]]
    tasks = [0, torch.zeros(4, dtype=torch.long)] if not options.get("task_generators") else [0]
    for task in tasks:
        count_syncs.clear()
        out = model(x, task_id=task)
        logits = restrict_logits(out.logits, out.key_idx, splits)
        loss = torch.nn.functional.cross_entropy(logits, y) - 0.5 * out.pull
        opt.zero_grad()
        loss.backward()
        assert count_syncs == [], f"host syncs with task_id={task!r}: {count_syncs}"
        opt.step()  # (Adam reads its CPU step counter: no device involved)


def test_the_sync_counter_counts(count_syncs):
    """The check above can fail: a batch of per-image task ids with per-task generators needs one look
    (the images per task, to group them by task; the gathered form: the distinct tasks)."""
    model = _small(task_generators=True).train()
    model(torch.randn(2, 3, 32, 32), task_id=torch.tensor([1, 1]))
    assert count_syncs == ["tolist"]
    count_syncs.clear()
    model.group_tasks = False
    model(torch.randn(2, 3, 32, 32), task_id=torch.tensor([1, 0]))
    assert count_syncs == ["unique", "torch.unique"]  # Tensor.unique calls torch.unique: one read


# -- the worked examples of docs/architecture.md ("Registries") ---------------------------------
class NearestTaskMean(TaskPredictor):
    """Scores a task by the cosine between the query and the nearest class mean of that task."""

    def __init__(self, num_tasks: int, dim: int) -> None:
        super().__init__(num_tasks, dim)
        self.register_buffer("means", torch.zeros(0, dim))
        self.register_buffer("tasks", torch.zeros(0, dtype=torch.long))

    def fit(self, stats: ClassStatistics) -> None:
        self.means = torch.cat([self.means, stats.mean.to(self.means)])
        self.tasks = torch.cat([self.tasks, stats.tasks.to(self.tasks)])

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        sim = nn.functional.normalize(query, dim=1) @ nn.functional.normalize(self.means, dim=1).t()
        scores = sim.new_full((len(query), self.num_tasks), -2.0)  # below any cosine: unseen tasks lose
        return scores.scatter_reduce(1, self.tasks.expand_as(sim), sim, "amax")


class SharedTokens(PromptSource):
    """Learned prompt tokens, the same for every task and image, trained on the first task only."""

    def __init__(self, dim: int, num_tokens: int, task_emb_dim: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(0.02 * torch.randn(dim, num_tokens))

    def forward(self, x, task_emb, task_idx=None):
        return self.tokens.expand(len(x), -1, -1)

    def structure_parameters(self):
        return [self.tokens]  # frozen after the first task, like DAP's token-axis map


def test_worked_examples_plug_in(monkeypatch):
    monkeypatch.setitem(R.TASK_PREDICTORS, "task_mean", f"{__name__}:NearestTaskMean")
    monkeypatch.setitem(R.PROMPT_SOURCES, "shared_tokens", f"{__name__}:SharedTokens")
    model = _small(task_predictor="task_mean", prompt_source="shared_tokens")
    assert isinstance(model.dap_task_predictor, NearestTaskMean)
    assert all(isinstance(b.generator, SharedTokens) for b in model._prompted_blocks())
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    model.fit_task_predictor(ClassStatistics.from_queries(model.forward_query(x), labels, {0: 0, 1: 0, 2: 1, 3: 1}))
    with torch.no_grad():
        out = model(x)
    assert out.key_idx.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and out.pull == 0
    with torch.no_grad():
        for block in model._prompted_blocks():
            block.gate_b.fill_(0.5)
    out = model.train()(x, task_id=1)
    out.logits.sum().backward()
    assert model.dap_blocks["3"][0].generator.tokens.grad.abs().sum() > 0
    model.freeze_token_axis()  # its structure parameters: the tokens stop training after the first task
    assert not any(b.generator.tokens.requires_grad for b in model._prompted_blocks())
    assert not hasattr(model, "dap_keys")  # no key pool in this predictor
    with pytest.raises(casdap.CasdapError, match="prompt source SharedTokens does not take channel_mix"):
        _small(prompt_source="shared_tokens", channel_mix=True)


def test_a_new_prompt_source_runs_from_a_config_with_casdap_cl(tmp_path, monkeypatch):
    """docs/architecture.md: one class and one registry line, then ``casdap cl`` runs it by name."""
    from cl_support import KEEP, run_casdap, tiny_cifar_cfg, write_tiny_cifar

    monkeypatch.setitem(R.PROMPT_SOURCES, "shared_tokens", f"{__name__}:SharedTokens")
    cifar = write_tiny_cifar(tmp_path / "cifar")  # two steps a task: the tokens train once the gates open
    out = tmp_path / "run"
    yaml = tmp_path / "shared.yaml"
    yaml.write_text(tiny_cifar_cfg(cifar, out, "dap", "MODEL.DAP.STAGES", "[3]", *KEEP).dump())
    cmd = [sys.executable, "-m", "casdap", "cl", "--config-file", yaml, "MODEL.DAP.PROMPT_SOURCE", "shared_tokens"]
    proc = run_casdap(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PROMPT_SOURCE: shared_tokens" in (out / "config.yaml").read_text()
    after = [torch.load(out / "checkpoints" / f"task_{t:03d}.pth", weights_only=False)["model"] for t in (0, 1)]
    tokens = [k for k in after[1] if k.endswith(".generator.tokens")]
    assert len(tokens) == 2 and all(torch.equal(after[0][k], after[1][k]) for k in tokens)  # frozen after task 0
    assert not torch.equal(after[0]["head.weight"][2:], after[1]["head.weight"][2:])  # task 1 did train
    proc = run_casdap([*cmd[:-1], "shared_token"], tmp_path)
    assert proc.returncode != 0
    assert "unknown MODEL.DAP.PROMPT_SOURCE 'shared_token' (use one of dap, static, none, shared_tokens)" in proc.stderr

"""DAPStrategy's metrics and its work with Avalanche's own plugins.

- Training accuracy is scored on the logits the loss trains (each sample's own task's classes),
  and the evaluation loss is an ordinary cross-entropy, also when a key-selection error would put
  the true class outside the restricted logits.
- A plugin that mixes stored samples into the batch (Avalanche's ``ReplayPlugin``) gets every
  sample trained under its own task: its own key, its own task's classes.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from cl_support import resume_after_interrupt, tiny_cifar_cfg, write_tiny_cifar

from casdap.continual.plugins import RngRecorderPlugin
from casdap.continual.runner import METHODS, run_continual
from casdap.errors import CasdapError

TRAIN_ACC = "Top1_Acc_Epoch/train_phase/train_stream"
EVAL_LOSS = "Loss_Stream/eval_phase/test_stream"


@pytest.fixture
def cifar(tmp_path):
    return write_tiny_cifar(tmp_path / "cifar")


def _history(strategy, prefix: str) -> list[float]:
    """Every value logged under metric names starting with ``prefix``, in logging order."""
    found = [(x, float(v)) for k, (xs, vs) in strategy.evaluator.get_all_metrics().items() if k.startswith(prefix)
             for x, v in zip(xs, vs)]
    return [v for _, v in sorted(found, key=lambda p: p[0])]


def _calibrated_backbone(images: torch.Tensor, seed: int = 1):
    """A random rcvit_xs whose BatchNorm statistics are those of ``images``.

    A random backbone with its initial statistics maps every image to nearly the same direction
    (cosine ~0.99 between classes); calibrated statistics stand in for pretrained features.
    """
    import casdap

    torch.manual_seed(seed)
    bb = casdap.create_model("rcvit_xs", num_classes=0, distillation=False)
    for m in bb.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration pass
            m.reset_running_stats()
    bb.train()
    with torch.no_grad():
        bb.forward_pooled(images)
    return bb.eval()


# ------------------------------------------------------------------------------------ metrics
def test_dap_train_accuracy_is_scored_on_trained_logits_and_eval_loss_is_ordinary(tmp_path, cifar):
    from casdap import save_checkpoint
    from casdap.continual.benchmarks import build_benchmark

    def cfg_with(*extra):
        return tiny_cifar_cfg(cifar, tmp_path / "run", "dap", "MODEL.DAP.RESTRICT_TO_TASK", "True",
                              "SOLVER.TOTAL_EPOCH", "3", "MODEL.BACKBONE", "rcvit_xs", *extra)

    bench = build_benchmark(cfg_with())
    images = torch.stack([e.dataset[i][0] for e in bench.scenario.train_stream for i in range(len(e.dataset))])
    save_checkpoint({"model": _calibrated_backbone(images).state_dict()}, tmp_path / "bb.pth")
    # SIM_LAMBDA 0: the keys stay where they were drawn, so some test images select another
    # task's key and, with logits restricted to that task, have their true class excluded
    cfg = cfg_with("MODEL.RANDOM_INIT", "False", "MODEL.WEIGHT_PATH", str(tmp_path / "bb.pth"),
                   "MODEL.DAP.SIM_LAMBDA", "0.0")
    res = run_continual(cfg, progress=False)
    strategy = res.strategy
    # colour-coded classes, two per task: within its task every training image is learned
    train_acc = _history(strategy, TRAIN_ACC)
    assert len(train_acc) == 6 and min(train_acc[1:3] + train_acc[4:6]) >= 0.95  # epochs 2-3 of each task
    # a key-selection error costs an ordinary cross-entropy, not ~1e4
    assert res.metrics["task_selection_acc"] < 1.0
    losses = _history(strategy, EVAL_LOSS)
    assert len(losses) == 2 and all(math.isfinite(v) and 0.0 < v < 10.0 for v in losses)
    # ... and it is the one the docstring defines: the selected key's logits over the seen classes
    model = strategy.model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y, *_ in torch.utils.data.DataLoader(
            torch.utils.data.ConcatDataset([e.dataset for e in build_benchmark(cfg).scenario.test_stream]),
            batch_size=8,
        ):
            total += float(F.cross_entropy(model(x, selection="per_image").logits, y, reduction="sum"))
            n += len(y)
    assert losses[-1] == pytest.approx(total / n, rel=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_logs_its_eval_loss_and_train_accuracy(tmp_path, cifar, method):
    from casdap.continual.benchmarks import build_benchmark

    extra = ("MODEL.DAP.RESTRICT_TO_TASK", "True") if method == "dap" else ()
    cfg = tiny_cifar_cfg(cifar, tmp_path / method, method, *extra)
    strategy = run_continual(cfg, progress=False).strategy
    losses = _history(strategy, EVAL_LOSS)
    # the last evaluation's loss is the ordinary cross-entropy of the logits the method predicts every
    # test image by (DAP's: before the restriction to the selected task, see the test above)
    test = torch.utils.data.ConcatDataset([e.dataset for e in build_benchmark(cfg).scenario.test_stream])
    total = 0.0
    with torch.no_grad():
        for x, y, *_ in torch.utils.data.DataLoader(test, batch_size=8):
            logits = (strategy.model(x, selection="per_image").logits if method == "dap"
                      else strategy.predict(x, y)[0])
            total += float(F.cross_entropy(logits, y, reduction="sum"))
    assert len(losses) == (1 if method == "joint" else 2) and losses[-1] == pytest.approx(total / len(test), rel=1e-5)
    train_acc = _history(strategy, TRAIN_ACC)
    # one value per training epoch (2 tasks of 1 epoch; joint: one training), each scored over the
    # epoch's every image: 16 a task (2 classes of 8), 32 for joint; replay's second task adds 8 stored
    # images to each of its 2 batches of 8
    assert len(train_acc) == (1 if method == "joint" else 2)
    images = [32] if method == "joint" else [16, 32] if method == "replay" else [16, 16]
    assert all(v * n == round(v * n) for v, n in zip(train_acc, images)), (train_acc, images)
    if method == "ncm":  # the prototypes being built separate the colour-coded classes
        assert train_acc[-1] >= 0.75


# ------------------------------------------------------------------- Avalanche's ReplayPlugin
N_CLASSES, N_TASKS = 8, 4


def _images(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat-colour images at the 8 corners of the colour cube, with noise: well-separated classes."""
    corners = 1.5 * (2.0 * ((torch.arange(N_CLASSES)[:, None] >> torch.arange(3)) & 1) - 1)
    y = torch.arange(N_CLASSES).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed)
    return corners[y][:, :, None, None] + 0.3 * torch.randn(len(y), 3, 32, 32, generator=g), y


def _avalanche_benchmark():
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from torch.utils.data import TensorDataset

    def dataset(x, y):
        d = TensorDataset(x, y)
        d.targets = y.tolist()
        return d

    train, test = _images(16, 1), _images(8, 2)
    return class_incremental_benchmark({"train": dataset(*train), "test": dataset(*test)},
                                       class_order=list(range(N_CLASSES)), num_experiences=N_TASKS), train[0]


def _dap_model(calibration: torch.Tensor):
    from casdap.models.dap import CASDAP

    bb = _calibrated_backbone(calibration)
    return CASDAP(bb, num_classes=N_CLASSES, num_tasks=N_TASKS, num_tokens=2, task_emb_dim=8, keys_per_task=8,
                  stages=(2, 3), injection="kv")


def _run_dap(replay: bool):
    from avalanche.core import SupervisedPlugin
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ClassBalancedBuffer

    from casdap.continual.dap_strategy import DAPStrategy

    class KeySpy(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

        def after_forward(self, strategy, **kwargs):
            self.seen.append((strategy.current_task, strategy.mb_y.clone(), strategy.mb_dap.key_idx.clone()))

    bench, calibration = _avalanche_benchmark()
    model = _dap_model(calibration)
    spy = KeySpy()
    plugins = [spy]
    if replay:
        plugins.append(ReplayPlugin(mem_size=16, storage_policy=ClassBalancedBuffer(max_size=16, adaptive_size=True)))
    strategy = DAPStrategy(
        model=model, optimizer=torch.optim.Adam(model.trainable_parameters(), lr=0.01), train_mb_size=8,
        train_epochs=3, plugins=plugins, sim_lambda=0.5, restrict_to_task=True,
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
    )
    for exp in bench.train_stream:
        strategy.train(exp, reset_optimizer_state=True)
    results = strategy.eval(bench.test_stream)
    acc = next(float(v) for k, v in results.items() if k.startswith("Top1_Acc_Stream/eval_phase/test_stream"))
    return acc, spy.seen


@pytest.mark.slow  # two DAP trainings of three epochs (about 15 s)
def test_avalanche_replay_plugin_trains_every_sample_under_its_own_task():
    with_replay, seen = _run_dap(replay=True)
    task_of = torch.arange(N_CLASSES) // (N_CLASSES // N_TASKS)
    replayed = sum(int((task_of[y] < t).sum()) for t, y, _ in seen)
    assert replayed > 0  # the plugin did mix stored samples of earlier tasks into the batches
    for _, y, key_idx in seen:  # every sample, replayed or not, under its own task's key
        assert torch.equal(key_idx, task_of[y])
    without_replay, _ = _run_dap(replay=False)
    assert without_replay >= 0.9
    assert with_replay >= without_replay - 0.03


# ------------------------------------------------------------------------ the runner's DAP replay
def test_negative_dap_replay_memory_is_one_clear_error(tmp_path, cifar):
    with pytest.raises(CasdapError, match=r"MODEL\.DAP\.REPLAY_MEM_SIZE must be 0 \(no replay\) or positive, got -1"):
        run_continual(tiny_cifar_cfg(cifar, tmp_path / "neg", "dap", "MODEL.DAP.REPLAY_MEM_SIZE", "-1"), progress=False)


def test_dap_replay_resumes_to_the_uninterrupted_run(tmp_path, cifar, monkeypatch):
    from avalanche.training.plugins import ReplayPlugin

    extra = ("DATA.BATCH_SIZE", "4", "MODEL.DAP.KEYS_PER_TASK", "3", "MODEL.DAP.REPLAY_MEM_SIZE", "4")
    res = run_continual(tiny_cifar_cfg(cifar, tmp_path / "full", "dap", *extra), progress=False)
    kinds = [type(p) for p in res.strategy.plugins]
    assert kinds.index(RngRecorderPlugin) < kinds.index(ReplayPlugin)  # the buffer can be rebuilt on resume
    assert len(res.strategy.plugins[kinds.index(ReplayPlugin)].storage_policy.buffer) == 4
    full = res.metrics
    resume_after_interrupt(monkeypatch, cifar, tmp_path, full, *extra)


# ----------------------------------------------------------------------------- host syncs
class _StubDAP(torch.nn.Module):
    """The parts of CASDAP a DAPStrategy training step uses, none of which reads a value back."""

    num_tasks = N_TASKS

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, N_CLASSES)
        self.dap_keys = torch.nn.Parameter(torch.randn(N_TASKS, 3))

    def trainable_parameters(self):
        return list(self.parameters())

    def forward_query(self, x):
        return x.mean((2, 3))

    def seed_keys(self, task, query):
        with torch.no_grad():
            self.dap_keys[task] = query.mean(0)

    def freeze_token_axis(self):
        pass

    def forward(self, x, task_id=None, selection="per_image"):
        from casdap.models.dap import DAPOutput

        q = self.forward_query(x)
        key_idx = task_id if task_id is not None else (q @ self.dap_keys.t()).argmax(-1)
        pull = F.cosine_similarity(q, self.dap_keys[key_idx], dim=-1).mean()
        return DAPOutput(self.head(q), key_idx, pull)


def _real_casdap():
    """A random rcvit_xs under CAS-DAP with per-task generator maps, channel mixing, softmax
    injection and several keys a task (embedded_shift's settings): every path a step can take."""
    from casdap.models.casvit import rcvit_xs
    from casdap.models.dap import CASDAP

    return CASDAP(rcvit_xs(num_classes=0), N_CLASSES, num_tasks=N_TASKS, num_tokens=2, task_emb_dim=8,
                  stages=[2, 3], injection="attn", keys_per_task=2, channel_mix=True, task_generators=True)


@pytest.mark.parametrize("make_model", [_StubDAP, _real_casdap], ids=["strategy", "strategy-and-casdap"])
def test_dap_training_steps_after_the_first_read_nothing_back_from_the_device(monkeypatch, make_model):
    """Every way a tensor's value reaches Python is counted over each training iteration (forward,
    loss, backward, update): only the first iteration of an experience may read one (its checks and
    key seeding). SGD: Adam reads its CPU-side step counter, which is no device sync."""
    from avalanche.core import SupervisedPlugin
    from avalanche.training.plugins import EvaluationPlugin

    from casdap.continual.dap_strategy import DAPStrategy

    reads = [0]
    for name in ("item", "__bool__", "__int__", "__index__", "__float__", "tolist", "unique", "nonzero"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            reads[0] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    class Counter(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.per_iteration: list[list[int]] = []

        def before_training_exp(self, strategy, **kwargs):
            self.per_iteration.append([])

        def before_training_iteration(self, strategy, **kwargs):
            self.start = reads[0]

        def after_training_iteration(self, strategy, **kwargs):
            self.per_iteration[-1].append(reads[0] - self.start)

    bench, _ = _avalanche_benchmark()
    torch.manual_seed(0)
    model = make_model()
    counter = Counter()
    strategy = DAPStrategy(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=8,
                           train_epochs=2, plugins=[counter], evaluator=EvaluationPlugin(loggers=[]))
    for exp in list(bench.train_stream)[:2]:
        strategy.train(exp)
    assert [len(c) for c in counter.per_iteration] == [8, 8]  # 32 images a task, batches of 8, 2 epochs
    for counts in counter.per_iteration:
        assert counts[0] > 0  # the counting sees the first iteration's checks
        assert counts[1:] == [0] * 7


def test_strategy_defaults_are_the_configs():
    import inspect

    from casdap.config import load_config
    from casdap.continual.dap_strategy import DAPStrategy

    d = load_config().MODEL.DAP  # the defaults, resolved as a run resolves them
    p = inspect.signature(DAPStrategy.__init__).parameters
    assert (p["current_lambda"].default, p["sim_lambda"].default, p["selection"].default,
            p["restrict_to_task"].default) == (d.CURRENT_LAMBDA, d.SIM_LAMBDA, d.SELECTION, d.RESTRICT_TO_TASK)


def test_loader_workers_are_capped_at_the_batches_without_changing_a_batch():
    """A loader forks no worker that would get no batch, and the batches, augmentation included, are
    those of the uncapped worker count. A training loader's workers live for its experience (started
    once, not at every epoch), and its epochs repeat exactly under the same seed."""
    from torch.utils.data import DataLoader, Dataset

    from casdap.continual.strategy_mixin import CasdapStrategyMixin, _workers_for

    class Augmented(Dataset):  # a random augmentation, drawn in the worker that loads the item
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.rand(2) + i

    def loader(n):
        return DataLoader(Augmented(), batch_size=4, shuffle=True, num_workers=n)

    assert [_workers_for(loader(n), n) for n in (0, 1, 2, 5)] == [0, 1, 2, 2]
    batches = []
    for n in (4, 2):
        torch.manual_seed(0)
        batches.append(list(loader(n)))
    assert len(batches[0]) == 2 and all(torch.equal(a, b) for a, b in zip(*batches))

    class Template:
        def make_train_dataloader(self, num_workers=0, **kwargs):
            self.calls.append((num_workers, kwargs))
            self.dataloader = loader(num_workers)

        make_eval_dataloader = make_train_dataloader

    class Strategy(CasdapStrategyMixin, Template):
        pass

    s = Strategy()
    s.calls = []
    s.make_train_dataloader(num_workers=10, shuffle=True)
    s.make_eval_dataloader(num_workers=1)
    assert s.calls == [(10, {"shuffle": True}), (2, {"shuffle": True, "persistent_workers": True}), (1, {})]

    def epochs(n_epochs):
        torch.manual_seed(0)
        persistent = DataLoader(Augmented(), batch_size=4, shuffle=True, num_workers=2, persistent_workers=True)
        return [torch.cat(list(persistent)) for _ in range(n_epochs)]

    first, again = epochs(2), epochs(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])  # a new shuffle and new augmentation draws each epoch

"""Class-incremental accuracy decomposed (WTP, TII) and the correctness of what the decomposition
relies on: untrained tasks never selected, frozen rows kept under weight decay, oracle refusing
untrained classes, and results that do not depend on the evaluation batch size."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from cl_support import KEEP, tiny_cifar_cfg, write_tiny_cifar

from casdap.continual.runner import run_continual
from casdap.errors import CasdapError


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("decomp") / "cifar")


def _metrics(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


# --------------------------------------------------------------------- the decomposition itself
def test_decomposition_of_a_non_prompt_method_is_implied_by_its_class_prediction():
    from casdap.continual.run_directory import TaskDecomposition

    stream = [SimpleNamespace(current_experience=0, classes_in_this_experience=[0, 1]),
              SimpleNamespace(current_experience=1, classes_in_this_experience=[2, 3])]
    dec = TaskDecomposition(stream)
    logits = torch.tensor([[5.0, 1.0, 0.0, 0.0],   # y=0: right class                 -> TII, WTP
                           [0.0, 1.0, 5.0, 0.0],   # y=0: class 2 (task 1); 1 > 0 in task 0 -> WTP only
                           [1.0, 0.0, 0.0, 5.0],   # y=0: class 3 (task 1); 0 wins in task 0 -> WTP only
                           [0.0, 5.0, 0.0, 0.0]])  # y=0: class 1, task right, class wrong -> TII only
    dec.add(SimpleNamespace(mb_y=torch.tensor([0, 1, 0, 0]), mb_output=logits,
                            experience=SimpleNamespace(current_experience=0)))
    dec.add(SimpleNamespace(mb_y=torch.tensor([3]), mb_output=torch.tensor([[0.0, 0.0, 1.0, 2.0]]),
                            experience=SimpleNamespace(current_experience=1)))
    wtp, tii = dec.rows()
    assert wtp == [3 / 4, 1.0] and tii == [2 / 4, 1.0]


def test_oracle_restricted_dap_has_wtp_equal_to_its_accuracy_and_full_tii(tmp_path, cifar):
    out = tmp_path / "oracle"
    run_continual(tiny_cifar_cfg(cifar, out, "dap", "MODEL.DAP.SELECTION", "oracle",
                                 "MODEL.DAP.RESTRICT_TO_TASK", "True"), progress=False)
    m = _metrics(out)
    assert m["wtp_matrix"] == m["acc_matrix"] and m["wtp"] == m["final_acc"]
    assert m["tii_matrix"] == [[1.0, None], [1.0, 1.0]] and m["tii"] == 1.0
    # the same training selected per image: its WTP is the accuracy the true task's prompts give
    out = tmp_path / "per_image"
    run_continual(tiny_cifar_cfg(cifar, out, "dap", "MODEL.DAP.RESTRICT_TO_TASK", "True"), progress=False)
    per_image = _metrics(out)
    assert per_image["wtp_matrix"] == m["acc_matrix"]
    assert per_image["tii"] < 1.0  # some tasks were missed, so the oracle pass did run


def test_per_image_dap_decomposes_and_compare_shows_it(tmp_path, cifar):
    from casdap.compare.readers import load_continual_run
    from casdap.compare.records import RunGroup
    from casdap.compare.tables import group_table, text_table

    out = tmp_path / "per_image"
    run_continual(tiny_cifar_cfg(cifar, out, "dap", "MODEL.DAP.RESTRICT_TO_TASK", "True"), progress=False)
    m = _metrics(out)
    # restricted to the selected task, an image is right only if its task was inferred and its
    # class is right under its own task's prompts: CIL <= WTP and CIL <= TII, task by task
    for a_row, w_row, t_row in zip(m["acc_matrix"], m["wtp_matrix"], m["tii_matrix"]):
        for a, w, t in zip(a_row, w_row, t_row):
            assert (a is None) == (w is None) == (t is None)
            if a is not None:
                assert a <= w + 1e-12 and a <= t + 1e-12
    # DAP's TII is its key selection: per task here, over the stream (tasks of equal size) there
    assert m["tii"] == pytest.approx(m["task_selection_acc"])
    run = load_continual_run(out)
    assert run.wtp == m["wtp"] and run.tii == m["tii"]
    header, rows = group_table([RunGroup(runs=[run], label="dap")])
    assert "WTP (%)" in header and "TII (%)" in header
    assert rows[0][header.index("TII (%)")] == f"{100 * m['tii']:.2f}"
    assert "WTP (%)" in text_table(header, rows)


def test_prototype_method_gets_the_tii_its_class_prediction_implies(tmp_path, cifar):
    out = tmp_path / "ncm"
    run_continual(tiny_cifar_cfg(cifar, out, "ncm"), progress=False)
    m = _metrics(out)
    for a_row, w_row, t_row in zip(m["acc_matrix"], m["wtp_matrix"], m["tii_matrix"]):
        for a, w, t in zip(a_row, w_row, t_row):
            if a is not None:  # a right class implies a right task and a right class within it
                assert a <= w + 1e-12 and a <= t + 1e-12
    assert m["tii_matrix"][0] == [1.0, None]  # one task seen: its classes are all a prediction can be
    # colour-coded classes: the nearest class mean names every test image's class, so its task and its
    # class within the task too; the summary figures are the last rows' means
    assert m["acc_matrix"] == m["wtp_matrix"] == m["tii_matrix"] == [[1.0, None], [1.0, 1.0]]
    assert m["wtp"] == m["tii"] == m["final_acc"] == 1.0


# ------------------------------------------------------------------ a small DAP strategy by hand
N_CLASSES, N_TASKS = 4, 2


def _benchmark():
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from torch.utils.data import TensorDataset

    def images(per_class: int, seed: int):
        colours = torch.tensor([[1.5, -1.5, 0.0], [-1.5, 1.5, 0.0], [0.0, -1.5, 1.5], [1.5, 1.5, -1.5]])
        y = torch.arange(N_CLASSES).repeat_interleave(per_class)
        g = torch.Generator().manual_seed(seed)
        return colours[y][:, :, None, None] + 0.3 * torch.randn(len(y), 3, 32, 32, generator=g), y

    def dataset(x, y):
        d = TensorDataset(x, y)
        d.targets = y.tolist()
        return d

    train, test = images(8, 1), images(4, 2)
    bench = class_incremental_benchmark({"train": dataset(*train), "test": dataset(*test)},
                                        class_order=list(range(N_CLASSES)), num_experiences=N_TASKS)
    return bench, train[0]


def _strategy(selection: str = "per_image"):
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin

    import casdap
    from casdap.continual.dap_strategy import DAPStrategy
    from casdap.models.dap import CASDAP

    bench, calibration = _benchmark()
    torch.manual_seed(1)
    bb = casdap.create_model("rcvit_xs", num_classes=0, distillation=False)
    for m in bb.modules():  # BatchNorm statistics of the images: features that tell them apart
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
            m.reset_running_stats()
    bb.train()
    with torch.no_grad():
        bb.forward_pooled(calibration)
    model = CASDAP(bb.eval(), num_classes=N_CLASSES, num_tasks=N_TASKS, num_tokens=2, task_emb_dim=8,
                   stages=(3,))
    strategy = DAPStrategy(model=model, optimizer=torch.optim.Adam(model.trainable_parameters(), lr=0.01),
                           train_mb_size=8, train_epochs=1, selection=selection, restrict_to_task=True,
                           evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]))
    return strategy, bench


def test_keys_of_tasks_not_trained_yet_are_never_selected():
    strategy, bench = _strategy()
    model = strategy.model
    strategy.train(bench.train_stream[0])
    # the untrained task's (random) key, made the best match of every test query of task 0
    x = torch.stack([bench.test_stream[0].dataset[i][0] for i in range(len(bench.test_stream[0].dataset))])
    with torch.no_grad():
        model.dap_keys[1] = model.forward_query(x).mean(0)
        assert bool((model.task_similarity(model.forward_query(x)).argmax(1) == 1).all())
    out = model.eval()(x, selection="per_image")
    assert out.key_idx.tolist() == [0] * len(x)
    assert model(x, selection="batch_majority").key_idx.tolist() == [0] * len(x)
    # the trained tasks are part of the model's state: a resumed model selects the same way
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert state["dap_task_predictor.trained"].tolist() == [True, False]
    strategy.train(bench.train_stream[1])
    assert model.dap_task_predictor.trained.tolist() == [True, True]
    assert bool((model.eval()(x, selection="per_image").key_idx == 1).any())  # now it may be chosen
    model.load_state_dict(state)
    assert model(x, selection="per_image").key_idx.tolist() == [0] * len(x)


def test_a_state_dict_from_before_trained_tasks_were_kept_still_loads():
    strategy, _ = _strategy()
    model = strategy.model
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("trained")}
    model.load_state_dict(state)  # strict: the missing buffer reads as "no task marked"
    assert model.dap_task_predictor.trained.tolist() == [False, False]
    strategy.load_own_state({"class_to_task": {0: 0, 1: 0}}, task_classes=[[0, 1], [2, 3]], done=1)
    assert model.dap_task_predictor.trained.tolist() == [True, False]


def test_oracle_selection_with_a_class_never_trained_is_one_clear_error():
    strategy, bench = _strategy(selection="oracle")
    strategy.train(bench.train_stream[0])
    strategy.eval(bench.test_stream[:1])  # trained classes only: fine
    with pytest.raises(CasdapError, match="oracle task selection: .*classes no experience has trained"):
        strategy.eval(bench.test_stream)


# ------------------------------------------------------------------------- weight decay > 0
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_rows_of_earlier_tasks_stay_bit_identical_under_weight_decay(tmp_path, cifar, optimizer):
    """The runner's own optimizer (engine.optim_factory.build_group_optimizer) with decay > 0."""
    out = tmp_path / optimizer
    run_continual(tiny_cifar_cfg(cifar, out, "dap", "SOLVER.OPTIMIZER", optimizer, "SOLVER.WEIGHT_DECAY", "0.05",
                                 "MODEL.DAP.TASK_GENERATORS", "True", "MODEL.DAP.KEYS_PER_TASK", "2", *KEEP),
                  progress=False)
    after = [torch.load(out / "checkpoints" / f"task_{t:03d}.pth", weights_only=False)["model"] for t in (0, 1)]
    rows_of_task0 = {"head.weight": [0, 1], "head.bias": [0, 1], "dap_task_emb.weight": [0],
                     "dap_task_predictor.keys": [0, 1]}
    rows_of_task0.update({k: [0] for k in after[0] if ".task_token_map." in k})
    assert any(".task_token_map." in k for k in rows_of_task0)
    for name, rows in rows_of_task0.items():
        assert torch.equal(after[0][name][rows], after[1][name][rows]), f"{name}: rows of task 0 moved"
    # the task being trained did learn (and decay applies to it)
    assert not torch.equal(after[0]["dap_task_emb.weight"][1], after[1]["dap_task_emb.weight"][1])
    assert not torch.equal(after[0]["head.weight"][2:], after[1]["head.weight"][2:])


# ------------------------------------------------------------------- evaluation batch size
SETTINGS = {
    "dap per_image": ("dap",),
    "dap per_image restricted": ("dap", "MODEL.DAP.RESTRICT_TO_TASK", "True"),
    "dap oracle": ("dap", "MODEL.DAP.SELECTION", "oracle"),
    "dap oracle restricted": ("dap", "MODEL.DAP.SELECTION", "oracle", "MODEL.DAP.RESTRICT_TO_TASK", "True"),
    "dap prompts off": ("dap", "MODEL.DAP.NUM_DAP_TOKENS", "0", "MODEL.DAP.RESTRICT_TO_TASK", "True"),
    "dap keys per task, task generators": ("dap", "MODEL.DAP.KEYS_PER_TASK", "4", "MODEL.DAP.TASK_GENERATORS", "True"),
    "dap gaussian, all classes": ("dap", "MODEL.DAP.TASK_INFERENCE", "gaussian", "MODEL.DAP.PREDICTION", "all",
                                  "MODEL.DAP.KEYS_PER_TASK", "1", "MODEL.DAP.SHRINKAGE", "0.1"),
    "dap head, restricted": ("dap", "MODEL.DAP.TASK_INFERENCE", "head", "MODEL.DAP.PREDICTION", "restrict",
                             "MODEL.DAP.KEYS_PER_TASK", "1", "MODEL.DAP.SHRINKAGE", "0.1"),
    "dap gaussian, soft top-2": ("dap", "MODEL.DAP.TASK_INFERENCE", "gaussian", "MODEL.DAP.PREDICTION", "soft",
                                 "MODEL.DAP.TOP_K", "2", "MODEL.DAP.KEYS_PER_TASK", "1"),
    "dap adapted query copy, lda, all classes": (
        "dap", "MODEL.DAP.QUERY", "adapted", "MODEL.DAP.TASK_INFERENCE", "lda", "MODEL.DAP.PREDICTION", "all",
        "MODEL.DAP.KEYS_PER_TASK", "1", "MODEL.DAP.SHRINKAGE", "0.1"),
    "ncm": ("ncm",),
    "ranpac": ("ranpac",),
    "aper": ("aper",),
    "linear": ("linear",),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_results_do_not_depend_on_the_evaluation_batch_size(tmp_path, cifar, setting):
    method, *extra = SETTINGS[setting]
    metrics = []
    for batch in (1, 100):
        out = tmp_path / f"eval{batch}"
        run_continual(tiny_cifar_cfg(cifar, out, method, *extra, "DATA.EVAL_BATCH_SIZE", str(batch)), progress=False)
        metrics.append(_metrics(out))
    for key in ("acc_matrix", "wtp_matrix", "tii_matrix", "task_selection_acc", "mixed_stream_acc"):
        assert metrics[0][key] == metrics[1][key], key


def test_batch_majority_depends_on_its_batch_by_design_and_is_labelled(tmp_path, cifar):
    from casdap.compare.readers import load_continual_run

    out = tmp_path / "majority"
    run_continual(tiny_cifar_cfg(cifar, out, "dap", "MODEL.DAP.SELECTION", "batch_majority",
                                 "DATA.EVAL_BATCH_SIZE", "1"), progress=False)
    assert _metrics(out)["selection"] == "batch_majority"
    assert "each test batch holds one task and votes on its key" in (out / "final_results.txt").read_text()
    assert "batch-majority" in load_continual_run(out).tags


def test_evaluation_batch_size_defaults_to_the_batch_size_and_refuses_negatives(tmp_path, cifar):
    from casdap.continual.runner import eval_batch_size

    assert eval_batch_size(tiny_cifar_cfg(cifar, tmp_path / "a")) == 8
    assert eval_batch_size(tiny_cifar_cfg(cifar, tmp_path / "a", "dap", "DATA.EVAL_BATCH_SIZE", "3")) == 3
    with pytest.raises(CasdapError, match=r"DATA\.EVAL_BATCH_SIZE must be 0 \(use DATA\.BATCH_SIZE\) or positive"):
        run_continual(tiny_cifar_cfg(cifar, tmp_path / "b", "dap", "DATA.EVAL_BATCH_SIZE", "-1"), progress=False)

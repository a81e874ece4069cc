"""Accuracy pinned end to end: shipped configs at a tiny size, exact matrices for a fixed seed.

Every run starts from the session's demo backbone (tests/conftest.py ``demo_pretraining``: one
pretraining epoch on rendered glyphs, itself pinned below) and compares the accuracy matrix it
wrote to ``metrics.json`` with tests/reference/<name>.json by ``==`` (tests/references.py).
The runs are deterministic on one thread: the same matrix in a fresh process, and under
pytest-xdist as scripts/test.sh runs the suite. No tolerance is allowed: a prediction that moves
anywhere moves a cell. A change that moves them on purpose regenerates the files with
``bash scripts/update_references.sh`` and says why in its commit.

A matrix alone cannot see a change that moves no prediction. On a tenth of the digits each task
trains a single step, so the prompts stay near their start and L2P's and DualPrompt's rows come
from their heads: measured, their matrices are unchanged when the key pull changes sign, and
even when every image takes its farthest prompts instead of its nearest. CODA-Prompt's matrix
does not move with the sign of its orthogonality penalty or of its component weights, nor the
reduced embedded_shift run's with the sign of its task Gaussians' log-determinant. So every run
also pins the sha256 of its final checkpoint's weights (every tensor of the model's state dict):
a change anywhere in what is trained or kept moves it.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from references import check_reference, weights_digest

from casdap.checkpoint import read_checkpoint
from casdap.config import load_config
from casdap.continual.runner import run_continual

pytestmark = pytest.mark.reference

# A tenth of the digits' training images (the test set whole), one epoch a task.
DIGITS_SHORT = ["DATA.PERCENTAGE", "0.1", "SOLVER.TOTAL_EPOCH", "1"]
# embedded_shift.yaml as shipped, but on a tenth of the training renders (test renders whole), one
# epoch a task, and its 100 classes in 2 tasks of 50 instead of 10 of 10 (evaluating 10 tasks is
# most of a run's cost); the task-embedding rows and key groups follow the task count.
SHIFT_SHORT = ["DATA.PERCENTAGE", "0.1", "SOLVER.TOTAL_EPOCH", "1", "CONTINUAL.N_TASKS", "2",
               "CONTINUAL.INITIAL", "50", "CONTINUAL.INCREMENT", "50", "MODEL.DAP.NUM_TASKS_FOR_EMB", "2",
               "MODEL.DAP.PROMPT_POOL", "2"]
# DAP's reference settings on that stream, as the comment in embedded_shift.yaml lists them.
DAP_REFERENCE = ["MODEL.DAP.QUERY", "frozen", "MODEL.DAP.PROMPT_BACKBONE", "pretrained", "MODEL.DAP.TASK_INFERENCE",
                 "keys", "MODEL.DAP.KEYS_PER_TASK", "16", "MODEL.DAP.PREDICTION", "None",
                 "MODEL.DAP.RESTRICT_TO_TASK", "True"]

RUNS = {  # name -> (config file, overrides)
    "digits_dap": ("configs/dap/digits.yaml", DIGITS_SHORT),
    "digits_l2p": ("configs/dap/l2p_digits.yaml", DIGITS_SHORT),
    "digits_dualprompt": ("configs/dap/dualprompt_digits.yaml", DIGITS_SHORT),
    "digits_coda_prompt": ("configs/dap/coda_prompt_digits.yaml", DIGITS_SHORT),
    "digits_ncm": ("configs/dap/digits.yaml", ["MODEL.TRANSFER_TYPE", "ncm", *DIGITS_SHORT]),
    "digits_linear": ("configs/dap/digits.yaml", ["MODEL.TRANSFER_TYPE", "linear", *DIGITS_SHORT]),
    "digits_slda_first_session": ("configs/dap/digits.yaml", ["MODEL.TRANSFER_TYPE", "slda",
                                                              "BASELINES.FIRST_SESSION", "True", *DIGITS_SHORT]),
    "digits_aper": ("configs/dap/digits.yaml", ["MODEL.TRANSFER_TYPE", "aper", *DIGITS_SHORT]),
    "digits_fecam": ("configs/dap/digits.yaml", ["MODEL.TRANSFER_TYPE", "fecam", *DIGITS_SHORT]),
    "embedded_shift": ("configs/dap/embedded_shift.yaml", SHIFT_SHORT),
    "embedded_shift_dap_reference": ("configs/dap/embedded_shift.yaml", [*SHIFT_SHORT, *DAP_REFERENCE]),
}
SEED = 0
BACKBONE = "the session's demo backbone (tests/conftest.py demo_pretraining)"


def demo_backbone(demo_pretraining) -> Path:
    return demo_pretraining[0] / "model" / "rcvit_xs.pth"


def test_demo_backbone_is_pinned(request, demo_pretraining):
    """The backbone every pinned run starts from: ``casdap demo --pretrain-epochs 1`` gives the same
    weights every time, so a moved matrix below is the method's doing, not the pretraining's."""
    state = torch.load(demo_backbone(demo_pretraining), map_location="cpu", weights_only=True)["model"]
    record = {"command": "casdap demo --pretrain-epochs 1 --methods ncm SOLVER.TOTAL_EPOCH 1 DATA.PERCENTAGE 0.1"}
    check_reference(request, "demo_backbone", record, {"weights_sha256": weights_digest(state)})


@pytest.mark.slow  # 11 runs, 70 CPU seconds in all (the first embedded_shift run renders the stream: 5 s)
@pytest.mark.parametrize("name", list(RUNS))
def test_accuracy_matrix_is_pinned(request, tmp_path, demo_pretraining, name):
    config, overrides = RUNS[name]
    out = tmp_path / "run"
    cfg = load_config(ROOT / config, ["MODEL.WEIGHT_PATH", str(demo_backbone(demo_pretraining)), "DEVICE", "cpu",
                                      "SEED", str(SEED), "OUTPUT_DIR", str(out), *overrides])
    run_continual(cfg, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and metrics["seed"] == SEED
    # the final weights too: at this size a change on the prompt side can leave every prediction as it
    # was (the module docstring lists the breaks the matrices alone missed), never every weight
    final = out / "checkpoints" / f"task_{len(metrics['acc_matrix']) - 1:03d}.pth"
    weights = weights_digest(read_checkpoint(final)["model"])
    record = {"config": config, "overrides": overrides, "seed": SEED, "backbone": BACKBONE}
    check_reference(request, name, record, {"acc_matrix": metrics["acc_matrix"], "weights_sha256": weights})

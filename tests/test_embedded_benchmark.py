"""The README's headline result on the embedded default, on a shortened protocol."""

import json
import sys

import pytest
from cl_support import DIGITS_YAML, run_casdap
from conftest import copy_demo_backbone
from references import check_reference

# 2 epochs per task on half the digits' training images (the test sets whole): the ordering of the
# three settings is the same as on the full stream (dap 0.956, ncm 0.895, reference 0.592)
SHORT = ["SOLVER.TOTAL_EPOCH", "2", "DATA.PERCENTAGE", "0.5"]
REFERENCE = ["MODEL.DAP.KEYS_PER_TASK", "1", "MODEL.DAP.RESTRICT_TO_TASK", "False"]


def _metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.slow  # digits runs of three methods (about 25 s idle)
@pytest.mark.reference
def test_dap_with_key_pool_beats_ncm_and_reference_settings_do_not(request, tmp_path, demo_pretraining):
    """The session's demo backbone (pretrained 1 epoch on glyphs), then SHORT (measured: dap 0.926,
    ncm 0.860, DAP's reference settings 0.543). digits.yaml's 16 keys per task with restricted logits
    must beat nearest class mean on the same frozen backbone; one key per task with all logits must not.
    The three accuracy matrices are pinned exactly (tests/reference/embedded_benchmark_*.json)."""
    out = tmp_path / "demo"
    copy_demo_backbone(demo_pretraining[0], out)
    cmd = [sys.executable, "-m", "casdap", "demo", "--out", str(out), "--pretrain-epochs", "1", "--methods", "dap,ncm",
           *SHORT]
    done = run_casdap(cmd, cwd=tmp_path)  # in this process: no start-up imports
    assert done.returncode == 0, done.stderr[-3000:]
    ref = tmp_path / "reference"
    cmd = [sys.executable, "-m", "casdap", "cl", "--config-file", str(DIGITS_YAML), "--no-progress", "--output_dir",
           str(ref), "MODEL.WEIGHT_PATH", str(out / "model" / "rcvit_xs.pth"), *SHORT,
           *REFERENCE]
    done = run_casdap(cmd, cwd=tmp_path)  # in this process: no start-up imports
    assert done.returncode == 0, done.stderr[-3000:]
    from casdap.cli.demo import run_folder

    runs = {"dap": _metrics(run_folder(out, "dap", 0, SHORT)), "ncm": _metrics(run_folder(out, "ncm", 0, SHORT)),
            "reference": _metrics(ref)}
    for name, m in runs.items():
        record = {"config": "configs/dap/digits.yaml",
                  "overrides": [*SHORT, *(["MODEL.TRANSFER_TYPE", name] if name == "ncm" else []),
                                *(REFERENCE if name == "reference" else [])],
                  "seed": m["seed"], "backbone": "the session's demo backbone (tests/conftest.py demo_pretraining)"}
        check_reference(request, f"embedded_benchmark_{name}", record, {"acc_matrix": m["acc_matrix"]})
    final = {name: m["final_acc"] for name, m in runs.items()}
    assert final["reference"] < final["ncm"] < final["dap"], final
    assert runs["dap"]["task_selection_acc"] > 0.9

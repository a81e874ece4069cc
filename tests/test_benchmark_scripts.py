"""Every script in benchmarks/ runs: the Python ones on tiny settings, the shell ones parse."""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import subprocess
import sys

import pytest
from conftest import ROOT

BENCHMARKS = ROOT / "benchmarks"


def _run(script: str, *args: str, cwd) -> str:
    """``python benchmarks/SCRIPT ARGS`` run in this process, from ``cwd``: its ``__main__`` block with
    that argv, its stdout returned (a nonzero exit raises its SystemExit). A fresh process would spend
    most of these tiny runs importing torch, timm and Avalanche (about 10 CPU seconds each); the
    scripts import nothing from their own folder, and use one torch thread as this session does."""
    path = BENCHMARKS / script
    out, argv, here = io.StringIO(), sys.argv, os.getcwd()
    sys.argv = [str(path), *args]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out):
            try:
                runpy.run_path(str(path), run_name="__main__")
            except SystemExit as e:
                if e.code not in (None, 0):
                    raise  # a refusal: SystemExit with the script's message
    finally:
        sys.argv = argv
        os.chdir(here)
    return out.getvalue()


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.sh")))
def test_shell_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(BENCHMARKS / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_python_script_has_a_test_here():
    source = (ROOT / "tests" / "test_benchmark_scripts.py").read_text()
    assert all(f'"{p.name}"' in source for p in BENCHMARKS.glob("*.py"))


def test_dap_cost(tmp_path):
    out = _run("dap_cost.py", "--config", "configs/dap/digits.yaml", "--sizes", "32", "--batch", "2", "--reps", "2",
               "--min-time", "0.01", cwd=tmp_path)
    assert "params: trainable" in out and "32px batch 2: CAS-DAP" in out and "ratio" in out
    out = _run("dap_cost.py", "--config", "configs/dap/coda_prompt_digits.yaml", "--sizes", "32", "--batch", "2",
               "--reps", "2", "--min-time", "0.01", cwd=tmp_path)
    assert "coda_prompt on rcvit_xs" in out and "32px batch 2: coda_prompt" in out and "ratio" in out
    out = _run("dap_cost.py", "--config", "configs/dap/embedded_shift.yaml", "--sizes", "32", "--batch", "4",
               "--reps", "2", "--min-time", "0.01", "--tasks", "3", "--gathered", cwd=tmp_path)
    assert "32px batch 4, 3 tasks: CAS-DAP" in out and "CAS-DAP / CAS-DAP gathered" in out


def test_frozen_fold_cost(tmp_path):
    out = _run("frozen_fold_cost.py", "--config", "configs/dap/embedded_shift.yaml", "--steps", "1", "--reps", "1",
               "--opts", "MODEL.RANDOM_INIT", "True", "DATA.BATCH_SIZE", "4", cwd=tmp_path)
    assert "folded_cl: max abs logit difference to unfolded" in out
    assert "train folded_cl" in out and "eval  folded" in out and "/ unfolded: wall" in out


def test_dap_injection_proxy(tmp_path):
    out = _run("dap_injection_proxy.py", "--seeds", "0", "--epochs", "1", "--pretrain-epochs", "1",
               "--max-images", "48", cwd=tmp_path)
    assert "linear probe (prompts off)" in out and "mean over seeds [0]: kv, stages [1,2,3]" in out


def test_embedded_shift_probe(tmp_path):
    out = _run("embedded_shift_probe.py", "--random-init", "--seeds", "0", "--train-per-class", "3",
               "--test-per-class", "2", "--out", str(tmp_path / "probe.jsonl"), cwd=tmp_path)
    row = json.loads((tmp_path / "probe.jsonl").read_text())
    assert row["backbone"] == "random init" and (row["train_per_class"], row["test_per_class"]) == (3, 2)
    # the oracle within-task figure is the mean over the 10 tasks of a probe's hits on each task's 20 test
    # images (10 classes of 2); the class-incremental one hits over all 200
    per_task = row["oracle_linear_per_task"]
    assert len(per_task) == 10 and all(v * 20 == pytest.approx(round(v * 20)) for v in per_task)
    assert row["oracle_linear_within_task"] == pytest.approx(sum(per_task) / 10, abs=5e-4)  # per task: 3 decimals
    assert row["ncm_class_incremental"] * 200 == pytest.approx(round(row["ncm_class_incremental"] * 200))
    assert "domain_probe" in out


def test_pretrain_sources(tmp_path):
    rows = tmp_path / "sources.jsonl"
    _run("pretrain_sources.py", "--source", "letters", "--epochs", "1", "--images-per-class", "1", "--seeds", "0",
         "--out", str(rows), cwd=tmp_path)
    assert json.loads(rows.read_text())["classes"] == 52
    table = _run("pretrain_sources.py", "--table", "--out", str(rows), cwd=tmp_path)
    assert table.splitlines()[2].startswith("| letters | 52 | 1 x 1 |")


def test_ranpac_proj_dim(tmp_path):
    out = _run("ranpac_proj_dim.py", "--dims", "50", "--seeds", "0", "--opts", "MODEL.RANDOM_INIT", "True",
               "DATA.PERCENTAGE", "0.3", cwd=tmp_path)
    assert "seed 0 M    50: held-out accuracy" in out


def test_dap_task_inference_validation(tmp_path):
    out = _run("dap_task_inference_validation.py", "--config-file", "configs/dap/digits.yaml", "--grid", "0.1", "1.0",
               "--opts", "MODEL.RANDOM_INIT", "True", "DATA.VALIDATION", "0.2", "DATA.PERCENTAGE", "0.3",
               cwd=tmp_path)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["predictor"] == "gaussian" and result["best_shrinkage"] in (0.1, 1.0)
    assert all(len(r["per_task"]) == 5 for r in result["results"].values())


def test_dap_task_inference_validation_on_an_adapted_query(tmp_path):
    """``--query-checkpoint``: the query backbone comes from a run's checkpoint (here one whose adapted
    query is the model's backbone), and a checkpoint with no adapted query is refused."""
    import torch

    from casdap.models.casvit import rcvit_xs
    from casdap.models.dap import CASDAP

    torch.manual_seed(0)
    model = CASDAP(rcvit_xs(num_classes=0), num_classes=10, num_tasks=5, query="adapted", prompt_backbone="adapted")
    torch.save({"model": model.state_dict()}, tmp_path / "not_yet.pth")
    model.start_adaptation()
    model.finish_adaptation()
    torch.save({"model": model.state_dict()}, tmp_path / "adapted.pth")
    args = ["--config-file", "configs/dap/digits.yaml", "--predictor", "lda", "--grid", "0.1",
            "--opts", "MODEL.RANDOM_INIT", "True", "DATA.VALIDATION", "0.2", "DATA.PERCENTAGE", "0.3"]
    out = _run("dap_task_inference_validation.py", *args[:6], "--query-checkpoint", str(tmp_path / "adapted.pth"),
               *args[6:], cwd=tmp_path)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["predictor"] == "lda" and len(result["results"]["0.1"]["per_task"]) == 5
    with pytest.raises(SystemExit, match="not_yet.pth: no adapted query in this checkpoint"):
        _run("dap_task_inference_validation.py", *args[:6], "--query-checkpoint", str(tmp_path / "not_yet.pth"),
             *args[6:], cwd=tmp_path)


def test_fecam_ablation(tmp_path):
    """``fecam_ablation.py ablate`` on cached features (here drawn: 4 classes in 2 tasks): every row of
    the factorial, and the project's fecam is the factorial's FeCAM with the statistics of the
    normalised features (its ViT script's order), at every shrinkage it was scored with."""
    import torch

    gen = torch.Generator().manual_seed(0)
    centres, scale = 2 * torch.randn(4, 6, generator=gen), 0.5 + torch.rand(6, generator=gen)

    def draw(n):
        y = torch.arange(4).repeat_interleave(n)
        return (centres[y] + torch.randn(len(y), 6, generator=gen) * scale).float(), y

    (tx, ty), (qx, qy) = draw(30), draw(10)
    torch.save({"train_x": tx, "train_y": ty, "test_x": qx, "test_y": qy, "task_classes": [[0, 1], [2, 3]],
                "checkpoint": "drawn", "seed": 0, "first_session": False, "method": "fecam"}, tmp_path / "f.pt")
    out = _run("fecam_ablation.py", "ablate", "f.pt", "--json", "o.json", "--sections", "table,steps", cwd=tmp_path)
    assert "after each task: l2 stats, corr, no logdet (fecam now)" in out
    rows = {r["variant"]: r for r in json.loads((tmp_path / "o.json").read_text())["rows"]}
    assert len(rows) == 3 + 3 * 2 * 2 * 3  # the three anchors and the factorial
    ours, factorial = rows["project fecam (FeCAMClassifier), s fixed"], rows["l2 stats corr on  logdet off fecam"]
    assert ours["test_by_s"]["1.0"] == factorial["test_by_s"]["1.0"]
    assert ours["held_out_by_s"]["1.0"] == factorial["held_out_by_s"]["1.0"]


def test_tfds_reading(tmp_path):
    out = _run("tfds_reading.py", "--images", "40", "--sample", "10", "--repeats", "1", "--size", "32",
               "--same-process", "--out", str(tmp_path / "data"), cwd=tmp_path)
    rows = [line for line in out.splitlines() if line.startswith("| tfds |") or line.startswith("| folder |")]
    assert [r.split("|")[1:3] for r in rows] == [[" tfds ", " 40 "], [" folder ", " 40 "]]
    assert not (tmp_path / "data").exists()  # the generated data is deleted


def test_fusion_weight_validation(tmp_path):
    from cl_support import tiny_cifar_cfg, write_tiny_cifar

    cfg = tiny_cifar_cfg(write_tiny_cifar(tmp_path / "cifar"), tmp_path / "val", "dap", "DATA.VALIDATION", "0.25")
    (tmp_path / "val.yaml").write_text(cfg.dump())
    out = _run("fusion_weight_validation.py", "--config-file", str(tmp_path / "val.yaml"), "--weights", "0", "1",
               cwd=tmp_path)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["best_weight"] in (0.0, 1.0) and set(result["final_acc"]) == {"0.0", "1.0", "query_alone"}
    assert (tmp_path / "val" / "fusion_weights.json").is_file()


def test_factorial_rows():
    """The factorial table's rows ("factorial_rows.py"; "factorial.py" runs end to end in
    tests/test_factorial.py): one per folder, each prompt source under both pipelines."""
    import runpy

    rows = runpy.run_path(str(BENCHMARKS / "factorial_rows.py"))["ROWS"]
    names = [r.name for r in rows]
    assert len(set(names)) == len(names) and all("/" not in n for n in names)
    for source in ("none", "static", "dap", "l2p", "dualprompt", "coda_prompt"):
        assert {f"published-{source}", f"shared-{source}"} <= set(names)

"""casdap installed as a wheel works away from the checkout: configs ship inside the package and
``--config-file`` finds them by name; a user's own file of the same name wins."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

from casdap.config import load_config, resolve_config_file, shipped_config, shipped_config_dir, shipped_configs
from casdap.errors import CasdapError

SHIPPED = ["base-dap.yaml", "dap/chestx.yaml", "dap/cifar.yaml", "dap/coda_prompt_digits.yaml",
           "dap/coda_prompt_embedded_shift.yaml", "dap/cropdisease.yaml", "dap/digits.yaml", "dap/domainnet.yaml",
           "dap/dualprompt_digits.yaml", "dap/dualprompt_embedded_shift.yaml", "dap/embedded_domains.yaml",
           "dap/embedded_shift.yaml",
           "dap/eurosat.yaml", "dap/imagenet_r.yaml", "dap/isic.yaml", "dap/l2p_digits.yaml",
           "dap/l2p_embedded_shift.yaml", "dap/pets.yaml", "dap/resisc45.yaml", "streams/digits.yaml",
           "streams/embedded_domains.yaml", "streams/embedded_shift.yaml"]


def test_every_config_of_the_checkout_is_shipped():
    on_disk = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert on_disk == SHIPPED == shipped_configs()


@pytest.mark.parametrize("name", ["digits", "digits.yaml", "dap/digits.yaml", "configs/dap/digits.yaml"])
def test_shipped_config_by_name(name):
    assert shipped_config(name) == shipped_config_dir() / "dap" / "digits.yaml"


def test_config_file_by_name_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/dap/digits.yaml")  # its _BASE_ chain resolves next to the shipped file
    assert cfg.DATA.NAME == "digits" and cfg.SOLVER.OPTIMIZER == "adam" and cfg.MODEL.DAP.KEYS_PER_TASK == 16


def test_users_own_file_wins_over_the_shipped_one(tmp_path, monkeypatch):
    own = tmp_path / "configs" / "dap" / "digits.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("SEED: 7\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_config_file("configs/dap/digits.yaml") == Path("configs/dap/digits.yaml")
    assert load_config("configs/dap/digits.yaml").SEED == 7


def test_unknown_config_names_what_ships(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CasdapError, match=r"config file 'configs/dap/cifr.yaml' does not exist.*dap/cifar.yaml"):
        load_config("configs/dap/cifr.yaml")
    with pytest.raises(CasdapError, match="does not exist"):
        resolve_config_file("../digits.yaml")


# -- the wheel, installed into a fresh environment (the installed_wheel fixture of conftest.py) --------


@pytest.mark.slow  # the session's wheel build and install
def test_the_wheel_ships_every_config(installed_wheel):
    names = zipfile.ZipFile(installed_wheel["wheel"]).namelist()
    assert all(f"casdap/configs/{n}" in names for n in SHIPPED)


@pytest.mark.slow  # about 25 s: the wheel's build and install (once a session), then a 2-task run
def test_wheel_installs_and_runs_outside_the_checkout(installed_wheel):
    venv, env, work = (installed_wheel[k] for k in ("venv", "env", "work"))
    start = time.perf_counter()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import casdap; print(casdap.__file__)"],
                           cwd=work, env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where

    casdap = str(venv / "bin" / "casdap")
    for command in ("demo", "bench"):
        proc = subprocess.run([casdap, command, "--help"], cwd=work, env=env, capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: casdap " + command in proc.stdout, proc.stderr[-2000:]

    run = subprocess.run([casdap, "cl", "--config-file", "configs/dap/digits.yaml", "--no-progress",
                          "MODEL.RANDOM_INIT", "True", "MODEL.MODEL_ROOT", str(work / "no-backbone"),
                          "DATA.PERCENTAGE", "0.1", "SOLVER.TOTAL_EPOCH", "1", "CONTINUAL.INITIAL", "5",
                          "CONTINUAL.INCREMENT", "5", "CONTINUAL.N_TASKS", "2", "MODEL.DAP.PROMPT_POOL", "2",
                          "MODEL.DAP.NUM_TASKS_FOR_EMB", "2",
                          "OUTPUT_DIR", "run"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["finished"] and metrics["tasks_done"] == 2
    print(f"installed wheel: --help x2 and a 2-task digits run in {time.perf_counter() - start:.1f} s")


@pytest.mark.slow  # about a minute: the CUDA tests (all skipped on CPU), the CLI tests, two tiny casdap bench runs
def test_gpu_procedure_runs_on_the_installed_wheel(installed_wheel, tmp_path):
    """benchmarks/gpu.sh --cpu-smoke on the wheel's environment: its flow, its test step (the CUDA tests
    skip, the command line's tests run on the installed package) and its casdap bench command lines
    work (the offline install is tests/test_wheelhouse.py's; here it is a stand-in)."""
    venv, env = installed_wheel["venv"], installed_wheel["env"]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "install.py").write_text("print('casdap is installed already')\n")
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(wheels), str(out), "--cpu-smoke",
                           "--venv", str(venv), "--python", sys.executable, "--budget-s", "400"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + "".join(
        f"\n--- {p.name}\n" + p.read_text()[-2000:] for p in sorted(out.glob("*.log")))
    tests = (out / "cuda_tests.log").read_text()
    assert re.search(r"\b1 passed, \d+ skipped\b", tests), tests[-2000:]  # tests/test_cli.py ran, on CPU
    result = json.loads((out / "bench.json").read_text())
    variants = {(r["mode"], r["variant"]) for r in result["results"]}
    assert {("train", "amp_bf16"), ("infer", "amp_bf16"), ("infer", "casdap_fast"), ("train", "cl")} <= variants
    assert "| rcvit_xs | 32 | infer | folded_cl |" in (out / "bench_compiled.md").read_text()

import subprocess
import sys

import pytest
from cl_support import DIGITS_YAML

from casdap.config import load_config
from casdap.config import validate as v
from casdap.continual.methods import METHOD_NAMES, check_config, checks
from casdap.errors import CasdapError


def test_validate_knows_the_names_the_modules_accept():
    from casdap.continual.benchmarks import DATASETS
    from casdap.continual.plugins import LRSchedulePlugin
    from casdap.continual.runner import METHODS
    from casdap.models.dap import INJECTIONS, SELECTIONS

    assert set(METHOD_NAMES) == set(METHODS)
    assert set(DATASETS) <= set(v.DATASET_NAMES)
    assert set(v.SCHEDULERS) == set(LRSchedulePlugin.KINDS)
    from casdap.engine.optim_factory import DAP_OPTIMIZERS

    assert set(v.OPTIMIZERS) == set(DAP_OPTIMIZERS)
    assert set(checks.INJECTION_NAMES) == set(INJECTIONS) and set(checks.SELECTION_NAMES) == set(SELECTIONS)


@pytest.mark.parametrize("overrides, message", [
    (["MODEL.TRANSFER_TYPE", "magic"], "unknown method MODEL.TRANSFER_TYPE 'magic'"),
    (["SOLVER.SCHEDULER", "step"], "unknown SOLVER.SCHEDULER 'step'"),
    (["SOLVER.OPTIMIZER", "lamb"], "unknown SOLVER.OPTIMIZER 'lamb'"),
    (["SOLVER.TOTAL_EPOCH", "0"], "SOLVER.TOTAL_EPOCH must be at least 1, got 0"),
    (["DATA.VALIDATION", "1.0"], "DATA.VALIDATION must be in"),
    (["MODEL.DAP.INJECTION", "prefix"], "unknown MODEL.DAP.INJECTION 'prefix'"),
    (["MODEL.DAP.PROMPT_POOL", "3", "MODEL.DAP.NUM_TASKS_FOR_EMB", "3"], "smaller than CONTINUAL.N_TASKS"),
    (["MODEL.DAP.STAGES", "[4]"], "MODEL.DAP.STAGES must name stages 0..3"),
    (["MODEL.TRANSFER_TYPE", "replay", "BASELINES.REPLAY_MEM_SIZE", "0"],
     "BASELINES.REPLAY_MEM_SIZE must be at least 1"),
])
def test_bad_settings_are_one_clear_error(overrides, message):
    with pytest.raises(CasdapError, match=message.replace("(", r"\(").replace("[", r"\[")):
        check_config(load_config(DIGITS_YAML, overrides))


def test_shipped_configs_are_valid():
    for name in ("digits", "embedded_shift", "cifar", "imagenet_r"):
        check_config(load_config(DIGITS_YAML.parent / f"{name}.yaml"))


def test_casdap_cl_reports_a_bad_value_before_importing_torch():
    code = ("import sys; from casdap.cli import main\n"
            "rc = main(['cl', '--config-file', sys.argv[1], 'MODEL.DAP.INJECTION', 'prefix'])\n"
            "print('exit', rc, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, str(DIGITS_YAML)], capture_output=True, text=True)
    assert out.stdout.startswith("exit ") and out.stdout.split()[1] != "0", out.stdout + out.stderr
    assert out.stdout.split()[2] == "False", "torch was imported before the error"
    assert "unknown MODEL.DAP.INJECTION 'prefix'" in out.stderr


def test_method_names_and_checks_come_from_the_registry_without_importing_torch():
    code = ("import sys; from casdap.config import load_config; "
            "from casdap.continual.methods import METHODS, METHOD_NAMES, check_config, method_keys; "
            "cfg = load_config(sys.argv[1], reads=method_keys); check_config(cfg); "
            "print('torch' in sys.modules, list(METHOD_NAMES) == list(METHODS))")
    out = subprocess.run([sys.executable, "-c", code, str(DIGITS_YAML)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_every_registered_method_module_defines_its_method_and_the_runner_names_none():
    from conftest import ROOT

    from casdap.continual.methods import METHOD_NAMES, get_method
    from casdap.continual.methods.base import Method

    for name in METHOD_NAMES:
        method = get_method(name)
        assert isinstance(method, Method) and method.name == name
        assert callable(method.build_strategy) and isinstance(method.run_fields(load_config(DIGITS_YAML)), dict)
    assert get_method("DAP") is get_method("dap")  # names in any case, as validate reads them
    with pytest.raises(CasdapError, match="unknown method MODEL.TRANSFER_TYPE 'magic'"):
        get_method("magic")
    runner = (ROOT / "casdap" / "continual" / "runner.py").read_text()
    assert not [n for n in METHOD_NAMES if f'"{n}"' in runner]  # no per-method branch


def test_names_are_compared_in_any_case_by_validate_and_the_run():
    from casdap.continual.runner import _resolved

    cfg = load_config(DIGITS_YAML, ["MODEL.TRANSFER_TYPE", "DAP", "MODEL.DAP.SELECTION", "Per_Image",
                                    "SOLVER.SCHEDULER", "Cosine", "SOLVER.OPTIMIZER", "AdamW"])
    v.validate(cfg)
    run = _resolved(cfg, 10, "out")
    assert (run.MODEL.TRANSFER_TYPE, run.MODEL.DAP.SELECTION, run.SOLVER.SCHEDULER, run.SOLVER.OPTIMIZER) == (
        "dap", "per_image", "cosine", "adamw")

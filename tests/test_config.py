import pytest
from cl_support import DIGITS_YAML
from conftest import ROOT

from casdap import CasdapError
from casdap.config import config_keys, load_config

DAP_BASE = """NUM_GPUS: 1
NUM_SHARDS: 1
OUTPUT_DIR: ""
RUN_N_TIMES: 1
MODEL:
  TYPE: "vit"
  TRANSFER_TYPE: "dap"
  MODEL_ROOT: "./model"
  DAP:
    CURRENT_LAMBDA: 1.0
    SIM_LAMBDA: 0.1
    NUM_DAP_TOKENS: 10
    TASK_EMB: 16
SOLVER:
  BASE_LR: 0.01
  OPTIMIZER: 'adam'
  MOMENTUM: 0.9
  BETA1: 0.9
  BETA2: 0.9
  WEIGHT_DECAY: 0.0
  WARMUP_EPOCH: 0
  TOTAL_EPOCH: 30
  SCHEDULER: "linear"
  GRAD_CLIP: 1.
  GRAD_CLIP_APPLY: True
  PATIENCE: 300
  LOSS: "softmax"
  LOG_EVERY_N: 100
DATA:
  NAME: ""
  NUMBER_CLASSES: -1
  BATCH_SIZE: 128
  DATAPATH: "./dataset"
  FEATURE: "sup_vitb16_imagenet21k"
"""

DAP_CIFAR = """_BASE_: "../base-dap.yaml"
CONTINUAL:
  INITIAL: 10
  INCREMENT: 10
  N_TASKS: 10
DATA:
  NAME: "cifar100"
  NUMBER_CLASSES: 100
MODEL:
  DAP:
    NUM_TASKS_FOR_EMB: 10
    PROMPT_POOL: 10
SOLVER:
  TOTAL_EPOCH: 5
SEED: 42
OUTPUT_DIR: "./results/seed42"
"""


def test_dap_reference_layout_loads_unchanged(tmp_path):
    (tmp_path / "dap").mkdir()
    (tmp_path / "base-dap.yaml").write_text(DAP_BASE)
    (tmp_path / "dap" / "cifar.yaml").write_text(DAP_CIFAR)
    cfg = load_config(tmp_path / "dap" / "cifar.yaml")
    assert cfg.SEED == 42 and cfg.SOLVER.OPTIMIZER == "adam" and cfg.SOLVER.TOTAL_EPOCH == 5
    assert cfg.MODEL.DAP.SIM_LAMBDA == 0.1 and cfg.MODEL.DAP.PROMPT_POOL == 10
    assert (cfg.CONTINUAL.INITIAL, cfg.CONTINUAL.INCREMENT, cfg.CONTINUAL.N_TASKS) == (10, 10, 10)


@pytest.mark.parametrize("name", ["../base-dap", "cifar", "imagenet_r", "digits"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / "dap" / f"{name}.yaml")
    assert cfg.MODEL.BACKBONE == "rcvit_xs" and cfg.SOLVER.OPTIMIZER == ("sgd" if name == "imagenet_r" else "adam")
    assert cfg.OUTPUT_DIR == ""  # the run folder follows data set, method and seed


def test_shipped_cifar_is_ten_tasks_of_ten():
    cfg = load_config(ROOT / "configs" / "dap" / "cifar.yaml")
    assert (cfg.DATA.NAME, cfg.DATA.NUMBER_CLASSES, cfg.CONTINUAL.INCREMENT, cfg.CONTINUAL.N_TASKS) == (
        "cifar100", 100, 10, 10)


def test_overrides_after_file_win_and_are_typed():
    cfg = load_config(ROOT / "configs" / "dap" / "digits.yaml",
                      ["SOLVER.BASE_LR", "1", "MODEL.DAP.STAGES", "[3]", "MODEL.BACKBONE", "rcvit_s"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.MODEL.DAP.STAGES == [3] and cfg.MODEL.BACKBONE == "rcvit_s"
    assert cfg.is_frozen()


def test_unknown_key_in_file_names_closest(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("MODEL:\n  DAP:\n    SIM_LAMDA: 0.2\n")
    with pytest.raises(CasdapError, match=r"'MODEL.DAP.SIM_LAMDA'.*Did you mean 'MODEL.DAP.SIM_LAMBDA'"):
        load_config(f)


def test_unknown_override_and_missing_value():
    with pytest.raises(CasdapError, match="Did you mean 'SOLVER.BASE_LR'"):
        load_config(None, ["SOLVER.BASE_LRR", "0.1"])
    with pytest.raises(CasdapError, match="KEY VALUE pairs"):
        load_config(None, ["SOLVER.BASE_LR"])


def test_wrong_type_names_key(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("SOLVER:\n  TOTAL_EPOCH: five\n")
    with pytest.raises(CasdapError, match="'SOLVER.TOTAL_EPOCH'.*must be int"):
        load_config(f)


def test_missing_base_file(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text('_BASE_: "nope.yaml"\n')
    with pytest.raises(CasdapError, match="_BASE_ 'nope.yaml'"):
        load_config(f)


def test_malformed_yaml_and_missing_file(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("MODEL: [unclosed\n")
    with pytest.raises(CasdapError, match="not valid YAML") as err:
        load_config(f)
    assert "\n" not in str(err.value) and "(line 2, column 1)" in str(err.value)
    with pytest.raises(CasdapError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_every_key_has_full_name():
    keys = config_keys()
    assert "MODEL.DAP.NUM_DAP_TOKENS" in keys and "CONTINUAL.N_TASKS" in keys and "SEED" in keys


DAP_IMAGENET_R = """_BASE_: "../base-dap.yaml"
CONTINUAL:
  INITIAL: 20
  INCREMENT: 20
  N_TASKS: 10
DATA:
  NAME: "imagenet_r"
  NUMBER_CLASSES: 200
MODEL:
  DAP:
    SIM_LAMBDA: 2.0
    NUM_DAP_TOKENS: 30
    TASK_EMB: 64
    NUM_TASKS_FOR_EMB: 10
    PROMPT_POOL: 10
SOLVER:
  BASE_LR: 0.25
  OPTIMIZER: 'sgd'
  TOTAL_EPOCH: 20
SEED: 42
OUTPUT_DIR: "./results/seed42"
"""


def test_dap_reference_files_keep_their_dataset_meaning(tmp_path):
    """As in DAP's code, imagenet_r restricts logits to the selected task and leaves the last block
    unprompted; other data sets do neither; a file or override that says otherwise wins."""
    (tmp_path / "dap").mkdir()
    (tmp_path / "base-dap.yaml").write_text(DAP_BASE)
    (tmp_path / "dap" / "imagenetr.yaml").write_text(DAP_IMAGENET_R)
    (tmp_path / "dap" / "cifar.yaml").write_text(DAP_CIFAR)
    r = load_config(tmp_path / "dap" / "imagenetr.yaml")
    assert (r.MODEL.DAP.RESTRICT_TO_TASK, r.MODEL.DAP.PROMPT_LAST_BLOCK) == (True, False)
    c = load_config(tmp_path / "dap" / "cifar.yaml")
    assert (c.MODEL.DAP.RESTRICT_TO_TASK, c.MODEL.DAP.PROMPT_LAST_BLOCK) == (False, True)
    own = load_config(tmp_path / "dap" / "imagenetr.yaml", ["MODEL.DAP.RESTRICT_TO_TASK", "False"])
    assert (own.MODEL.DAP.RESTRICT_TO_TASK, own.MODEL.DAP.PROMPT_LAST_BLOCK) == (False, False)
    with pytest.raises(CasdapError, match="MODEL.DAP.PROMPT_LAST_BLOCK' must be True or False"):
        load_config(tmp_path / "dap" / "cifar.yaml", ["MODEL.DAP.PROMPT_LAST_BLOCK", "maybe"])


def test_shipped_imagenet_r_carries_the_reference_values():
    cfg = load_config(ROOT / "configs" / "dap" / "imagenet_r.yaml")
    d, s = cfg.MODEL.DAP, cfg.SOLVER
    assert (d.SIM_LAMBDA, d.NUM_DAP_TOKENS, d.TASK_EMB, s.OPTIMIZER, s.BASE_LR, s.TOTAL_EPOCH) == (
        2.0, 30, 64, "sgd", 0.25, 20)
    assert (d.RESTRICT_TO_TASK, d.PROMPT_LAST_BLOCK) == (True, False)


def test_dap_layout_keys_without_effect_are_named_when_set(capsys):
    from casdap.config import COMPAT_KEYS, config_keys, ignored_settings

    assert COMPAT_KEYS <= set(config_keys())
    cfg = load_config(DIGITS_YAML)
    assert ignored_settings(cfg) == [] and "no effect" not in capsys.readouterr().err
    cfg = load_config(DIGITS_YAML, ["MODEL.DAP.DROPOUT", "0.1", "SOLVER.LOSS", "sigmoid", "SOLVER.BASE_LR", "0.5"])
    assert ignored_settings(cfg) == ["MODEL.DAP.DROPOUT 0.1", "SOLVER.LOSS 'sigmoid'"]
    err = capsys.readouterr().err
    assert err.count("no effect in CAS-DAP: MODEL.DAP.DROPOUT 0.1, SOLVER.LOSS 'sigmoid'") == 1


def test_every_setting_is_read_or_named_when_changed():
    """Each key is read by the package (attribute access outside the defaults), or it is in
    COMPAT_KEYS, whose changes print a notice: no setting is ignored in silence."""
    import re

    from casdap.config import COMPAT_KEYS

    src = "\n".join(p.read_text() for p in (ROOT / "casdap").rglob("*.py") if p.name != "defaults.py")

    def read(key: str) -> bool:
        last = key.split(".")[-1]
        return re.search(rf"[a-z0-9_)\]]\.(?:{re.escape(key)}|{re.escape(last)})\b", src) is not None

    assert [k for k in config_keys() if k not in COMPAT_KEYS and not read(k)] == []


def test_dap_launcher_keys_changed_get_the_notice(capsys):
    load_config(DIGITS_YAML, ["NUM_GPUS", "4", "DBG", "True", "DIST_BACKEND", "gloo"])
    assert "no effect in CAS-DAP: DBG True, DIST_BACKEND 'gloo', NUM_GPUS 4" in capsys.readouterr().err


# The shipped DAP configs of the embedded streams as they were written on DAP's base file, before
# a stream's settings and DAP's went into separate files: only what they set over it.
OVER_BASE_DAP = {
    "digits": {"CONTINUAL": {"INITIAL": 2, "INCREMENT": 2, "N_TASKS": 5},
               "DATA": {"NAME": "digits", "NUMBER_CLASSES": 10, "DATAPATH": "", "CROPSIZE": 32, "BATCH_SIZE": 64,
                        "NUM_WORKERS": 0},
               "MODEL": {"MODEL_ROOT": "./model/embedded", "DAP": {"NUM_TASKS_FOR_EMB": 5, "PROMPT_POOL": 5,
                                                                   "KEYS_PER_TASK": 16, "RESTRICT_TO_TASK": True}},
               "SOLVER": {"TOTAL_EPOCH": 5, "SCHEDULER": "linear_decay"}, "SEED": 0},
    "embedded_shift": {
        "CONTINUAL": {"INITIAL": 10, "INCREMENT": 10, "N_TASKS": 10},
        "DATA": {"NAME": "embedded_shift", "NUMBER_CLASSES": 100, "DATAPATH": "", "CROPSIZE": 32, "BATCH_SIZE": 64,
                 "NUM_WORKERS": 0},
        "MODEL": {"MODEL_ROOT": "./model/embedded", "DAP": {
            "INJECTION": "attn", "CHANNEL_MIX": True, "TASK_GENERATORS": True, "NUM_TASKS_FOR_EMB": 10,
            "PROMPT_POOL": 10, "QUERY": "adapted", "PROMPT_BACKBONE": "adapted", "TASK_INFERENCE": "gaussian",
            "SHRINKAGE": 0.003, "KEYS_PER_TASK": 1, "PREDICTION": "all", "ALL_CLASS_HEAD": "lda",
            "RESTRICT_TO_TASK": False}},
        "SOLVER": {"TOTAL_EPOCH": 8, "SCHEDULER": "linear_decay"}, "SEED": 0},
}


@pytest.mark.parametrize("stream", sorted(OVER_BASE_DAP))
def test_dap_configs_on_a_stream_file_resolve_as_on_daps_base_file(tmp_path, stream):
    """configs/dap/<stream>.yaml (the stream file plus DAP's keys) resolves to every value it had
    when it was written over configs/base-dap.yaml."""
    import yaml

    before = tmp_path / f"{stream}.yaml"
    before.write_text(yaml.safe_dump({"_BASE_": str(ROOT / "configs" / "base-dap.yaml"), **OVER_BASE_DAP[stream]}))
    assert load_config(ROOT / "configs" / "dap" / f"{stream}.yaml").dump() == load_config(before).dump()

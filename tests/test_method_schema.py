"""Each method declares the config keys it reads (casdap.continual.methods): a setting its method
does not read is refused on the command line, named once (and not applied) when a config file sets
it, and left out of the run's config.yaml; no shipped config carries one; the declarations are held
to the keys each method's code really reads."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from cl_support import DIGITS_STREAM, DIGITS_YAML
from conftest import ROOT
from yacs.config import CfgNode

from casdap.cli import main
from casdap.cli.cl import _load
from casdap.config import COMPAT_KEYS, config_file_settings, load_config, shipped_config, shipped_configs
from casdap.config.schema import flat_settings
from casdap.continual.methods import METHOD_NAMES, check_config, get_method, method_keys
from casdap.continual.run_reading import settings_changed
from casdap.errors import CasdapError

NOTICE = "not read by method"
STREAM = DIGITS_STREAM


def _notices(err: str) -> list[str]:
    return [line for line in err.splitlines() if NOTICE in line]


def test_config_needs_nothing_from_continual():
    """casdap.config loads and checks a config in a fresh interpreter with no casdap.continual module
    (and no torch) imported, and none of its files imports casdap.continual, even inside a function."""
    code = ("import sys; from casdap.config import load_config; from casdap.config.validate import validate; "
            "import casdap.config.schema; validate(load_config(sys.argv[1])); "
            "print(sorted(m for m in sys.modules if m.startswith(('casdap.continual', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code, str(DIGITS_YAML)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    imports = re.compile(r"^\s*(?:from|import)\s+casdap\.continual\b", re.M)
    sources = {p.name: p.read_text() for p in (ROOT / "casdap" / "config").glob("*.py")}
    assert [name for name, text in sources.items() if imports.search(text)] == []


def test_a_key_the_method_does_not_read_is_refused_on_the_command_line():
    argv = ["cl", "--config-file", str(DIGITS_YAML), "MODEL.TRANSFER_TYPE", "l2p", "MODEL.DAP.TASK_INFERENCE",
            "gaussian"]
    code = "import sys; from casdap.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("casdap: error: MODEL.DAP.TASK_INFERENCE is not read by method l2p (it reads: ")
    assert "MODEL.PROMPT.{LENGTH, POOL_SIZE, PULL_LAMBDA, TOP_N}" in lines[0]


@pytest.mark.parametrize("method, key, value", [
    ("ncm", "MODEL.PROMPT.LENGTH", "7"), ("dap", "BASELINES.FIRST_SESSION", "True"),
    ("linear", "BASELINES.BACKBONE_LR_SCALE", "0.5"), ("coda_prompt", "MODEL.PROMPT.PULL_LAMBDA", "1.0"),
    ("l2p", "MODEL.DAP.TASK_INFERENCE", "keys"),  # refused even at its default: l2p has no task to infer
    ("coda_prompt", "MODEL.DAP.TASK_INFERENCE", "gaussian"),
])
def test_every_unread_key_on_the_command_line_is_one_error(method, key, value):
    with pytest.raises(CasdapError, match=rf"^{key} is not read by method {method} \(it reads: "):
        load_config(STREAM, ["MODEL.TRANSFER_TYPE", method, key, value], reads=method_keys)
    keys = method_keys(method)
    other = sorted(keys.own)[0] if keys.own else "SOLVER.BASE_LR"
    load_config(STREAM, ["MODEL.TRANSFER_TYPE", method, other, repr(flat_settings(load_config())[other])],
                reads=method_keys)  # a key it reads is taken


def test_dap_layout_keys_stay_accepted_with_their_notice(capsys):
    cfg = load_config(STREAM, ["MODEL.TRANSFER_TYPE", "ncm", "SOLVER.LOSS", "sigmoid"], reads=method_keys)
    assert cfg.SOLVER.LOSS == "sigmoid" and "no effect in CAS-DAP: SOLVER.LOSS 'sigmoid'" in capsys.readouterr().err


def test_the_readme_pattern_switches_method_with_one_notice(capsys):
    """README / docs/embedded_shift.md: a shipped DAP config with MODEL.TRANSFER_TYPE switched on the
    command line runs the other method; DAP's settings are named once and take no effect."""
    assert "--config-file configs/dap/embedded_shift.yaml MODEL.TRANSFER_TYPE ncm" in (
        ROOT / "docs" / "embedded_shift.md").read_text()
    cfg, _, _ = _load(["--config-file", "configs/dap/embedded_shift.yaml", "MODEL.TRANSFER_TYPE", "ncm"])
    check_config(cfg)
    notices = _notices(capsys.readouterr().err)
    assert len(notices) == 1, notices
    for setting in ("MODEL.DAP.QUERY 'adapted'", "MODEL.DAP.TASK_INFERENCE 'gaussian'", "MODEL.DAP.PREDICTION 'all'",
                    "MODEL.DAP.ALL_CLASS_HEAD 'lda'"):
        assert setting in notices[0]
    assert notices[0].startswith("casdap: not read by method ncm, so not applied")
    dap = load_config(shipped_config("dap/embedded_shift.yaml"))
    assert (cfg.MODEL.DAP.QUERY, cfg.MODEL.DAP.TASK_INFERENCE) == ("frozen", "keys")  # not applied
    assert (cfg.DATA, cfg.SOLVER, cfg.CONTINUAL) == (dap.DATA, dap.SOLVER, dap.CONTINUAL)  # the stream is kept


def test_a_users_own_file_with_an_unread_key_gets_the_notice(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    mine.write_text(f'_BASE_: "{STREAM}"\nMODEL:\n  TRANSFER_TYPE: "ncm"\n  PROMPT:\n    LENGTH: 7\n')
    cfg = load_config(mine, reads=method_keys)
    assert cfg.MODEL.PROMPT.LENGTH == 5
    assert _notices(capsys.readouterr().err) == [
        f"casdap: not read by method ncm, so not applied (from '{mine}'): MODEL.PROMPT.LENGTH 7"]


@pytest.mark.parametrize("name", shipped_configs())
def test_shipped_configs_carry_no_setting_their_method_ignores(name, capsys):
    path = shipped_config(name)
    cfg = load_config(path, reads=method_keys)
    reads = method_keys(cfg.MODEL.TRANSFER_TYPE).reads
    stray = {k: str(f.relative_to(ROOT / "configs")) for k, f in config_file_settings(path).items()
             if k not in reads and k not in COMPAT_KEYS}
    assert stray == {}, f"{name} sets keys its method ({cfg.MODEL.TRANSFER_TYPE}) does not read"
    assert _notices(capsys.readouterr().err) == []


def test_stream_files_hold_only_what_every_method_reads():
    from casdap.continual.methods import SHARED_KEYS

    streams = [n for n in shipped_configs() if n.startswith("streams/")]
    assert streams == ["streams/digits.yaml", "streams/embedded_domains.yaml", "streams/embedded_shift.yaml"]
    for name in streams:
        assert set(config_file_settings(shipped_config(name))) <= SHARED_KEYS, name


def test_a_run_saves_only_what_its_method_read_and_resumes_from_it(tmp_path, capsys):
    """The README pattern on the digits, run to the end: one notice, a config.yaml with no DAP key,
    which reloads with no notice to the settings the run used and lets the finished run be found."""
    out = tmp_path / "ncm"
    argv = ["cl", "--config-file", str(DIGITS_YAML), "--no-progress", "MODEL.TRANSFER_TYPE", "ncm",
            "MODEL.RANDOM_INIT", "True", "MODEL.MODEL_ROOT", str(tmp_path / "none"), "DATA.PERCENTAGE", "0.1",
            "CONTINUAL.INITIAL", "5", "CONTINUAL.INCREMENT", "5", "CONTINUAL.N_TASKS", "2", "DEVICE", "cpu",
            "OUTPUT_DIR", str(out)]
    assert main(argv) == 0
    notices = _notices(capsys.readouterr().err)
    assert len(notices) == 1 and "MODEL.DAP.KEYS_PER_TASK 16" in notices[0]
    text = (out / "config.yaml").read_text()
    saved = flat_settings(yaml.safe_load(text))
    reads = method_keys("ncm").reads
    assert "DAP" not in text and set(saved) <= reads
    assert set(saved) == {k for k in reads if k in flat_settings(load_config())}
    assert saved["MODEL.TRANSFER_TYPE"] == "ncm" and saved["DATA.PERCENTAGE"] == 0.1
    again = load_config(out / "config.yaml", reads=method_keys)
    assert _notices(capsys.readouterr().err) == []
    assert {k: v for k, v in flat_settings(again).items() if k in reads} == saved
    resumed = ["cl", "--config-file", str(out / "config.yaml"), "--no-progress", "--auto_resume", "True"]
    assert main(resumed) == 0
    assert "holds a finished run" in capsys.readouterr().out


def test_a_config_built_in_python_gets_the_notice_from_the_run(tmp_path, capsys):
    """run_continual cannot tell where a setting came from: every one its method does not read is
    named once (and not applied), as casdap cl does for a file's."""
    from casdap.continual.runner import run_continual

    cfg = load_config(DIGITS_YAML, ["MODEL.TRANSFER_TYPE", "ncm", "MODEL.RANDOM_INIT", "True", "MODEL.MODEL_ROOT",
                                    str(tmp_path / "none"), "DATA.PERCENTAGE", "0.1", "CONTINUAL.INITIAL", "5",
                                    "CONTINUAL.INCREMENT", "5", "CONTINUAL.N_TASKS", "2", "DEVICE", "cpu",
                                    "OUTPUT_DIR", str(tmp_path / "run"), "MODEL.PROMPT.TOP_N", "3"])
    run_continual(cfg, progress=False)
    notices = _notices(capsys.readouterr().err)
    assert len(notices) == 1 and "(from the config given to the run)" in notices[0], notices
    assert "MODEL.PROMPT.TOP_N 3" in notices[0] and "MODEL.DAP.KEYS_PER_TASK 16" in notices[0]
    assert "TOP_N" not in (tmp_path / "run" / "config.yaml").read_text()


def test_a_run_saved_before_the_schema_resumes_though_it_states_unread_keys():
    """An l2p run's config.yaml written before (every key, QUERY adapted from the DAP file) is compared
    on the keys l2p reads only. Of DAP's settings it states, l2p now reads the query's and the
    prediction's (the shared pipeline's options), which that run never applied: those, and only those,
    are named."""
    now = load_config(shipped_config("dap/l2p_embedded_shift.yaml"), reads=method_keys)
    old = load_config(shipped_config("dap/embedded_shift.yaml"), ["MODEL.TRANSFER_TYPE", "l2p"])
    old_text = old.dump()  # as a run saved it then: every key
    assert settings_changed(old_text, now, method_keys("l2p").reads) == [
        "MODEL.DAP.ALL_CLASS_HEAD: 'lda' -> 'pseudo'", "MODEL.DAP.PREDICTION: 'all' -> None",
        "MODEL.DAP.PROMPT_BACKBONE: 'adapted' -> 'pretrained'", "MODEL.DAP.QUERY: 'adapted' -> 'frozen'",
        "MODEL.DAP.SHRINKAGE: 0.003 -> 1.0"]
    pipeline = ["MODEL.DAP.ALL_CLASS_HEAD", "lda", "MODEL.DAP.PREDICTION", "all", "MODEL.DAP.SHRINKAGE", "0.003",
                "MODEL.DAP.QUERY", "adapted", "MODEL.DAP.PROMPT_BACKBONE", "adapted"]
    now = load_config(shipped_config("dap/l2p_embedded_shift.yaml"), pipeline, reads=method_keys)
    assert settings_changed(old_text, now, method_keys("l2p").reads) == []
    assert "MODEL.DAP.TASK_INFERENCE" in [c.split(":")[0] for c in settings_changed(old_text, now)]
    changed = load_config(shipped_config("dap/l2p_embedded_shift.yaml"), [*pipeline, "MODEL.PROMPT.TOP_N", "4"],
                          reads=method_keys)
    assert settings_changed(old_text, changed, method_keys("l2p").reads) == ["MODEL.PROMPT.TOP_N: 5 -> 4"]


# ------------------------------------------------------------------- declarations match the code
def _record_reads(cfg: CfgNode, monkeypatch, call) -> set[str]:
    """The leaf keys of ``cfg`` read (by attribute or item) while ``call()`` runs."""
    paths: dict[int, str] = {}

    def walk(node: CfgNode, prefix: str) -> None:
        paths[id(node)] = prefix
        for k, v in node.items():
            if isinstance(v, CfgNode):
                walk(v, f"{prefix}{k}.")

    walk(cfg, "")
    read: set[str] = set()

    def getitem(self, name):
        value = dict.__getitem__(self, name)
        if id(self) in paths and not isinstance(value, CfgNode):
            read.add(paths[id(self)] + name)
        return value

    with monkeypatch.context() as mp:
        mp.setattr(CfgNode, "__getitem__", getitem, raising=False)
        call()
    return read


ADAPTED = ["MODEL.DAP.QUERY", "adapted", "MODEL.DAP.PROMPT_BACKBONE", "adapted", "MODEL.DAP.TASK_INFERENCE",
           "gaussian", "MODEL.DAP.PREDICTION", "all", "MODEL.DAP.ALL_CLASS_HEAD", "lda", "MODEL.DAP.REPLAY_MEM_SIZE",
           "8"]
VARIANTS = [(m, []) for m in METHOD_NAMES] + [
    (m, ["BASELINES.FIRST_SESSION", "True"]) for m in ("ncm", "ranpac", "slda", "fecam")] + [
    ("dap", ADAPTED), ("dap", ["MODEL.DAP.PREDICTION", "soft"]), ("dap", ["MODEL.DAP.PREDICTION", "restrict"])] + [
    (m, ["MODEL.DAP.PREDICTION", "all", "MODEL.DAP.QUERY", "adapted"])
    for m in ("l2p", "dualprompt", "coda_prompt")] + [
    ("dualprompt", ["MODEL.DAP.TASK_INFERENCE", "gaussian"])]


def _build(cfg: CfgNode) -> None:
    """What the runner does with a config before the first task: check it, build the model, the
    optimizer and the strategy, and write the protocol lines and run fields."""
    import torch

    from casdap.continual import runner

    check_config(cfg)
    method = get_method(cfg.MODEL.TRANSFER_TYPE).for_config(cfg)
    model = method.build_model(cfg, int(cfg.DATA.NUMBER_CLASSES))
    evaluator, _ = runner._evaluator(method, None)
    runner._build_strategy(cfg, method, model, torch.device("cpu"), evaluator,
                           runner.ProgressPlugin(int(cfg.CONTINUAL.N_TASKS), enabled=False))
    method.protocol_notes(cfg), method.run_fields(cfg), method.trainable_params(model)


def test_every_key_a_methods_code_reads_is_declared_and_every_declared_key_is_read(tmp_path, monkeypatch):
    """Each method is built as the runner builds it, on a config that records every key read: the
    keys read are within what the method declares, and each key it declares beyond every run's is
    read in at least one setting (no declared key is ignored either)."""
    import torch

    torch.manual_seed(0)
    seen: dict[str, set[str]] = {m: set() for m in METHOD_NAMES}
    for method, extra in VARIANTS:
        cfg = load_config(STREAM, ["MODEL.TRANSFER_TYPE", method, "MODEL.RANDOM_INIT", "True", "MODEL.MODEL_ROOT",
                                   str(tmp_path / "none"), "DEVICE", "cpu", *extra], reads=method_keys)
        read = _record_reads(cfg, monkeypatch, lambda cfg=cfg: _build(cfg))
        keys = method_keys(method)
        assert sorted(read - keys.reads) == [], f"{method} {extra} reads keys it does not declare"
        seen[method] |= read
    assert {m: sorted(set(method_keys(m).own) - seen[m]) for m in METHOD_NAMES} == {m: [] for m in METHOD_NAMES}

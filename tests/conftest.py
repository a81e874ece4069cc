import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# As the command line keeps jax out of its process (casdap.cli._skip_jax), before anything imports
# Avalanche: the tests run the package as a command runs it, and each worker starts a second sooner.
sys.modules.setdefault("jax", None)

import torch  # noqa: E402
from filelock import FileLock  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# One thread for the whole session, as the package itself picks for these small models
# (casdap.engine.threads): faster here, and no OpenMP threads fighting other processes for cores.
torch.set_num_threads(1)


# Test files by CPU time (longest first, measured on the 2-core machine): under `scripts/test.sh` each
# file runs whole on one worker, handed out in collection order (--no-loadscope-reorder), so the long
# files start first and the short ones fill in at the end, rather than one worker running a long file
# alone while the other has finished. Files not listed follow, in their usual order.
LONGEST_FIRST = ("test_wheelhouse.py", "test_reference_accuracy.py", "test_seed_lines.py", "test_resume_killed.py",
                 "test_prototype_methods.py", "test_combinations_pools.py", "test_combinations_dap.py",
                 "test_combinations_static.py", "test_combinations_none.py", "test_packaging.py",
                 "test_embedded_benchmark.py", "test_decomposition.py", "test_dap_strategy.py",
                 "test_benchmark_scripts.py", "test_tfds.py", "test_export.py", "test_train_seed.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


def pytest_addoption(parser):
    parser.addoption("--update-references", action="store_true", default=False,
                     help="rewrite tests/reference/*.json from this code's runs instead of comparing with them "
                          "(tests/references.py; bash scripts/update_references.sh runs every such test)")


@pytest.fixture
def official_fixture():
    return FIXTURES / "casvit_official"


def once_per_session(tmp_path_factory, name: str, make: Callable[[Path], object]) -> object:
    """``make(folder)``, computed once for the whole test session: under pytest-xdist every worker
    asks for a session fixture, and the first one to ask makes it in a folder all of them share
    while the others wait on a file lock, then read its pickled result."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # the session's folder above each worker's own
    folder, result = shared / name, shared / f"{name}.pickle"
    with FileLock(shared / f"{name}.lock"):
        if not result.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed making it leaves no half
            folder.mkdir()
            result.write_bytes(pickle.dumps(make(folder)))
        return pickle.loads(result.read_bytes())


@pytest.fixture(scope="session")
def torchrun_cl_runs(tmp_path_factory):
    """One two-process ``torchrun`` launch serving every distributed continual test (its process
    start-ups cost more than the tiny runs): finetune and DAP with several keys per task on tiny
    CIFAR data, and DAP with Gaussian task inference over all classes on the same data;
    ranpac, slda, fecam and slda after a first-session adaptation on a tenth of the digits; l2p,
    dualprompt and coda_prompt on the tiny CIFAR data. Name -> :class:`cl_support.LaunchedRun`."""
    return once_per_session(tmp_path_factory, "torchrun_cl", _launch_cl_runs)


def _launch_cl_runs(tmp: Path) -> dict:
    from cl_support import KEEP, launch_cl_runs, ranpac_digits_cfg, tiny_cifar_cfg, write_tiny_cifar

    data = write_tiny_cifar(tmp / "cifar", train_per_class=8)
    # dap with several keys per task: each rank seeds the keys from its own first batch, so rank 0's
    # keys must reach the others
    runs = {
        # test_continual_distributed reads every task's checkpoint of these (CONTINUAL.KEEP_TASK_CHECKPOINTS)
        "finetune": tiny_cifar_cfg(data, tmp / "finetune", "finetune", "DATA.BATCH_SIZE", "4", *KEEP),
        "dap": tiny_cifar_cfg(data, tmp / "dap", "dap", "DATA.BATCH_SIZE", "4", "MODEL.DAP.KEYS_PER_TASK", "3",
                              *KEEP),
        # test_task_inference: each rank's query statistics summed over ranks equal one process's
        "gaussian": tiny_cifar_cfg(data, tmp / "gaussian", "dap", "DATA.BATCH_SIZE", "4",
                                   "MODEL.DAP.TASK_INFERENCE", "gaussian", "MODEL.DAP.PREDICTION", "all"),
        "ranpac": ranpac_digits_cfg(tmp / "ranpac"),
        "slda": ranpac_digits_cfg(tmp / "slda", "MODEL.TRANSFER_TYPE", "slda"),
        "fecam": ranpac_digits_cfg(tmp / "fecam", "MODEL.TRANSFER_TYPE", "fecam", "BASELINES.FECAM_SHRINKAGE", "auto"),
        "slda-first-session": ranpac_digits_cfg(tmp / "slda-first-session", "MODEL.TRANSFER_TYPE", "slda",
                                                "BASELINES.FIRST_SESSION", "True", "SOLVER.TOTAL_EPOCH", "1"),
        # the learned-prompt methods, with weight decay (finished tasks' rows are put back on every rank)
        **{m: tiny_cifar_cfg(data, tmp / m, m, "DATA.BATCH_SIZE", "4", "SOLVER.WEIGHT_DECAY", "0.01", *KEEP)
           for m in ("l2p", "dualprompt", "coda_prompt")},
    }
    return launch_cl_runs(tmp, runs)


@pytest.fixture(scope="session")
def demo_pretraining(tmp_path_factory):
    """``casdap demo --pretrain-epochs 1`` run once for the session, with the cheapest method (ncm) on
    a tenth of the digits: its backbone pretraining (about 13 CPU seconds) is the expensive stage, and
    the demo and embedded-benchmark tests start from that backbone. ``(demo folder, its stdout)``."""
    return once_per_session(tmp_path_factory, "demo_pretraining", _demo_pretraining)


def _demo_pretraining(tmp: Path) -> tuple[Path, str]:
    from cl_support import run_casdap

    out = tmp / "demo"
    done = run_casdap([sys.executable, "-m", "casdap", "demo", "--out", str(out), "--pretrain-epochs", "1",
                       "--methods", "ncm", "SOLVER.TOTAL_EPOCH", "1", "DATA.PERCENTAGE", "0.1"], cwd=out.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def copy_demo_backbone(demo: Path, to: Path) -> None:
    """The pretrained backbone and its sidecar, where ``casdap demo --out TO --pretrain-epochs 1`` reuses them."""
    shutil.copytree(demo / "model", to / "model")


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory):
    """casdap's wheel, built once for the session from a copy of the checkout, and installed (not
    editable) into a fresh venv that sees this interpreter's packages (torch and the rest) through a
    plain .pth path line: that line does not run the editable install's hook, so the checkout's casdap
    is not importable there. ``{"wheel", "venv", "env", "work"}``: tests/test_packaging.py runs the
    installed package (and benchmarks/gpu.sh's smoke run on it), tests/test_wheelhouse.py ships the
    same wheel in its wheel folder."""
    return once_per_session(tmp_path_factory, "installed_wheel", _install_wheel)


def _install_wheel(tmp: Path) -> dict:
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("casdap", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--disable-pip-version-check", "-w", str(tmp / "dist"), str(src)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("casdap-*.whl")

    venv = tmp / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    here = sorted({p for p in sys.path if p.endswith("site-packages")})
    Path(site, "outer.pth").write_text("\n".join(here) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME") and not k.startswith("PIP_")}
    env["OMP_NUM_THREADS"] = "1"
    # --ignore-installed: the outer environment's casdap is visible to pip here, and must stay untouched
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "--ignore-installed", "--disable-pip-version-check", str(wheel)],
                             capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    work = tmp / "work"
    work.mkdir()
    return {"wheel": wheel, "venv": venv, "env": env, "work": work}

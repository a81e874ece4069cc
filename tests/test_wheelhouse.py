"""``scripts/wheelhouse.sh`` and the offline install it makes possible, tested on CPU.

The GPU node is emulated: a fresh venv that sees, through a .pth file, only the distributions
``benchmarks/gpu_node_packages.txt`` lists (torch and torchvision among them, taken from the
interpreter running the tests), never casdap, Avalanche or yacs. The wheel folder is built for this
interpreter's Python with that list as ``--have``, then ``install.py --venv`` installs from it with pip
kept off the network (``--no-index``, and any proxy pointing at a closed port), and the installed
``casdap`` runs a tiny continual experiment. Building the folder needs the package registry: without
it the tests skip and say so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
from cl_support import tiny_cifar_cfg, write_tiny_cifar
from conftest import ROOT

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "wheelhouse.sh"
NODE_LIST = ROOT / "benchmarks" / "gpu_node_packages.txt"
# what travels to the GPU machine with the working tree, the wheel folder included
DEVICE_LIMIT_BYTES = 64 * 2**20


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _node_names() -> set[str]:
    words = (line.split("#", 1)[0].split() for line in NODE_LIST.read_text().splitlines())
    return {_canon(w) for ws in words for w in ws}


def _offline_env() -> dict[str, str]:
    """No pip configuration, index or find-links of this machine, and no reachable proxy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    closed = "http://127.0.0.1:9"
    env.update(PIP_CONFIG_FILE=os.devnull, HTTP_PROXY=closed, HTTPS_PROXY=closed, http_proxy=closed,
               https_proxy=closed, OMP_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Skip (with the reason) when the package registry cannot be reached."""
    probe = tmp_path_factory.mktemp("probe")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--timeout", "20",
                           "--retries", "1", "-d", str(probe), "yacs==0.1.8"], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip("the package registry is unreachable, so no wheel folder can be built here: "
                    + (proc.stderr.strip().splitlines() or ["pip download failed"])[-1])


# where a package is imported from (its __file__) and its version, found without importing it: a
# start-up that imports torch and Avalanche costs about 10 CPU seconds, and install.py's own check
# ("imports OK", asserted below) and the continual run import all of them in the venv anyway
_WHERE = ("import os, runpy; from importlib.util import find_spec; where = lambda name: find_spec(name).origin; "
          "version = lambda name: runpy.run_path(os.path.join(os.path.dirname(where(name)), 'version.py'))"
          "['__version__']; ")  # torch.__version__ is torch/version.py's


def _wheelhouse(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), str(out), *args], capture_output=True, text=True, env=env,
                          timeout=900)


def _emulated_node(root: Path) -> Path:
    """A venv whose only third-party packages are the GPU node's, pip among them (all linked from this
    interpreter: a venv's own pip would cost about 4 CPU seconds of ensurepip)."""
    names = _node_names()
    farm = root / "node-site"
    farm.mkdir()
    linked = set()
    for dist in metadata.distributions():
        name = _canon(dist.metadata["Name"])
        if name not in names or name in linked:
            continue
        linked.add(name)
        base = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            src, dst = base / top, farm / top
            if top not in ("..", "__pycache__") and src.exists() and not dst.exists():
                dst.symlink_to(src)
    assert {"torch", "torchvision", "pip"} <= linked and not {"casdap", "avalanche-lib", "yacs"} & linked
    venv = root / "node"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "node_packages.pth").write_text(f"import site; site.addsitedir({str(farm)!r})\n")
    return venv / "bin" / "python"


def test_offline_install_onto_an_existing_torch_runs_a_continual_experiment(tmp_path, registry, installed_wheel):
    whl = tmp_path / "wheels"
    # the session's casdap wheel (conftest.installed_wheel): built once for this test and the packaging
    # tests; the folder for Python 3.12 below builds its own, as a user's run of the script does
    proc = _wheelhouse(whl, "--have", str(NODE_LIST), "--casdap-wheel", str(installed_wheel["wheel"]))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "took casdap-" in proc.stdout
    assert (whl / installed_wheel["wheel"].name).read_bytes() == installed_wheel["wheel"].read_bytes()
    info = json.loads((whl / "wheelhouse.json").read_text())
    names = {_canon(n.split("-")[0]) for n in info["wheels"]}
    assert {"casdap", "avalanche-lib", "yacs"} <= names
    assert not names & {"torch", "torchvision", "timm", "numpy", "tensorboard", "matplotlib", "scikit-learn"}
    assert not any(n.startswith("nvidia-") for n in names)  # nothing only torch needs

    node_py = _emulated_node(tmp_path)
    node_torch = subprocess.run([str(node_py), "-c", _WHERE + "print(where('torch'), version('torch'))"],
                                check=True, capture_output=True, text=True).stdout.split()
    missing = subprocess.run([str(node_py), "-c", "import avalanche"], capture_output=True, text=True)
    assert missing.returncode != 0  # the node really lacks what the folder brings

    env, work = _offline_env(), tmp_path / "work"
    work.mkdir()
    start = time.perf_counter()
    proc = subprocess.run([str(node_py), str(whl / "install.py"), "--venv", str(tmp_path / "env")], cwd=work,
                          env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"offline install: {seconds:.1f} s, {len(info['wheels'])} wheels, {info['total_bytes'] / 2**20:.1f} MiB")
    assert "untouched" in proc.stdout and "imports OK" in proc.stdout

    py, casdap = tmp_path / "env" / "bin" / "python", tmp_path / "env" / "bin" / "casdap"
    probe = subprocess.run([str(py), "-c", _WHERE + "print(where('torch'), version('torch'), where('casdap'), "
                            "where('avalanche'))"], cwd=work, env=env, check=True, capture_output=True,
                           text=True).stdout.split()
    assert probe[:2] == node_torch  # the node's torch, untouched
    assert str(tmp_path / "env") in probe[2] and str(tmp_path / "env") in probe[3]

    assert subprocess.run([str(casdap), "cl", "--help"], cwd=work, env=env, capture_output=True).returncode == 0
    data = write_tiny_cifar(tmp_path / "cifar")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(tiny_cifar_cfg(data, tmp_path / "run", "dap").dump())
    run = subprocess.run([str(casdap), "cl", "--config-file", str(cfg), "--no-progress"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["finished"] and m["tasks_done"] == 2


def test_wheel_folder_for_the_gpu_machine_fits_what_travels_with_the_tree(tmp_path, registry):
    """Python 3.12 manylinux x86_64, less what the lent GPU machine already holds: at most 64 MiB."""
    whl = tmp_path / "wheels312"
    proc = _wheelhouse(whl, "--python", "3.12", "--arch", "x86_64", "--glibc", "2.28", "--have", str(NODE_LIST))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "built casdap-" in proc.stdout
    info = json.loads((whl / "wheelhouse.json").read_text())
    on_disk = sum(p.stat().st_size for p in whl.iterdir())
    print(f"py3.12 wheel folder for the GPU machine: {on_disk / 2**20:.1f} MiB, {len(info['wheels'])} wheels")
    assert on_disk <= DEVICE_LIMIT_BYTES
    binary = [n for n in info["wheels"] if not n.endswith("-none-any.whl")]
    assert binary and all(("cp312" in n or "py3-none" in n or "abi3" in n) and "x86_64" in n for n in binary)

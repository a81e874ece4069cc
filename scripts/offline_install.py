"""Offline install of casdap from a wheel folder made by ``scripts/wheelhouse.sh``.

Copied into the folder as ``install.py``. On the target (no network needed)::

    python3 DIR/install.py --venv ~/casdap-env   # a venv that sees the node's packages, torch included
    python3 DIR/install.py                       # or into this interpreter's own environment

Every wheel of the folder whose distribution the environment does not hold yet is installed with
``pip install --isolated --no-index --no-deps``; what is already there (torch, torchvision, and
anything else the node brings) is kept as it is. casdap itself is always (re)installed from the
folder. Then casdap's declared requirements are checked against what is installed, and its modules
are imported from outside any checkout. Exit code 0 only when all of that holds.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEVER = {"torch", "torchvision"}  # the node's own CUDA builds: never installed or replaced from here
CHECK_IMPORTS = (
    "casdap, casdap.cli, casdap.engine.supervised, casdap.continual.runner, casdap.bench.run, casdap.export, "
    "avalanche.training, avalanche.evaluation.metrics, avalanche.logging, yacs.config"
)


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def wheel_name(path: Path) -> str:
    return canon(path.name.split("-")[0])


def run(cmd: list[str], **kw) -> None:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def make_venv(venv: Path) -> None:
    """A venv that sees exactly the packages this interpreter sees (the node's torch among them) and
    installs into its own folder.

    For a plain interpreter that is ``--system-site-packages``. When this Python is itself a venv (a
    node's PyTorch often lives in one), ``--system-site-packages`` would reach only the base
    interpreter's packages, so a .pth file adds this venv's package folders instead.
    """
    import shutil
    import site

    # No pip of its own (ensurepip is missing from some system Pythons): the packages it sees bring pip.
    inherit = sys.prefix == sys.base_prefix
    run([sys.executable, "-m", "venv", "--without-pip", *(["--system-site-packages"] if inherit else []), str(venv)])
    py = venv / "bin" / "python"
    if not inherit:
        own = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
        lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages() if Path(d).is_dir()]
        Path(own, "casdap_parent_env.pth").write_text("\n".join(lines) + "\n")
    if subprocess.run([str(py), "-m", "pip", "--version"], capture_output=True).returncode:
        shutil.rmtree(venv)
        raise SystemExit(f"install.py: {sys.executable} has no pip for the new venv to use; install pip there, "
                         "or run install.py without --venv")
    print(f"{venv} sees the packages of {sys.prefix}")


def check_requirements() -> list[str]:
    """casdap's requirements that the environment does not meet (missing, or the wrong version)."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement

    problems = []
    for text in metadata.requires("casdap") or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        have = installed_version(req.name)
        if have is None:
            problems.append(f"{req.name} is not installed (casdap needs {req})")
        elif req.specifier and not req.specifier.contains(have, prereleases=True):
            problems.append(f"{req.name} {have} is installed, casdap needs {req}")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--venv", help="create (if absent) a venv here that sees this Python's packages; install into it")
    p.add_argument("--dry-run", action="store_true", help="only say what would be installed and kept")
    args = p.parse_args()

    if args.venv:
        venv = Path(args.venv).expanduser().resolve()
        py = venv / "bin" / "python"
        if not py.exists():
            make_venv(venv)
        rest = ["--dry-run"] if args.dry_run else []
        return subprocess.call([str(py), str(Path(__file__).resolve()), *rest])

    torch_before = installed_version("torch")
    vision = installed_version("torchvision")
    if torch_before is None or vision is None:
        print(f"install.py: {sys.executable} has no torch/torchvision; this folder installs casdap onto an existing "
              "PyTorch (install the node's CUDA build first, or use --venv with a Python that has it)", file=sys.stderr)
        return 2
    wheels = sorted(HERE.glob("*.whl"))
    if not any(wheel_name(w) == "casdap" for w in wheels):
        print(f"install.py: no casdap wheel in {HERE}: make the folder with scripts/wheelhouse.sh", file=sys.stderr)
        return 2
    install, kept = [], []
    for w in wheels:
        name = wheel_name(w)
        have = installed_version(name)
        if name in NEVER:
            kept.append(f"{name} {have} (never replaced)")
        elif name != "casdap" and have is not None:
            kept.append(f"{name} {have}")
        else:
            install.append(w)
    print(f"python {sys.version.split()[0]} at {sys.executable}; torch {torch_before}, torchvision {vision}")
    print(f"kept as installed ({len(kept)}): {', '.join(kept) or 'none'}")
    print(f"to install from {HERE} ({len(install)}): {', '.join(w.name for w in install)}")
    if args.dry_run:
        return 0

    # --isolated: no pip configuration or PIP_* variable (an index URL, find-links) applies
    pip = [sys.executable, "-m", "pip", "install", "--isolated", "--no-index", "--no-deps", "--no-cache-dir",
           "--disable-pip-version-check", "--no-warn-script-location", "--find-links", str(HERE)]
    deps = [str(w) for w in install if wheel_name(w) != "casdap"]
    if deps:
        run([*pip, *deps])
    run([*pip, "--force-reinstall", *[str(w) for w in install if wheel_name(w) == "casdap"]])

    failed = False
    if installed_version("torch") != torch_before:
        print(f"install.py: torch changed from {torch_before} to {installed_version('torch')}", file=sys.stderr)
        failed = True
    problems = check_requirements()
    for line in problems:
        print(f"install.py: {line}", file=sys.stderr)
    if problems:
        print(f"install.py: the folder's wheel for a package the node already has is not installed over it; to use "
              f"it anyway: {sys.executable} -m pip install --no-index --no-deps {HERE}/NAME-*.whl", file=sys.stderr)
        failed = True
    with tempfile.TemporaryDirectory() as tmp:  # outside any checkout: the installed casdap is imported
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        code = f"import {CHECK_IMPORTS}; print('imports OK: casdap from', casdap.__file__)"
        if subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=tmp, env=env).returncode:
            failed = True
    if failed:
        return 1
    bindir = Path(sys.executable).parent
    print(f"casdap installed offline; torch {torch_before} untouched. Commands: {bindir / 'casdap'} "
          f"(cl, train, bench, export, ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

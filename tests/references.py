"""Reference accuracy matrices: exact results of fixed-seed runs, kept in tests/reference/*.json.

A test runs its configuration and compares the accuracy matrix its run wrote to ``metrics.json``
with the stored one by ``==``: every entry is a count of correct test images over the task's test
set, so a change in any prediction shows. Each file also records what was run (config file,
overrides, seed) and the platform that made it (torch build, CPU instruction set), so a stale or
foreign reference is named as such rather than passed.

When a change moves the numbers on purpose, regenerate every file with :data:`UPDATE_COMMAND`
and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

REFERENCES = Path(__file__).resolve().parent / "reference"
UPDATE_COMMAND = "bash scripts/update_references.sh"
UPDATE_OPTION = "--update-references"


def platform() -> dict:
    """What can change a float result of the same code: the torch build and the CPU kernels it picks."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def updating(request) -> bool:
    return bool(request.config.getoption("update_references"))


def _dump(data: dict) -> str:
    """JSON with one matrix row a line, so a diff of a regenerated file shows which cells moved."""
    lines = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(r, list) for r in value):
            rows = ",\n".join(f"    {json.dumps(r)}" for r in value)
            lines.append(f"  {json.dumps(key)}: [\n{rows}\n  ]")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def check_reference(request, name: str, record: dict, results: dict) -> None:
    """Compare ``results`` (e.g. ``{"acc_matrix": ...}``) of the run described by ``record`` with
    tests/reference/``name``.json by ``==``; with ``--update-references``, write that file instead."""
    path = REFERENCES / f"{name}.json"
    if updating(request):
        REFERENCES.mkdir(exist_ok=True)
        path.write_text(_dump({**record, "platform": platform(), **results}))
        return
    assert path.is_file(), f"no reference file {path}: make it with {UPDATE_COMMAND}"
    stored = json.loads(path.read_text())
    ran = {k: stored.get(k) for k in record}
    assert ran == record, (f"{path.name} records another run than this test makes: {ran} != {record}; "
                           f"regenerate with {UPDATE_COMMAND}")
    here = platform()
    where = "" if stored["platform"] == here else f" (recorded on {stored['platform']}, running on {here})"
    for key, value in results.items():
        assert value == stored[key], f"{key} of {name} moved from {path.name}{where}:\n{value}\n!=\n{stored[key]}"


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's tensors (dtype, shape, values), in an order that does not depend on
    their names: a change of any weight shows, a module renamed by a refactor does not."""
    parts = []
    for t in state.values():
        t = t.detach().cpu().contiguous()
        body = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        parts.append(hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode() + body).hexdigest())
    return hashlib.sha256("".join(sorted(parts)).encode()).hexdigest()

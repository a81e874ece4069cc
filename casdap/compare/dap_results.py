"""The reader of DAP's own ``final_results.txt`` (the reference implementation's result file): its
printed config, its accuracy array and its ``Final test`` lines, turned into a :class:`RunRecord`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from casdap.compare.records import RunError, RunRecord
from casdap.compare.run_checks import check_matrix, flatten
from casdap.run_metrics import summarize

__all__ = ["load_dap_results", "parse_cfg_dump"]


_FINAL_LINE = re.compile(r"^Final\s+(\w+)\s+(Accuracy|Forget|LA):\s*([-+0-9.eEnaN]+)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan")


def _cfg_scalar(text: str) -> Any:
    if text == "None":
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool, list)) else text


def parse_cfg_dump(text: str) -> dict[str, Any]:
    """The printed yacs/fvcore CfgNode at the top of DAP's file: ``KEY: value`` lines, children
    indented by two spaces, an empty value either a child node or an empty string."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict]] = [(-1, root)]
    for line in text.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if value.strip():
            parent[key] = _cfg_scalar(value.strip())
        else:
            parent[key] = {}
            stack.append((indent, parent[key]))

    def empty_to_str(d: dict) -> dict:
        return {k: (("" if not v else empty_to_str(v)) if isinstance(v, dict) else v) for k, v in d.items()}

    return empty_to_str(root)


def load_dap_results(path: Path) -> RunRecord:
    """Read DAP's ``final_results.txt``: printed config, ``LOG['acc']`` (numpy print of the
    [evaluated task, training step] array) and the ``Final test Accuracy/Forget/LA`` lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: cannot be read ({e})") from None
    finals = {m.group(2): float(m.group(3)) for m in _FINAL_LINE.finditer(text)}
    if "Accuracy" not in finals:
        raise RunError(f"{path}: no 'Final test Accuracy' line: not a finished DAP final_results.txt")
    opening = re.search(r"^\[\[", text, re.MULTILINE)  # the array print starts a line; config lists do not
    start = opening.start() if opening else -1
    end = text.find("]]", start)
    if start < 0 or end < 0:
        raise RunError(f"{path}: no accuracy matrix ([[ ... ]]) before the Final lines")
    rows_text = re.split(r"\]\s*\[", text[start + 2 : end])
    raw = [[float(x) for x in _NUMBER.findall(r)] for r in rows_text]
    t = len(raw)
    if any(len(r) != t for r in raw):
        raise RunError(f"{path}: the accuracy matrix is not square ({[len(r) for r in raw]} entries per row)")
    cfg = parse_cfg_dump(text[:start])
    flat = flatten(cfg)
    n_tasks = flat.get("CONTINUAL.N_TASKS")
    if isinstance(n_tasks, int) and n_tasks != t:
        raise RunError(f"{path}: mismatched task counts: CONTINUAL.N_TASKS is {n_tasks} but the matrix is {t}x{t}")
    # DAP: LOG['acc'][task_t, task_id], unseen tasks left at 0. Ours: A[after task i][task j].
    a = check_matrix([[raw[j][i] for j in range(t)] for i in range(t)], t, str(path))
    derived = summarize(a)
    if abs(derived["final_acc"] - finals["Accuracy"]) > 1e-3:
        raise RunError(
            f"{path}: the matrix (mean of its last column {derived['final_acc']:.5f}) does not match "
            f"'Final test Accuracy: {finals['Accuracy']:.5f}'; the file looks edited or cut"
        )
    backbone = flat.get("MODEL.TYPE")
    feature = flat.get("DATA.FEATURE")
    if backbone and feature:
        backbone = f"{backbone} ({feature})"
    seed = flat.get("SEED")
    return RunRecord(
        path=path,
        kind="dap_reference",
        method=str(flat.get("MODEL.TRANSFER_TYPE") or "dap"),
        backbone=backbone or None,
        dataset=flat.get("DATA.NAME") or None,
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        n_tasks=t,
        acc_matrix=a,
        final_acc=finals["Accuracy"],
        forgetting=finals.get("Forget", derived["forgetting"]),
        learning_acc=finals.get("LA", derived["learning_acc"]),
        bwt=derived["bwt"],
        # The reference evaluation votes the key index over each single-task test batch.
        selection="batch_majority",
        config=flat,
    )

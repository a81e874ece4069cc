"""A continual run killed with SIGKILL at a drawn point, then restarted with resume, ends with
exactly the run folder of the uninterrupted run: metrics.json (all but its timings),
acc_matrix.csv, final_results.txt and the last checkpoint's weights.

Each test kills one run folder several times in a row (a chain: every restart resumes from
what the kill before it left) and compares it with an uninterrupted reference run of the same
config, shared by the module. Kill points are drawn from ``random.Random(KILL_SEED)`` within a
phase found in the child's log (kill_support); the seed is printed in every assertion message
and ``CASDAP_KILL_SEED=<seed>`` draws the same points again (where they land also depends on
the machine's speed). A kill that lands after its phase (or after the run ended) is retried from
a copy of the folder as it was, with an earlier draw; three misses fail the test.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from kill_support import ChildRuns

KILL_SEED = int(os.environ.get("CASDAP_KILL_SEED") or random.SystemRandom().randrange(2**31))
SHIFT_YAML = ROOT / "configs" / "dap" / "embedded_shift.yaml"
DIGITS_YAML = ROOT / "configs" / "dap" / "digits.yaml"
# embedded_shift as shipped (adapted query, Gaussian task inference, LDA head over all classes), 2
# tasks of 50 classes, 2 epochs, on a stream rendered with 20 training and 5 test images a class (the
# shipped 80 / 20 render 4 times longer, and evaluating 2000 test images would be most of the
# module's time), of which a fifth of the training images: 4 a class, as a twentieth of 80
SHIFT_RENDERS = (20, 5)
SHIFT = ["DATA.PERCENTAGE", "0.2", "SOLVER.TOTAL_EPOCH", "2", "CONTINUAL.N_TASKS", "2", "CONTINUAL.INITIAL", "50",
         "CONTINUAL.INCREMENT", "50"]
# digits.yaml's DAP (16 keys a task, restricted logits) on 30% of the training images, 1 epoch, 2
# batches a task, read by 2 loader workers
DIGITS = ["DATA.PERCENTAGE", "0.3", "SOLVER.TOTAL_EPOCH", "1", "DATA.NUM_WORKERS", "2"]
# streaming LDA after APER's first-session adaptation of the backbone (prototypes.FirstSessionAdaptation)
SLDA = ["MODEL.TRANSFER_TYPE", "slda", "BASELINES.FIRST_SESSION", "True", "DATA.PERCENTAGE", "0.5",
        "SOLVER.TOTAL_EPOCH", "2"]
TIMING_FIELDS = ("wall_time_s", "train_images_per_s")


@dataclass
class Reference:
    """An uninterrupted run: its folder, argv (without the folder) and progress lines with the
    seconds from the first line."""

    out: Path
    argv: list[str]
    lines: list[tuple[str, float]]

    def keys(self) -> list[str]:
        return [k for k, _ in self.lines]

    def index(self, prefix: str, last: bool = False) -> int:
        found = [i for i, k in enumerate(self.keys()) if k.startswith(prefix)]
        assert found, f"no progress line starts with {prefix!r}: {self.keys()}"
        return found[-1] if last else found[0]


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    runs = ChildRuns(tmp_path_factory.mktemp("children"))
    yield runs
    runs.close()
    print(f"\ntest_resume_killed: the killed, resumed and reference runs used {runs.cpu_s:.1f} CPU s")


# every run on the narrow test CAS-ViT (rcvit_test), randomly initialised from the seed: what a kill
# can break does not depend on the backbone's width or weights, and a run costs half its rcvit_xs CPU
BACKBONE = ["MODEL.BACKBONE", "rcvit_test", "MODEL.RANDOM_INIT", "True"]


def _argv(yaml: Path, extra: list[str]) -> list[str]:
    return ["cl", "--config-file", yaml, "--no-progress", "--device", "cpu", *BACKBONE,
            "SOLVER.LOG_EVERY_N", "1", "SOLVER.AUTO_RESUME", "True", *extra]


def _reference(children: ChildRuns, where: Path, argv: list[str]) -> Reference:
    out = where / "reference"
    code, lines = children.run([*argv, "--output_dir", out], where / "reference.log")
    assert code == 0, (where / "reference.log").read_text()[-3000:]
    return Reference(out, argv, [(k, t - lines[0][1]) for k, t in lines])


@pytest.fixture(scope="module")
def shift_reference(children, tmp_path_factory):
    children.render_shift(*SHIFT_RENDERS)  # every later child of the module finds the stream rendered
    return _reference(children, tmp_path_factory.mktemp("shift"), _argv(SHIFT_YAML, SHIFT))


@pytest.fixture(scope="module")
def digits_reference(children, tmp_path_factory):
    return _reference(children, tmp_path_factory.mktemp("digits"), _argv(DIGITS_YAML, DIGITS))


@pytest.fixture(scope="module")
def slda_reference(children, tmp_path_factory):
    return _reference(children, tmp_path_factory.mktemp("slda"), _argv(DIGITS_YAML, SLDA))


# ------------------------------------------------------------------------------------ killing
class Chain:
    """Kills of one run folder, one after another; ``done`` says what happened, for messages."""

    def __init__(self, children: ChildRuns, ref: Reference, out: Path, name: str) -> None:
        self.children, self.ref, self.out = children, ref, out
        self.rng = random.Random(f"{KILL_SEED}-{name}")
        self.done: list[str] = []
        self.n = 0

    def context(self) -> str:
        return f"kill seed {KILL_SEED} (CASDAP_KILL_SEED={KILL_SEED} draws these points again); kills: {self.done}"

    def _log(self) -> Path:
        self.n += 1
        return self.out.parent / f"{self.out.name}-{self.n}.log"

    def kill_within(self, phase: str, first: int, last: int) -> None:
        """SIGKILL the run at a drawn time after progress line ``first`` of the reference and before
        its line ``last`` (indices into the reference's lines)."""
        lines = self.ref.lines
        start, end = lines[first][1], lines[last][1]
        snapshot = self.out.parent / f"{self.out.name}-before-{self.n + 1}"
        if self.out.exists():
            shutil.copytree(self.out, snapshot)
        share = 1.0
        misses = []
        for _ in range(3):
            when = start + share * self.rng.random() * (end - start)
            anchor = max(i for i in range(first, last) if lines[i][1] <= when)
            landed = self.children.kill_after([*self.ref.argv, "--output_dir", self.out], self._log(),
                                              self.ref.keys()[anchor:], when - lines[anchor][1])
            inside = landed.code == -9 and lines[last][0] not in landed.keys
            what = (f"{phase}: after '{lines[anchor][0]}' + {when - lines[anchor][1]:.2f}s, last line printed "
                    f"'{landed.keys[-1] if landed.keys else '-'}', exit code {landed.code}")
            if inside:
                self.done.append(what)
                shutil.rmtree(snapshot, ignore_errors=True)
                return
            misses.append(what)
            shutil.rmtree(self.out, ignore_errors=True)
            if snapshot.exists():
                shutil.copytree(snapshot, self.out)
            share /= 2  # earlier
        pytest.fail(f"three kills meant for {phase} landed after it: {misses}; {self.context()}")

    def trap(self, trap: str) -> None:
        """Run until the child kills itself at ``trap`` (kill_support: ``before:`` / ``after:`` the
        rename onto a file, ``finished:metrics.json``)."""
        landed = self.children.trapped([*self.ref.argv, "--output_dir", self.out], self._log(), trap)
        assert landed.code == -9, (f"the trap '{trap}' never fired (exit code {landed.code}); {self.context()}; "
                                   f"log tail:\n{self._tail()}")
        self.done.append(f"trap {trap}")

    def _tail(self) -> str:
        return (self.out.parent / f"{self.out.name}-{self.n}.log").read_text()[-3000:]

    def finish(self) -> None:
        """Restart once more without a kill, then compare with the reference."""
        code, _ = self.children.run([*self.ref.argv, "--output_dir", self.out], self._log())
        assert code == 0, f"the resumed run failed (exit code {code}); {self.context()}; log tail:\n{self._tail()}"
        assert_same_run(self.out, self.ref.out, self.context())


def _metrics(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in TIMING_FIELDS}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, NaN where NaN (a model's buffer may hold NaN for tasks not trained)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.isnan(), b.isnan()) and torch.equal(
        a.nan_to_num(0.0) if a.is_floating_point() else a, b.nan_to_num(0.0) if b.is_floating_point() else b)


def assert_same_run(out: Path, ref: Path, context: str) -> None:
    """The run folder ``out`` holds what the uninterrupted ``ref`` holds."""
    got, want = _metrics(out), _metrics(ref)
    assert got["finished"] and got == want, (
        f"metrics differ from the uninterrupted run: "
        f"{ {k: (got.get(k), want[k]) for k in want if got.get(k) != want[k]} }; {context}")
    assert (out / "acc_matrix.csv").read_text() == (ref / "acc_matrix.csv").read_text(), context
    final = (out / "final_results.txt").read_text().replace(str(out), "<out>")
    assert final == (ref / "final_results.txt").read_text().replace(str(ref), "<out>"), context
    last = sorted((ref / "checkpoints").glob("task_*.pth"))[-1].name
    a = torch.load(ref / "checkpoints" / last, weights_only=True)
    b = torch.load(out / "checkpoints" / last, weights_only=True)
    differ = [k for k in a["model"] if not _same(a["model"][k], b["model"][k])]
    assert not differ, f"{last}: weights differ from the uninterrupted run's ({differ[:5]}); {context}"
    assert a["strategy"].keys() == b["strategy"].keys()
    stray = [p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("task_")]
    assert not stray, f"files left in checkpoints/: {stray}; {context}"
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == [last], f"checkpoints/ holds {kept}, the uninterrupted run only {last}; {context}"


# -------------------------------------------------------------------------------------- tests
@pytest.mark.slow  # an embedded_shift run of two tasks, then three killed and one resumed (34 CPU s in all)
def test_embedded_shift_killed_in_the_adaptation_in_task_0_and_in_the_last_task(children, shift_reference, tmp_path):
    """The shipped embedded_shift DAP: killed while the query is adapted (the start of task 0),
    while DAP trains task 0 on the adapted query, and in task 2 of 2 (training, class statistics,
    evaluation or the checkpoint write), after the adapted query was checkpointed."""
    ref = shift_reference
    per_epoch = int(ref.keys()[0].split("/")[-1])  # "... iteration 1/N"
    adapt_end = 2 * per_epoch - 1  # SHIFT's 2 adaptation epochs, then DAP's own 2
    assert ref.index("after task 1/2") == 4 * per_epoch, ref.keys()
    chain = Chain(children, ref, tmp_path / "run", "shift")
    chain.kill_within("the query's adaptation", 0, adapt_end)
    chain.kill_within("DAP's training of task 0", adapt_end + 1, ref.index("after task 1/2"))
    chain.kill_within("task 2 of 2", ref.index("after task 1/2"), ref.index("after task 2/2"))
    chain.finish()


@pytest.mark.slow  # a digits DAP run of five tasks, then two killed and one resumed
def test_digits_dap_with_loader_workers_killed_in_task_0_and_after_several_tasks(children, digits_reference,
                                                                               tmp_path):
    """digits.yaml's DAP with 2 loader workers: killed in task 1 of 5, then in task 4 or 5 (three or
    four checkpoints written)."""
    ref = digits_reference
    chain = Chain(children, ref, tmp_path / "run", "digits")
    chain.kill_within("task 1 of 5", 0, ref.index("after task 1/5"))
    chain.kill_within("task 4 or 5 of 5", ref.index("after task 3/5"), ref.index("after task 5/5"))
    chain.finish()


@pytest.mark.slow  # an slda run of five tasks on the digits, then six killed and one resumed
def test_first_session_slda_killed_in_the_adaptation_and_around_every_file_write(children, slda_reference, tmp_path):
    """Streaming LDA after the first-session adaptation: killed while the backbone is adapted, then
    around the writes of the run folder: with task_000.pth written under its temporary name, right
    after task_002.pth (metrics.json not yet updated), about to delete task_002.pth once task_003.pth
    is written, while writing the last checkpoint, right after it, and right after
    the finished metrics.json."""
    ref = slda_reference
    adapt_end = ref.index("task 1/5 epoch 2/", last=True)
    chain = Chain(children, ref, tmp_path / "run", "slda")
    chain.kill_within("the backbone's adaptation", 0, adapt_end)
    for trap in ("before:task_000.pth", "after:task_002.pth", "unlink:task_002.pth", "before:task_004.pth",
                 "after:task_004.pth", "finished:metrics.json"):
        chain.trap(trap)
    chain.finish()


# ------------------------------------------------------- the last task's writes, in this process
def _tiny_run(cifar: Path, out: Path, *extra: str):
    from cl_support import tiny_cifar_cfg

    from casdap.continual.runner import run_continual

    return run_continual(tiny_cifar_cfg(cifar, out, "ncm", "SOLVER.AUTO_RESUME", "True", *extra), progress=False)


@pytest.fixture
def tiny_reference(tmp_path):
    from cl_support import write_tiny_cifar

    cifar = write_tiny_cifar(tmp_path / "cifar")
    _tiny_run(cifar, tmp_path / "reference")
    return cifar, tmp_path / "reference"


def test_a_run_stopped_right_after_its_last_checkpoint_writes_its_results_when_resumed(tiny_reference, tmp_path,
                                                                                      monkeypatch):
    """Stopped between the last task's checkpoint and its result files, a resumed run has nothing
    left to train and must still write them (it used to leave metrics.json unfinished for good)."""
    from casdap.continual import run_directory

    cifar, ref = tiny_reference
    real = run_directory.save_checkpoint

    def save_then_stop(obj, path):
        real(obj, path)
        if Path(path).name == "task_001.pth":
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        mp.setattr(run_directory, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            _tiny_run(cifar, out)
    assert not json.loads((out / "metrics.json").read_text())["finished"]
    resumed = _tiny_run(cifar, out)
    assert resumed.metrics["finished"]
    assert_same_run(out, ref, "stopped after task_001.pth")


def test_a_run_stopped_right_after_its_finished_metrics_has_every_result_file(tiny_reference, tmp_path, monkeypatch):
    """metrics.json's ``finished`` is what a restart trusts (it then leaves the folder as it is), so
    it is written after the other result files (acc_matrix.csv used to lack its last row)."""
    from casdap.continual import run_directory

    cifar, ref = tiny_reference
    real = run_directory.write_json

    def write_then_stop(path, obj):
        real(path, obj)
        if Path(path).name == "metrics.json" and obj.get("finished"):
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        mp.setattr(run_directory, "write_json", write_then_stop)
        with pytest.raises(KeyboardInterrupt):
            _tiny_run(cifar, out)
    _tiny_run(cifar, out)  # "holds a finished run": nothing is written
    assert_same_run(out, ref, "stopped after the finished metrics.json")


def test_stale_temporaries_of_killed_writes_are_removed_and_nothing_else(tmp_path):
    from casdap.files import atomic_path, remove_stale_temporaries

    with atomic_path(tmp_path / "task_000.pth") as tmp:  # what a write killed before its rename leaves
        left = tmp.with_name(tmp.name.replace(".task_000", ".task_001"))
        left.write_bytes(b"half")
    keep = [tmp_path / n for n in ("task_000.pth", ".hidden", "notes.tmp", ".config.yaml")]
    for p in keep[1:]:
        p.write_text("x")
    assert remove_stale_temporaries(tmp_path, tmp_path / "absent") == [left]
    assert sorted(tmp_path.iterdir()) == sorted(keep)

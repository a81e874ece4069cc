"""``casdap cl`` in child processes that a test kills with SIGKILL, then restarts with resume.

A fresh ``python -m casdap`` spends about 7 CPU seconds importing torch, torchvision and avalanche
before it runs anything. The children are therefore forked from one server process (run this file
as a script) that has made those imports once, and has made nothing else: every child starts as a
new process would, runs ``casdap.cli.main(["cl", ...])`` with its output in a log file, and is
killed like any other process (SIGKILL to its pid; its loader workers, in its process group, are
left to notice on their own, as after an OOM kill). The server may render the embedded_shift stream
before it forks (``render_shift``, with fewer images a class than the shipped 80 / 20): a pure
function of the seed and the counts that the package caches per process, so a child finds the
tensors it would have rendered.

The kill point is found in the child's log: with ``--no-progress`` and ``SOLVER.LOG_EVERY_N 1`` a
run prints a line after every training iteration and after every task (:func:`progress_keys`). A
reference run of the same config timestamps those lines; a kill waits for a drawn line, then
sleeps a drawn fraction of the time the reference took to its next line. A ``trap`` instead kills
the child at a named point of the code (:func:`install_trap`), e.g. while a checkpoint is being written.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A progress line: one per training iteration (LOG_EVERY_N 1, no bar), one per finished task.
_PROGRESS = re.compile(r"^(task \d+/\d+ epoch \d+/\d+ iteration \d+/\d+|after task \d+/\d+):")
DONE_SUFFIX = ".exit"  # beside the log: the exit code of a child that ended on its own


def progress_keys(text: str) -> list[str]:
    """The progress lines of a log (their part before the first colon), in order; a line seen before
    gets `` #2``, `` #3``... (an epoch's lines may repeat: the query's adaptation, then DAP's epochs)."""
    keys: list[str] = []
    seen: dict[str, int] = {}
    for line in text.splitlines():
        if m := _PROGRESS.match(line):
            seen[m.group(1)] = seen.get(m.group(1), 0) + 1
            keys.append(m.group(1) + (f" #{seen[m.group(1)]}" if seen[m.group(1)] > 1 else ""))
    return keys


# ---------------------------------------------------------------------------------- child side
def install_trap(trap: str) -> None:
    """Make this process SIGKILL itself at ``trap``: ``before:NAME`` (an atomic write has the file
    complete under its temporary name and is about to rename it onto NAME), ``after:NAME`` (just
    renamed), ``finished:metrics.json`` (just renamed a metrics.json that says the run finished),
    ``unlink:NAME`` (about to delete NAME: an earlier task's checkpoint, once a newer one is written)."""
    when, name = trap.split(":", 1)
    assert when in ("before", "after", "finished", "unlink"), trap
    real, real_unlink = os.replace, os.unlink

    def unlink(path, *args, **kwargs):
        if when == "unlink" and Path(path).name == name:
            os.kill(os.getpid(), signal.SIGKILL)
        real_unlink(path, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        hit = Path(dst).name == name and (when != "finished" or '"finished": true' in Path(src).read_text())
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst, *args, **kwargs)
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace, os.unlink = replace, unlink


def _child(argv: list[str], log: str, cwd: str, trap: str | None) -> None:
    os.setpgid(0, 0)  # its loader workers join its group, which the test ends after the run
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # line-buffered: the test reads lines as they come
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.chdir(cwd)
    code = 1
    try:
        if trap is not None:
            install_trap(trap)
        from casdap.cli import main

        code = main(argv) or 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        Path(log + DONE_SUFFIX).write_text(str(code))
        os._exit(code)


def serve() -> None:
    """The server: JSON requests on stdin, one JSON answer each on stdout."""
    import torch  # noqa: F401  the imports every child would make
    import torchvision  # noqa: F401
    from avalanche.training.templates import SupervisedTemplate  # noqa: F401

    import casdap.cli.cl  # noqa: F401
    import casdap.continual.runner  # noqa: F401
    from casdap.continual.methods import METHOD_NAMES, get_method

    for name in METHOD_NAMES:
        get_method(name)
    answer = sys.stdout
    sys.stdout = sys.stderr
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "start":
            pid = os.fork()
            if pid == 0:
                _child(req["argv"], req["log"], req["cwd"], req.get("trap"))
            reply = {"pid": pid}
        elif req["op"] == "wait":
            _, status, usage = os.wait4(req["pid"], 0)
            reply = {"code": os.waitstatus_to_exitcode(status), "cpu_s": usage.ru_utime + usage.ru_stime}
        elif req["op"] == "render_shift":
            from casdap.data import glyph_stream

            glyph_stream.TRAIN_PER_CLASS, glyph_stream.TEST_PER_CLASS = req["train"], req["test"]
            glyph_stream.render_shift_stream(req["seed"], req["train"], req["test"], req["size"])
            reply = {}
        else:
            reply = {"error": f"unknown op {req['op']}"}
        answer.write(json.dumps(reply) + "\n")
        answer.flush()


# ---------------------------------------------------------------------------------- test side
@dataclass
class Landed:
    """Where a kill landed: the progress lines the child printed before it died, its exit code
    (-9: killed; 0: it had finished first) and what was asked."""

    keys: list[str]
    code: int
    asked: str


class ChildRuns:
    """A server (:func:`serve`) and the children it forks."""

    def __init__(self, cwd: Path) -> None:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "OMP_NUM_THREADS": "1"}
        self.cwd = cwd
        self.cpu_s = 0.0  # CPU seconds of the children reaped so far (their reaped loader workers included)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=cwd)

    def _ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the child-run server died (exit code {self.proc.poll()})"
        reply = json.loads(line)
        assert "error" not in reply, reply["error"]
        return reply

    def render_shift(self, train: int, test: int, seed: int = 0, size: int = 32) -> None:
        """Render the embedded_shift stream with ``train`` / ``test`` images a class, which every
        later child then reads (the package's own per-class counts, set in the server)."""
        self._ask(op="render_shift", train=train, test=test, seed=seed, size=size)

    def start(self, argv: list[str], log: Path, trap: str | None = None) -> int:
        Path(str(log) + DONE_SUFFIX).unlink(missing_ok=True)
        log.write_text("")  # there before the child opens it, for the test to read
        return self._ask(op="start", argv=[str(a) for a in argv], log=str(log), cwd=str(self.cwd), trap=trap)["pid"]

    def wait(self, pid: int) -> int:
        """Reap the child; its exit code (negative: the signal that ended it). Its process group
        (loader workers that outlived it) is ended too."""
        reply = self._ask(op="wait", pid=pid)
        code = reply["code"]
        self.cpu_s += reply["cpu_s"]
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return code

    def run(self, argv: list[str], log: Path, timeout: float = 900.0) -> tuple[int, list[tuple[str, float]]]:
        """Run to the end: the exit code and every progress line with the time it appeared."""
        pid = self.start(argv, log)
        seen: list[tuple[str, float]] = []
        done = Path(str(log) + DONE_SUFFIX)
        deadline = time.monotonic() + timeout
        while True:
            finished = done.exists()
            keys = progress_keys(log.read_text(errors="replace"))
            now = time.monotonic()
            seen += [(k, now) for k in keys[len(seen):]]
            if finished:
                break
            assert now < deadline, f"run did not finish in {timeout:.0f}s; log tail:\n{log.read_text()[-2000:]}"
            time.sleep(0.01)
        return self.wait(pid), seen

    def kill_after(self, argv: list[str], log: Path, keys: list[str], delay: float, timeout: float = 900.0) -> Landed:
        """Start a run, wait for a progress line of ``keys`` (a line and those after it: a resumed run
        prints only the lines of the tasks it has left), sleep ``delay`` seconds, SIGKILL it."""
        pid = self.start(argv, log)
        done = Path(str(log) + DONE_SUFFIX)
        deadline = time.monotonic() + timeout
        wanted = set(keys)
        while not wanted & set(progress_keys(log.read_text(errors="replace"))) and not done.exists():
            assert time.monotonic() < deadline, f"'{keys[0]}' never came; log tail:\n{log.read_text()[-2000:]}"
            time.sleep(0.005)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)  # a child that ended already is a zombie until reaped: no error
        code = self.wait(pid)
        return Landed(progress_keys(log.read_text(errors="replace")), code, f"'{keys[0]}' + {delay:.3f}s")

    def trapped(self, argv: list[str], log: Path, trap: str) -> Landed:
        """Run until the trap kills the child."""
        code = self.wait(self.start(argv, log, trap=trap))
        return Landed(progress_keys(log.read_text(errors="replace")), code, trap)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    serve()

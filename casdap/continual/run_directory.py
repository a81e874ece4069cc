"""A continual run's directory, written by an Avalanche plugin, and read back to resume it.

:class:`RunDirectoryPlugin` brings the directory up to date after every evaluation that follows a
training: ``metrics.json``, ``acc_matrix.csv``, TensorBoard scalars and a per-task checkpoint, and
``final_results.txt`` after the last task. Only the newest task checkpoint stays (what resume and
``casdap export`` read): the earlier ones are deleted once it is written in full, so a run killed
at any moment can be resumed; ``keep_task_checkpoints`` (``CONTINUAL.KEEP_TASK_CHECKPOINTS``)
keeps every task's. Any strategy gets the files ``casdap compare`` reads by appending the plugin
after its evaluator, whose metrics it reads::

    strategy.plugins.append(RunDirectoryPlugin(out, n_tasks=len(stream), info={...}, config_text=...))
    for t, exp in enumerate(train_stream):
        strategy.train(exp)
        strategy.eval(test_stream[: t + 1])   # row t of the accuracy matrix

:mod:`casdap.continual.run_reading` reads a run directory back (the newest usable checkpoint, a
finished run's metrics, whether the settings of a resumption match the run's). What a strategy
keeps beyond its model is its own (``strategy.state_dict()`` / ``load_state_dict``): this module
stores it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from tqdm.auto import tqdm

from casdap.checkpoint import TASK_CHECKPOINT, numbered_checkpoints, save_checkpoint
from casdap.continual.results import final_accuracy, summarize, write_acc_matrix_csv, write_final_results, write_json
from casdap.continual.run_reading import CHECKPOINT_DIR, CHECKPOINT_FORMAT
from casdap.engine.seeding import capture_rng_state
from casdap.errors import CasdapError
from casdap.run_metrics import METRICS_FIELDS

_ACC_KEY = re.compile(r"^Top1_Acc_Exp/eval_phase/[^/]+/(?:Task\d+/)?Exp(\d+)$")
# The fields of metrics.json that describe the run rather than its results (given by the caller).
RUN_INFO_FIELDS = ("method", "backbone", "dataset", "seed", "selection", "random_init_backbone",
                   "trainable_params", "total_params")


@dataclass
class RunState:
    """What the task loop accumulates (and what a checkpoint restores)."""

    acc_matrix: list[list[float | None]] = field(default_factory=list)
    mixed: list[float | None] = field(default_factory=list)
    task_selection: list[float | None] = field(default_factory=list)
    wtp: list[list[float | None]] = field(default_factory=list)  # rows like acc_matrix's: within-task accuracy
    tii: list[list[float | None]] = field(default_factory=list)  # rows: share of images whose inferred task is right
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    train_images: int = 0


# ----------------------------------------------------------------------------------- evaluation
def row_from_metrics(metrics: dict[str, Any], seen: int) -> list[float | None]:
    """Row of the accuracy matrix from Avalanche's per-experience accuracies (None where absent)."""
    accs: dict[int, float] = {}
    for k, v in metrics.items():
        m = _ACC_KEY.match(k)
        if m:
            accs[int(m.group(1))] = float(v)
    return [accs.get(j) for j in range(seen)]


@torch.no_grad()
def mixed_stream_accuracy(strategy, datasets: Sequence, row: list[float | None], selection: str | None, seed: int,
                          batch: int, workers: int, pin_memory: bool = False) -> float:
    """Accuracy on one shuffled stream of every seen task's test images (batches mix tasks).

    Only DAP's batch-majority protocol lets an image's prediction depend on its batch mates. Every
    other protocol predicts each image alone, so the mixed stream's accuracy is the image-weighted
    mean of the per-task accuracies in ``row`` and needs no second pass over the test data. The pass
    predicts through the strategy's ``predict(x, y)`` where it is one of this package's
    (:class:`~casdap.continual.strategy_mixin.CasdapStrategyMixin`); another strategy's model sees
    the images alone.
    """
    from torch.utils.data import ConcatDataset, DataLoader

    if selection != "batch_majority" and None not in row:
        sizes = [len(d) for d in datasets]
        return sum(acc * n for acc, n in zip(row, sizes)) / sum(sizes)
    loader = DataLoader(ConcatDataset(list(datasets)), batch_size=batch, shuffle=True, num_workers=workers,
                        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed * 1000 + len(datasets)))
    from casdap.continual.strategy_mixin import CasdapStrategyMixin

    own = isinstance(strategy, CasdapStrategyMixin)  # other strategies' predict methods mean other things
    strategy.model.eval()
    hits = total = 0
    for x, y, *_ in loader:
        x, y = x.to(strategy.device), y.to(strategy.device)
        logits = strategy.predict(x, y)[0] if own else strategy.model(x)
        hits += int((logits.argmax(-1) == y).sum())
        total += len(y)
    return hits / max(total, 1)


class TaskDecomposition:
    """Within-task prediction (WTP) and task-identity inference (TII) of one evaluation, per task.

    For every evaluated image: TII counts whether its inferred task is its own, WTP whether the
    logits under its own task (DAP: an oracle pass with the true task's prompts), restricted to its
    task's classes, pick its class. Both come from the strategy's ``task_decomposition`` (any
    :class:`~casdap.continual.strategy_mixin.CasdapStrategyMixin`; another strategy gets the task its
    predicted class implies and its logits). Class-incremental accuracy (CIL) is the accuracy matrix.
    """

    def __init__(self, stream: Sequence) -> None:
        tasks = {int(c): int(exp.current_experience) for exp in stream for c in exp.classes_in_this_experience}
        self.class_task = torch.full((max(tasks, default=0) + 1,), -1, dtype=torch.long)
        for c, t in tasks.items():
            self.class_task[c] = t
        self.index = {int(exp.current_experience): j for j, exp in enumerate(stream)}
        n = len(stream)
        self.wtp_hits, self.tii_hits, self.total = [0] * n, [0] * n, [0] * n
        self._on: torch.device | None = None

    def add(self, strategy) -> None:
        """Count the strategy's last evaluation batch (``mb_x``, ``mb_y``, ``mb_output``)."""
        from casdap.continual.strategy_mixin import CasdapStrategyMixin

        y, logits = strategy.mb_y, strategy.mb_output.detach()
        if self._on != logits.device:
            self.class_task, self._on = self.class_task.to(logits.device), logits.device
        y = y.to(logits.device)
        true_task = torch.where(y < len(self.class_task), self.class_task[y.clamp(max=len(self.class_task) - 1)], -1)
        decompose = (strategy.task_decomposition if isinstance(strategy, CasdapStrategyMixin)
                     else lambda *a: CasdapStrategyMixin.task_decomposition(strategy, *a))
        inferred, within = decompose(logits, self.class_task, true_task)
        within = within.detach().to(logits.device)
        width = min(len(self.class_task), within.shape[1])
        own = torch.zeros_like(within, dtype=torch.bool)
        own[:, :width] = self.class_task[:width][None, :] == true_task[:, None]
        wtp = within.masked_fill(~own, float("-inf")).argmax(1) == y
        tii = inferred.to(logits.device) == true_task
        j = self.index[int(strategy.experience.current_experience)]
        self.wtp_hits[j] += int(wtp.sum())
        self.tii_hits[j] += int(tii.sum())
        self.total[j] += len(y)

    def rows(self) -> tuple[list[float | None], list[float | None]]:
        """WTP and TII of every evaluated task (None for a task with no image)."""
        share = lambda hits: [h / n if n else None for h, n in zip(hits, self.total)]  # noqa: E731
        return share(self.wtp_hits), share(self.tii_hits)


# ------------------------------------------------------------------------------------ the plugin
class RunDirectoryPlugin(SupervisedPlugin):
    """Writes the run directory after every evaluation that follows a training (one row per task).

    ``info`` holds :data:`RUN_INFO_FIELDS`; ``notes`` are protocol lines for ``final_results.txt``.
    The checkpoint after task ``t`` holds the model, this plugin's :class:`RunState`, the strategy's
    own state (:func:`strategy_state`) and every random generator, so a resumed run ends with the
    metrics an uninterrupted one would have. Training throughput counts every image of every
    training iteration (replayed ones included) on every one of ``world`` processes. With
    ``write=False`` (ranks other than 0) the plugin only keeps its state. Earlier tasks' checkpoints
    are deleted once a newer one is written, unless ``keep_task_checkpoints``; without
    ``keep_final_checkpoint`` a finished run keeps none.
    """

    def __init__(self, out: Path, n_tasks: int, info: dict[str, Any], config_text: str, *,
                 notes: Sequence[str] = (), joint: bool = False, keep_final_checkpoint: bool = True,
                 keep_task_checkpoints: bool = False, eval_batch: int = 64, num_workers: int = 0,
                 pin_memory: bool = False, world: int = 1, write: bool = True, verbose: bool = True) -> None:
        super().__init__()
        missing = set(RUN_INFO_FIELDS) - set(info)
        if missing:
            raise CasdapError(f"RunDirectoryPlugin: info lacks {sorted(missing)}")
        self.out, self.n_tasks, self.info, self.config_text = Path(out), int(n_tasks), dict(info), config_text
        self.notes, self.joint, self.keep_final_checkpoint = list(notes), joint, keep_final_checkpoint
        self.keep_task_checkpoints = keep_task_checkpoints
        self.eval_batch, self.num_workers, self.pin_memory, self.world = eval_batch, num_workers, pin_memory, world
        self.write, self.verbose = write, verbose
        self.state = RunState()
        self._t0: float | None = None  # when the training of the pending row began
        self._decomposition: TaskDecomposition | None = None
        self._train_t0 = 0.0

    # -- what the directory says --------------------------------------------------------------
    def tasks_done(self) -> int:
        return self.n_tasks if self.joint and self.state.acc_matrix else len(self.state.acc_matrix)

    def metrics(self, finished: bool) -> dict[str, Any]:
        s = self.state
        metrics = {
            **{k: self.info[k] for k in ("method", "backbone", "dataset", "seed")},
            "n_tasks": self.n_tasks, "tasks_done": self.tasks_done(), "finished": finished,
            "acc_matrix": s.acc_matrix, "wtp_matrix": s.wtp, "tii_matrix": s.tii,
            **summarize(s.acc_matrix, joint=self.joint),
            "wtp": final_accuracy(s.wtp), "tii": final_accuracy(s.tii),
            "task_selection_acc": s.task_selection[-1] if s.task_selection else None,
            "mixed_stream_acc": s.mixed[-1] if s.mixed else None,
            **{k: self.info[k] for k in ("selection", "random_init_backbone")},
            "wall_time_s": s.wall_time_s,
            **{k: self.info[k] for k in ("trainable_params", "total_params")},
            "train_images_per_s": s.train_images / s.train_time_s if s.train_time_s else None,
        }
        assert metrics.keys() == METRICS_FIELDS.keys(), "metrics.json fields and run_metrics.METRICS_FIELDS differ"
        return metrics

    # -- training ------------------------------------------------------------------------------
    def before_training(self, strategy, **kwargs):
        self._t0 = self._t0 or time.perf_counter()
        self._train_t0 = time.perf_counter()

    def after_training_iteration(self, strategy, **kwargs):
        self.state.train_images += len(strategy.mb_x) * self.world

    def after_training(self, strategy, **kwargs):
        self.state.train_time_s += time.perf_counter() - self._train_t0

    # -- evaluation ----------------------------------------------------------------------------
    def before_eval(self, strategy, **kwargs):
        plugins, evaluator = strategy.plugins, strategy.evaluator
        if self in plugins and evaluator in plugins and plugins.index(self) < plugins.index(evaluator):
            raise CasdapError("RunDirectoryPlugin reads the evaluator's metrics: add it after the evaluator "
                              "(strategy.plugins.append(plugin) once the strategy is built)")
        if self._t0 is not None:  # an evaluation that makes a row: decompose its accuracy
            self._decomposition = TaskDecomposition(list(strategy.current_eval_stream))

    def after_eval_iteration(self, strategy, **kwargs):
        if self._decomposition is not None:
            self._decomposition.add(strategy)

    def after_eval(self, strategy, **kwargs):
        if self._t0 is None:  # an evaluation without a training before it adds no row
            return
        stream = list(strategy.current_eval_stream)
        results = strategy.evaluator.get_last_metrics()
        row = row_from_metrics(results, len(stream))
        task_sel = next((float(v) for k, v in results.items() if k.startswith("TaskSel_Stream")), None)
        mixed = mixed_stream_accuracy(strategy, [e.dataset for e in stream], row, getattr(strategy, "selection", None),
                                      int(self.info["seed"]), self.eval_batch, self.num_workers, self.pin_memory)
        wtp, tii = self._decomposition.rows() if self._decomposition is not None else (None, None)
        self._decomposition = None
        self.finish_task(strategy, row, mixed, task_sel, wtp=wtp, tii=tii)

    def finish_task(self, strategy, row: list[float | None], mixed: float | None, task_sel: float | None, *,
                    wtp: list[float | None] | None = None, tii: list[float | None] | None = None) -> None:
        """Record row ``len(row) - 1`` (the last row for joint training) and bring the directory up to date;
        ``wtp`` / ``tii``: the row's within-task and task-identity accuracies (None: not measured)."""
        s = self.state
        def padded(values: list[float | None] | None) -> list[float | None]:
            return list(values if values is not None else [None] * len(row)) + [None] * (self.n_tasks - len(row))

        for rows in (s.wtp, s.tii):  # a run resumed from a checkpoint that had no decomposition yet
            rows.extend([None] * self.n_tasks for _ in range(len(s.acc_matrix) - len(rows)))
        s.acc_matrix.append(row + [None] * (self.n_tasks - len(row)))
        s.wtp.append(padded(wtp))
        s.tii.append(padded(tii))
        s.mixed.append(mixed)
        s.task_selection.append(task_sel)
        s.wall_time_s += time.perf_counter() - (self._t0 or time.perf_counter())
        self._t0 = None
        t = self.n_tasks - 1 if self.joint else len(s.acc_matrix) - 1
        finished = t == self.n_tasks - 1
        if not self.write:
            return
        saved = self.keep_final_checkpoint or not finished
        if saved:
            save_checkpoint({
                "format": CHECKPOINT_FORMAT, "tasks_done": t + 1, "config": self.config_text,
                "model": strategy.model.state_dict(), "state": vars(s), "strategy": strategy_state(strategy),
                "rng": capture_rng_state(),
            }, self.out / CHECKPOINT_DIR / f"task_{t:03d}.pth")
            self.drop_earlier_checkpoints(t)  # the newest is in place: a resumed run starts from it
        metrics = self.write_results(strategy, finished)
        if not saved:  # nothing left to resume once metrics.json says the run finished
            self.drop_earlier_checkpoints(t)
        writers = _tensorboard_writers(strategy)
        for w in writers:
            done = [v for v in row if v is not None]
            w.add_scalar("continual/avg_acc_seen_tasks", sum(done) / max(len(done), 1), t)
            if mixed is not None:
                w.add_scalar("continual/mixed_stream_acc", mixed, t)
            if task_sel is not None:
                w.add_scalar("continual/task_selection_acc", task_sel, t)
            w.flush()
        if self.verbose:
            shown = " ".join("  -  " if v is None else f"{100 * v:5.1f}" for v in row)
            extra = f", task selection {100 * task_sel:.1f}%" if task_sel is not None else ""
            extra += f", mixed stream {100 * mixed:.1f}%" if mixed is not None else ""
            if wtp is not None and None not in wtp and None not in tii:
                extra += f", WTP {100 * sum(wtp) / len(wtp):.1f}%, TII {100 * sum(tii) / len(tii):.1f}%"
            tqdm.write(f"after task {t + 1}/{self.n_tasks}: acc per task [{shown}]{extra} "
                       f"(elapsed {s.wall_time_s:.1f}s)")
        if finished:
            for w in writers:
                for k in ("final_acc", "forgetting", "learning_acc", "bwt", "wtp", "tii"):
                    if metrics[k] is not None:
                        w.add_scalar(f"final/{k}", metrics[k], self.n_tasks - 1)
                w.flush()

    def drop_earlier_checkpoints(self, t: int) -> list[Path]:
        """Delete the checkpoints of tasks before ``t`` (unless ``keep_task_checkpoints``): called once
        task ``t``'s checkpoint is in place (or the finished run's results, when it writes none), so
        the newest resumable state is never the one deleted. Returns what it deleted."""
        if not self.write or self.keep_task_checkpoints:
            return []
        earlier = [path for n, path in numbered_checkpoints(self.out / CHECKPOINT_DIR, TASK_CHECKPOINT) if n < t]
        for path in earlier:
            path.unlink(missing_ok=True)
        return earlier

    def write_results(self, strategy, finished: bool) -> dict[str, Any]:
        """Write the result files of the rows recorded so far; ``metrics.json`` last, as it is what
        says the run finished: a run killed before it is resumed and writes them all again."""
        s = self.state
        metrics = self.metrics(finished)
        record = getattr(strategy.model, "run_record", None)
        if callable(record):  # a model's own choices, in <method>.json (RanPAC: the ridge strength of every task)
            write_json(self.out / f"{self.info['method']}.json", record())
        write_acc_matrix_csv(self.out / "acc_matrix.csv", s.acc_matrix, self.n_tasks)
        if finished:
            write_final_results(self.out / "final_results.txt", self.config_text, s.acc_matrix, self.n_tasks,
                                self.notes)
        write_json(self.out / "metrics.json", metrics)
        return metrics


def _tensorboard_writers(strategy) -> list:
    from avalanche.logging import TensorboardLogger

    return [lg.writer for lg in getattr(strategy.evaluator, "loggers", []) if isinstance(lg, TensorboardLogger)]


# ------------------------------------------------------------------------- strategy state (resume)
def strategy_state(strategy) -> dict[str, Any]:
    """What the strategy keeps between tasks beyond its model: its own ``state_dict()`` (this
    package's strategies), else Avalanche's clock."""
    own = getattr(strategy, "state_dict", None)
    if callable(own):
        return own()
    return {"clock": {k: int(v) for k, v in vars(strategy.clock).items() if isinstance(v, int)}}

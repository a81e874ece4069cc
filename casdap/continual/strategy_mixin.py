"""What every strategy of this package adds to its Avalanche template: the state a resumed run needs,
the run directory's batch-wide prediction, and data loaders whose workers start once per task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["CasdapStrategyMixin"]


def _clock_state(strategy) -> dict[str, int]:
    return {k: int(v) for k, v in vars(strategy.clock).items() if isinstance(v, int)}


def _workers_for(loader, num_workers: int) -> int:
    """``num_workers`` capped at the loader's number of batches (at least 1): the data loader hands
    batch k to worker k mod n, seeded base seed + its index, so the workers past the last batch get
    no batch and only cost their start. Batches, their order and every random augmentation stay
    exactly as they are with ``num_workers``."""
    try:
        batches = len(loader)
    except TypeError:  # a loader that does not know its length
        return num_workers
    return min(num_workers, max(1, batches))


class CasdapStrategyMixin:
    """What every strategy of this package adds to its Avalanche template: the state a resumed run
    needs (:meth:`state_dict` / :meth:`load_state_dict`) and the batch-wide prediction of the
    run directory's mixed-stream pass (:meth:`predict`).

    The base state is Avalanche's clock and, where an :class:`~casdap.continual.plugins.RngRecorderPlugin`
    precedes a ``ReplayPlugin``, the random states from which the replay buffer is rebuilt update by
    update. A subclass adds its own part by extending :meth:`state_dict` and :meth:`load_own_state`.
    Put the mixin before the Avalanche template in the bases.
    """

    def state_dict(self) -> dict[str, Any]:
        """What the strategy keeps between tasks beyond its model (checkpointed after every task)."""
        from casdap.continual.plugins import RngRecorderPlugin

        state: dict[str, Any] = {"clock": _clock_state(self)}
        rec = self.find_plugin(RngRecorderPlugin)
        if rec is not None:
            state["replay_rng"] = dict(rec.states)
        return state

    def load_state_dict(self, state: dict[str, Any], *, train_stream, task_classes: Sequence, done: int) -> None:
        """Undo :meth:`state_dict` after ``done`` finished tasks, the model already loaded."""
        for k, v in state["clock"].items():
            setattr(self.clock, k, v)
        self.load_own_state(state, task_classes=task_classes, done=done)
        self._rebuild_replay(state, train_stream, done)

    def load_own_state(self, state: dict[str, Any], *, task_classes: Sequence, done: int) -> None:
        """A subclass's own part of :meth:`load_state_dict` (nothing here)."""

    def _rebuild_replay(self, state: dict[str, Any], train_stream, done: int) -> None:
        from avalanche.training.plugins import ReplayPlugin

        from casdap.continual.plugins import RngRecorderPlugin

        replay, rec = self.find_plugin(ReplayPlugin), self.find_plugin(RngRecorderPlugin)
        if replay is None or rec is None:
            return
        # the same buffer updates from the same random states give exactly the same buffer
        rec.states = {int(k): v for k, v in state["replay_rng"].items()}
        for t in range(done):
            torch.set_rng_state(rec.states[t])
            replay.storage_policy.post_adapt(self, train_stream[t])

    def make_train_dataloader(self, num_workers: int = 0, **kwargs) -> None:
        super().make_train_dataloader(num_workers=num_workers, **kwargs)
        capped = _workers_for(self.dataloader, num_workers)
        if capped:  # workers started once per experience, not at every epoch
            super().make_train_dataloader(num_workers=capped, persistent_workers=True, **kwargs)

    def make_eval_dataloader(self, num_workers: int = 0, **kwargs) -> None:
        super().make_eval_dataloader(num_workers=num_workers, **kwargs)
        capped = _workers_for(self.dataloader, num_workers)
        if capped != num_workers:
            super().make_eval_dataloader(num_workers=capped, **kwargs)
        if getattr(self.dataloader, "distributed_sampling", False):
            # under torchrun Avalanche hands each rank its share of the test set, but rank 0 evaluates
            # alone: it must see every test image
            from avalanche.benchmarks.utils.data_loader import SingleDatasetDataLoader

            loader = self.dataloader
            self.dataloader = SingleDatasetDataLoader(loader.datasets[0], loader.batch_sizes[0],
                                                      distributed_sampling=False, **loader.loader_kwargs)

    def find_plugin(self, kind: type):
        """The strategy's first plugin of type ``kind``, or None."""
        return next((p for p in self.plugins if isinstance(p, kind)), None)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for a batch under the strategy's evaluation protocol, and the selected keys where the
        method has keys (else None). Here every image is predicted alone by the model."""
        self.model.eval()
        return self.model(x), None

    @torch.no_grad()
    def task_decomposition(self, logits: torch.Tensor, class_task: torch.Tensor,
                           true_task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image of the evaluation batch (``mb_x``, ``mb_y``) whose predictions are ``logits``: the
        inferred task ``[B]`` and the logits under the true task ``[B, C]`` (the caller keeps only the
        true task's classes of them, for within-task accuracy). ``class_task[c]`` is class c's task
        (-1: not evaluated). Here the task the predicted class implies, and the same logits (a method
        whose prediction does not depend on a task)."""
        pred = logits.argmax(1).to(class_task.device)
        inside = pred < len(class_task)
        return torch.where(inside, class_task[pred.clamp(max=len(class_task) - 1)], -1), logits

"""Supervised training engine: epochs, evaluation, optimizers and schedules, checkpoints, DDP."""

from casdap.engine.train_eval import NonFiniteLossError, evaluate, train_one_epoch

__all__ = ["NonFiniteLossError", "evaluate", "train_one_epoch"]

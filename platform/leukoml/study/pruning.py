"""Pruning a trial from Keras (imported with TensorFlow, by the objective)."""

from __future__ import annotations

from optuna_integration import KerasPruningCallback

from leukoml.training.callbacks import Deadline


class Pruning(KerasPruningCallback):
    """Optuna's Keras pruning callback, except that an epoch the `deadline` cut short is not
    judged: its partial score would prune a trial whose model is otherwise kept."""

    def __init__(self, trial, monitor: str, deadline: Deadline | None = None):
        super().__init__(trial, monitor)
        self.deadline = deadline

    def on_epoch_end(self, epoch, logs=None):
        if self.deadline is None or self.deadline.reached_at_epoch is None:
            super().on_epoch_end(epoch, logs)

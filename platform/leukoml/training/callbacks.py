"""Keras callbacks of a training run: per-epoch MLflow logging, epochs sized to a
deadline, the deadline itself, resumable backup."""

from __future__ import annotations

import logging
import shutil
import time

import keras
import mlflow

from leukoml import names
from leukoml.training.recipe import fit_schedule

log = logging.getLogger(__name__)


class EpochLogger(keras.callbacks.Callback):
    """Logs Keras' epoch metrics plus epoch time and training images/s to MLflow.

    One `log_metrics` call per epoch, never per batch: nothing in the hot path.
    """

    def __init__(self, n_train: int):
        super().__init__()
        self.n_train = n_train

    def on_epoch_begin(self, epoch, logs=None):
        if not hasattr(self, "_start") and epoch > 0:  # BackupAndRestore resumed the run
            mlflow.log_metric(names.RESUMED_AT_EPOCH, names.epoch_number(epoch))
        self._start = time.perf_counter()
        self._train_seconds = None

    def on_test_begin(self, logs=None):  # validation starts: the training part is done
        if getattr(self, "_start", None) is not None and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        train_seconds = self._train_seconds or seconds
        metrics = {k: float(v) for k, v in (logs or {}).items()}  # learning_rate included
        metrics[names.EPOCH_SECONDS] = seconds
        metrics[names.IMAGES_PER_SECOND] = self.n_train / max(train_seconds, 1e-9)
        mlflow.log_metrics(metrics, step=names.epoch_number(epoch))


class EpochBudget(keras.callbacks.Callback):
    """Sizes a fit to the time it has. After each epoch, the epochs that still fit before
    `at` (`time.monotonic()` seconds) at the pace so far, keeping `after_fit` seconds (at
    least one epoch's) for the evaluation and logging that follow, become the plan (at most
    `max_epochs`, at least `min_epochs`); the cosine schedule is fitted to end with it and
    the fit stops there. A plan may grow at the second epoch (the first traces the graph
    and overstates the pace) and until the fit is halfway through it (a machine's load
    changes); after that it only shrinks, so the end of the schedule is not stretched.
    The `Deadline` is a last resort."""

    def __init__(self, at: float, max_epochs: int, min_epochs: int = 1, after_fit: float = 0.0,
                 clock=time.monotonic):
        super().__init__()
        self.at, self.max_epochs, self.min_epochs = at, max_epochs, min(min_epochs, max_epochs)
        self.after_fit, self.clock = after_fit, clock
        self.planned = max_epochs
        self.times: list[float] = []  # seconds per epoch, validation included
        self.fit_ended: float | None = None  # clock time the fit returned

    @property
    def pace(self) -> float | None:
        """Seconds an epoch takes: the median after the first (which traces the graph)."""
        steady = self.times[1:] or self.times
        return float(sorted(steady)[len(steady) // 2]) if steady else None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self.clock()
        self._steps_before = int(self.model.optimizer.iterations.numpy())

    def on_epoch_end(self, epoch, logs=None):
        now = self.clock()
        self.times.append(now - self._start)
        steps = int(self.model.optimizer.iterations.numpy()) - self._steps_before
        keep = max(self.pace, self.after_fit)
        fit = epoch + 1 + int((self.at - now - keep) // self.pace)
        planned = max(self.min_epochs, min(self.max_epochs, fit))
        if len(self.times) > 2 and epoch + 1 > self.planned / 2:
            planned = min(planned, self.planned)
        if planned != self.planned:
            self.planned = planned
            fit_schedule(self.model, planned * steps)
        mlflow.log_metric(names.PLANNED_EPOCHS, planned, step=epoch)
        if epoch + 1 >= planned:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.fit_ended = self.clock()


class Deadline(keras.callbacks.Callback):
    """Stops training at a wall-clock deadline (`time.monotonic()` seconds), mid-epoch if need
    be; early stopping then restores the best weights, so the model so far is kept."""

    def __init__(self, at: float):
        super().__init__()
        self.at = at
        self.reached_at_epoch: int | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() >= self.at and self.reached_at_epoch is None:
            self.reached_at_epoch = self._epoch
            self.model.stop_training = True


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore` keeping the previous epoch's checkpoint too, so a process
    killed while writing one resumes from the other; a backup that cannot be read at all
    is dropped with a warning and the run starts from epoch 1 instead of failing."""

    def __init__(self, backup_dir: str):
        super().__init__(backup_dir, double_checkpoint=True)

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError, RuntimeError) as exc:  # h5py: RuntimeError on a torn file
            log.warning("the backup in %s cannot be read (%s): starting from epoch 1",
                        self.backup_dir, exc)
            shutil.rmtree(self.backup_dir, ignore_errors=True)

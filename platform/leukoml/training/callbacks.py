"""Keras callbacks of a training run: per-epoch MLflow logging, a deadline, resumable backup."""

from __future__ import annotations

import logging
import shutil
import time

import keras
import mlflow

from leukoml import names

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
        except (OSError, ValueError) as exc:
            log.warning("the backup in %s cannot be read (%s): starting from epoch 1",
                        self.backup_dir, exc)
            shutil.rmtree(self.backup_dir, ignore_errors=True)

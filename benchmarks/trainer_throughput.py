"""Trainer speed: images/s of a leukoml trial against a bare `model.fit`.

Same backbone, batch size, image size and images. The trial runs as
`train_and_log` does inside a study (decode cache warm, tf.data pipeline,
streaming macro-F1/balanced accuracy, per-epoch MLflow logging); the
baseline is what a Keras user writes: preprocessed float arrays in memory,
`model.compile(..., metrics=["accuracy"])`, `model.fit(x, y)`. Both measure
the training part of each epoch (validation excluded) and drop the first
epoch (graph tracing). Also reported: the cost of building the decode cache
and the time to a trial's first training step (model build + tracing).

    python benchmarks/trainer_throughput.py --backbones Asghar2022CNN MobileNetV3Small \
        EfficientNetB0 --image-size 64 --epochs 4

Prints a table and writes benchmarks/results/trainer_throughput.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
from _common import machine, print_table, write_result
from _study import scratch_stores

from leukoml import names
from leukoml.backbones.classifier import build_classifier, preprocess_fn
from leukoml.config import TrainConfig
from leukoml.data import prepare_dataset
from leukoml.training import train_and_log


def bare_fit(data, backbone: str, batch_size: int, epochs: int) -> tuple[float, float]:
    """Images/s of plain Keras on in-memory arrays, and the first step's delay."""
    train, val = data.splits["train"], data.splits["val"]
    preprocess = preprocess_fn(backbone)
    x = np.asarray(preprocess(np.asarray(data.images[train], dtype="float32")))
    x_val = np.asarray(preprocess(np.asarray(data.images[val], dtype="float32")))
    y, y_val = data.labels[train], data.labels[val]
    keras.utils.set_random_seed(0)
    keras.backend.clear_session()
    started = time.perf_counter()
    model = build_classifier(backbone, len(data.class_names), data.image_size)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer(len(train), started)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, validation_data=(x_val, y_val),
              callbacks=[timer], verbose=0)
    return statistics.median(timer.rates[1:]), timer.first_step


class EpochTimer(keras.callbacks.Callback):
    """Training images/s per epoch (validation excluded), like leukoml's EpochLogger,
    and the delay from `started` to the end of the first training step."""

    def __init__(self, n_train: int, started: float):
        super().__init__()
        self.n_train, self.started = n_train, started
        self.rates, self.first_step = [], None

    def on_train_batch_end(self, batch, logs=None):
        if self.first_step is None:
            self.first_step = time.perf_counter() - self.started

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._validation = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        self._validation = self._validation or time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = self._validation or time.perf_counter()
        self.rates.append(self.n_train / (end - self._start))


def leukoml_trial(data, backbone: str, batch_size: int, epochs: int, tracking: str):
    """Images/s of `train_and_log` as a study trial runs it, and the first step's delay."""
    mlflow.set_tracking_uri(tracking)
    config = TrainConfig(data=data.source, backbone=backbone, batch_size=batch_size,
                         max_epochs=epochs, patience=epochs, image_size=data.image_size,
                         augment="none")
    started = time.perf_counter()
    timer = EpochTimer(len(data.splits["train"]), started)
    with mlflow.start_run() as run:
        train_and_log(config, data, callbacks=[timer], log_model=False)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, names.IMAGES_PER_SECOND)
    rates = [m.value for m in sorted(history, key=lambda m: m.step)]
    return statistics.median(rates[1:]), timer.first_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic:per_class=400,size=96")
    parser.add_argument("--backbones", nargs="+",
                        default=["Asghar2022CNN", "MobileNetV3Small", "EfficientNetB0"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    cache = Path(tempfile.mkdtemp(prefix="leukoml-bench-cache-"))
    os.environ["LEUKOML_CACHE_DIR"] = str(cache)
    tracking, _ = scratch_stores("throughput")  # runs and artifacts in a temporary folder
    cold = prepare_dataset(args.data, args.image_size)  # renders/decodes: the first-trial cost
    warm = prepare_dataset(args.data, args.image_size)
    rows = []
    for backbone in args.backbones:
        trial_rate, trial_first = leukoml_trial(warm, backbone, args.batch_size, args.epochs,
                                                tracking)
        bare_rate, bare_first = bare_fit(warm, backbone, args.batch_size, args.epochs)
        rows.append({"backbone": backbone, "trial_images_per_s": round(trial_rate, 1),
                     "bare_fit_images_per_s": round(bare_rate, 1),
                     "ratio": round(trial_rate / bare_rate, 3),
                     "trial_first_step_s": round(trial_first, 1),
                     "bare_first_step_s": round(bare_first, 1)})
    result = {
        "machine": machine(), "data": args.data, "image_size": args.image_size,
        "batch_size": args.batch_size, "epochs": args.epochs,
        "n_train": len(warm.splits["train"]), "n_images": len(warm.labels),
        "decode_cache_build_s": round(cold.decoded.seconds, 2),
        "decode_cache_reuse_s": round(warm.decoded.seconds, 3),
        "rows": rows,
    }
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores")
    print(f"decode cache: built in {result['decode_cache_build_s']} s, "
          f"reused in {result['decode_cache_reuse_s']} s ({result['n_images']} images)")
    print_table(rows, [("backbone", "backbone"), ("trial img/s", "trial_images_per_s"),
                       ("bare img/s", "bare_fit_images_per_s"), ("ratio", "ratio"),
                       ("trial 1st step s", "trial_first_step_s"),
                       ("bare 1st step s", "bare_first_step_s")])
    write_result("trainer_throughput", result)
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()

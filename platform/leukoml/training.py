"""Train one model and log everything about it to the active MLflow run.

`train_and_log` is the one function `mlflow run . -e train` and every
Optuna trial call.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import keras
import mlflow
import numpy as np
import pandas as pd
from keras import ops
from mlflow.models import infer_signature

from leukoml import names
from leukoml.backbones import get_backbone
from leukoml.backbones.classifier import build_classifier, preprocess_fn
from leukoml.config import TrainConfig
from leukoml.data import PreparedData
from leukoml.data.tfdata import make_dataset
from leukoml.errors import LeukomlError
from leukoml.evaluate import Evaluation, evaluate_predictions, plot_confusion
from leukoml.explain import log_gradcam
from leukoml.runtime import configure_devices
from leukoml.tracking import log_params

log = logging.getLogger(__name__)

class _SparseConfusion(keras.metrics.Metric):
    """Streams a confusion matrix from integer labels and softmax outputs.

    Sample weights (from class_weight) are ignored: the confusion counts
    images, so validation metrics mean the same with or without weighting.
    """

    def __init__(self, num_classes: int, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.matrix = self.add_variable(
            shape=(num_classes, num_classes), initializer="zeros", name="matrix", dtype="float32"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        n = self.num_classes
        true = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        pred = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        counts = ops.bincount(true * n + pred, minlength=n * n)
        self.matrix.assign_add(ops.cast(ops.reshape(counts[: n * n], (n, n)), "float32"))

    def reset_state(self):
        self.matrix.assign(ops.zeros((self.num_classes, self.num_classes)))

    def get_config(self):
        return {"num_classes": self.num_classes, "name": self.name}


class MacroF1(_SparseConfusion):
    """Unweighted mean of per-class F1, as sklearn's f1_score(average="macro")."""

    def __init__(self, num_classes: int, name: str = names.MACRO_F1, **kwargs):
        super().__init__(num_classes, name, **kwargs)

    def result(self):
        tp = ops.diagonal(self.matrix)
        denominator = ops.sum(self.matrix, axis=0) + ops.sum(self.matrix, axis=1)
        f1 = ops.where(denominator > 0, 2 * tp / ops.maximum(denominator, 1e-9), 0.0)
        return ops.mean(f1)


class BalancedAccuracy(_SparseConfusion):
    """Mean recall over the classes present, as sklearn's balanced_accuracy_score."""

    def __init__(self, num_classes: int, name: str = names.BALANCED_ACCURACY, **kwargs):
        super().__init__(num_classes, name, **kwargs)

    def result(self):
        support = ops.sum(self.matrix, axis=1)
        recall = ops.diagonal(self.matrix) / ops.maximum(support, 1e-9)
        present = ops.cast(support > 0, "float32")
        return ops.sum(recall * present) / ops.maximum(ops.sum(present), 1.0)


class EpochLogger(keras.callbacks.Callback):
    """Logs Keras' epoch metrics plus epoch time and training images/s to MLflow.

    One `log_metrics` call per epoch, never per batch: nothing in the hot path.
    """

    def __init__(self, n_train: int):
        super().__init__()
        self.n_train = n_train

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_seconds = None

    def on_test_begin(self, logs=None):  # validation starts: the training part is done
        if getattr(self, "_start", None) is not None and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        train_seconds = self._train_seconds or seconds
        metrics = {k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}
        metrics[names.EPOCH_SECONDS] = seconds
        metrics[names.IMAGES_PER_SECOND] = self.n_train / max(train_seconds, 1e-9)
        mlflow.log_metrics(metrics, step=epoch)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]
    metrics: dict[str, float]  # summary metrics logged at the end (best_*, test_*)
    evaluation: Evaluation
    test_probabilities: np.ndarray = field(repr=False)

    def objective(self, metric: str) -> float:
        return self.metrics[names.best(metric)]


def dataset_params(data: PreparedData) -> dict[str, object]:
    sizes = data.split_sizes()
    return {
        names.DATASET: str(data.root),
        names.DATASET_FINGERPRINT: data.fingerprint,
        names.CLASS_NAMES: json.dumps(data.class_names),
        names.N_TRAIN: sizes["train"],
        names.N_VAL: sizes["val"],
        names.N_TEST: sizes["test"],
        names.N_SKIPPED: len(data.skipped),
        names.SPLIT_SOURCE: data.split_source,
    }


def _log_data_artifacts(data: PreparedData) -> None:
    mlflow.log_dict(
        {"split_source": data.split_source, "sizes": data.split_sizes(),
         "class_counts": data.class_counts()},
        names.SPLIT_SIZES,
    )
    leakage = data.leakage
    mlflow.log_dict(leakage.to_dict(), names.LEAKAGE_REPORT)
    mlflow.log_text(leakage.summary_text() + "\n", names.LEAKAGE_SUMMARY)
    mlflow.log_metrics({names.COPIES_TRAIN_TEST: leakage.shared_pairs("train", "test"),
                        names.COPIES_TRAIN_VAL: leakage.shared_pairs("train", "val")})
    if leakage.train_shares_images:
        mlflow.set_tag(names.TAG_LEAKAGE, leakage.summary_text().splitlines()[0][:500])
    if data.skipped:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(names.SKIPPED_FILES).name
            pd.DataFrame(data.skipped, columns=["file", "reason"]).to_csv(path, index=False)
            mlflow.log_artifact(str(path), str(Path(names.SKIPPED_FILES).parent))


def _class_weights(config: TrainConfig, data: PreparedData) -> dict[int, float] | None:
    if config.class_weight == "none":
        return None
    counts = np.bincount(data.labels[data.splits["train"]], minlength=len(data.class_names))
    total, k = counts.sum(), len(counts)
    return {c: float(total / (k * n)) for c, n in enumerate(counts) if n}


def log_evaluation(evaluation: Evaluation, title: str) -> None:
    mlflow.log_metrics(evaluation.metrics)
    mlflow.log_dict(evaluation.report, names.CLASSIFICATION_REPORT)
    mlflow.log_text(evaluation.confusion.to_csv(), names.CONFUSION_CSV)
    figure = plot_confusion(evaluation.confusion, title)
    mlflow.log_figure(figure, names.CONFUSION_PNG)
    import matplotlib.pyplot as plt

    plt.close(figure)


def train_and_log(
    config: TrainConfig,
    data: PreparedData,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    log_model: bool = True,
) -> TrainResult:
    """Train `config` on `data` and log params, curves, test metrics and the model.

    Logs to the active MLflow run. `callbacks` run after the epoch logger, so a
    pruning callback that stops the trial leaves the epoch's metrics logged.
    """
    config = config.validated()
    if data.image_size != config.image_size:
        raise LeukomlError(f"data decoded at {data.image_size} px, config asks {config.image_size}")
    entry = get_backbone(config.backbone)
    device = configure_devices(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    keras.backend.clear_session()

    mlflow.set_tag(names.TAG_DEVICE, device)
    log_params({**asdict(config), names.TIER: entry.tier, **dataset_params(data)})
    _log_data_artifacts(data)

    n_classes = len(data.class_names)
    model = build_classifier(
        config.backbone, n_classes, config.image_size, config.weights, freeze_base=config.freeze_base
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy", MacroF1(n_classes), BalancedAccuracy(n_classes)],
    )
    log_params({names.PARAM_COUNT: model.count_params()})

    preprocess = preprocess_fn(config.backbone)
    split = data.splits
    train_ds = make_dataset(data.images, data.labels, split["train"], config.batch_size, preprocess,
                            shuffle=True, augment=config.augment, seed=config.seed)
    val_ds = make_dataset(data.images, data.labels, split["val"], config.batch_size, preprocess)
    stopper = keras.callbacks.EarlyStopping(
        monitor=config.monitor, mode=names.direction(config.monitor), patience=config.patience,
        restore_best_weights=True,
    )
    started = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.max_epochs,
        callbacks=[EpochLogger(len(split["train"])), keras.callbacks.TerminateOnNaN(), stopper,
                   *callbacks],
        class_weight=_class_weights(config, data),
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=1 if sys.stdout.isatty() else 2,
    ).history
    train_seconds = time.perf_counter() - started
    losses = history.get("loss", [])
    if not losses or not all(math.isfinite(v) for v in losses):
        raise TrainingDiverged(
            f"loss became {losses[-1] if losses else 'undefined'} at epoch {len(losses)}; "
            f"try a lower learning_rate than {config.learning_rate}"
        )

    monitored = history[config.monitor]
    best_epoch = int(np.argmin(monitored) if names.direction(config.monitor) == "min" else np.argmax(monitored))
    summary = {names.BEST_EPOCH: best_epoch, names.EPOCHS_RUN: len(losses),
               names.TRAIN_SECONDS: train_seconds}
    summary.update({names.best(k): float(v[best_epoch]) for k, v in history.items()
                    if k.startswith("val_")})
    mlflow.log_metrics(summary)

    test_ds = make_dataset(data.images, data.labels, split["test"], config.batch_size, preprocess)
    probabilities = model.predict(test_ds, verbose=0)
    evaluation = evaluate_predictions(
        data.labels[split["test"]], probabilities.argmax(axis=1), data.class_names
    )
    log_evaluation(evaluation, f"{config.backbone} on {len(split['test'])} test images")
    try:
        log_gradcam(model, data, probabilities, config.backbone)
    except Exception as exc:  # a diagnostic must not cost the trained model
        log.warning("Grad-CAM failed for %s: %s", config.backbone, exc)
        mlflow.log_text(f"{type(exc).__name__}: {exc}\n", f"{names.GRADCAM_DIR}/error.txt")
    if log_model:
        # Re-compile with built-ins only: the logged model then loads anywhere
        # (`mlflow.keras.load_model`) without leukoml's custom metric classes.
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
        model.optimizer.build(model.trainable_variables)  # saved state matches on reload
        sample = next(iter(test_ds))[0][:2].numpy()
        mlflow.keras.log_model(
            model, name=names.MODEL_ARTIFACT,
            signature=infer_signature(sample, model.predict(sample, verbose=0)),
        )
    summary.update(evaluation.metrics)
    log.info(
        "%s: test accuracy %.4f, macro-F1 %.4f after %d epochs (best %d) in %.0f s",
        config.backbone, evaluation.metrics[names.TEST_ACCURACY],
        evaluation.metrics[names.TEST_MACRO_F1], len(losses), best_epoch + 1, train_seconds,
    )
    return TrainResult(model, history, summary, evaluation, probabilities)

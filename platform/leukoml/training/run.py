"""`train_and_log`: one model, one MLflow run, as a short sequence of named steps.

build -> fit -> evaluate (validation and test, each with group-bootstrap
intervals) -> explain (Grad-CAM) -> log the served model with its test
metrics. `mlflow run . -e train` and every Optuna trial call it.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import keras
import mlflow
import numpy as np

from leukoml import names
from leukoml.backbones import Backbone, get_backbone
from leukoml.backbones.classifier import build_classifier
from leukoml.config import TrainConfig
from leukoml.data import PreparedData
from leukoml.data.tfdata import make_dataset
from leukoml.data.tracking import log_data
from leukoml.errors import LeukomlError
from leukoml.evaluation import (
    Evaluation,
    calibration_metrics,
    evaluate_predictions,
    plot_confusion,
)
from leukoml.evaluation.calibration import fit_temperature, reliability_figure, with_temperature
from leukoml.explain import log_gradcam
from leukoml.runtime import configure_devices
from leukoml.serving import Member, ServingConfig, log_serving_model
from leukoml.serving.runtime import served_probabilities
from leukoml.tracking import log_params
from leukoml.training import recipe
from leukoml.training.callbacks import EpochLogger, ResumableBackup
from leukoml.training.keras_metrics import BalancedAccuracy, MacroF1

log = logging.getLogger(__name__)

# A selected model whose validation accuracy beats its test accuracy by more than
# this, beyond the validation interval, was probably selected on leaked images.
GAP_WARNING = 0.05
_CHUNK = 256  # images per prediction call


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]
    metrics: dict[str, float]  # summary metrics logged at the end (best_*, test_*)
    evaluation: Evaluation  # on the test split
    validation: Evaluation  # of the selected weights, on the validation split
    test_probabilities: np.ndarray = field(repr=False)
    model_uri: str | None = None

    def objective(self, metric: str) -> float:
        return self.metrics[names.best(metric)]


def _check(config: TrainConfig, data: PreparedData) -> None:
    wanted = config.data_spec().validated()
    if data.spec != wanted:
        raise LeukomlError(f"the data was prepared as {data.spec}, the config asks {wanted}")


def _compiled(entry: Backbone, config: TrainConfig, n_classes: int,
              steps_per_epoch: int) -> keras.Model:
    model = build_classifier(entry, n_classes, config.image_size, config.weights,
                             freeze_base=config.freeze_base)
    model.compile(
        optimizer=recipe.optimizer(config, steps_per_epoch),
        loss=recipe.loss(config),
        metrics=["accuracy", MacroF1(n_classes), BalancedAccuracy(n_classes)],
    )
    return model


def _class_weights(config: TrainConfig, data: PreparedData) -> dict[int, float] | None:
    if config.class_weight == "none":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    train = data.labels[data.splits["train"]]
    present = np.unique(train)
    weights = compute_class_weight("balanced", classes=present, y=train)
    return {int(c): float(w) for c, w in zip(present, weights)}


def _fit(model: keras.Model, config: TrainConfig, data: PreparedData,
         callbacks: Sequence[keras.callbacks.Callback], backup_dir) -> tuple[dict, float]:
    split, k = data.splits, len(data.class_names)
    train = make_dataset(data.images, data.labels, split["train"], config.batch_size,
                         shuffle=True, augment=config.augment, seed=config.seed, one_hot=k)
    val = make_dataset(data.images, data.labels, split["val"], config.batch_size, one_hot=k)
    stopper = keras.callbacks.EarlyStopping(
        monitor=config.monitor, mode=names.direction(config.monitor), patience=config.patience,
        restore_best_weights=True,
    )
    if backup_dir is not None:  # resumes from the last finished epoch after a kill
        callbacks = [ResumableBackup(str(backup_dir)), *callbacks]
    started = time.perf_counter()
    history = model.fit(
        train, validation_data=val, epochs=config.max_epochs,
        callbacks=[EpochLogger(len(split["train"])), keras.callbacks.TerminateOnNaN(), stopper,
                   *recipe.schedule_callbacks(config), *callbacks],
        class_weight=_class_weights(config, data),
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=1 if sys.stdout.isatty() else 2,
    ).history
    losses = history.get("loss", [])
    if not losses or not all(math.isfinite(v) for v in losses):
        raise TrainingDiverged(
            f"loss became {losses[-1] if losses else 'undefined'} at epoch {len(losses)}; "
            f"try a lower learning_rate than {config.peak_learning_rate():g}"
        )
    return history, time.perf_counter() - started


def _summary(history: dict, config: TrainConfig, seconds: float) -> dict[str, float]:
    monitored = history[config.monitor]
    pick = np.argmin if names.direction(config.monitor) == "min" else np.argmax
    best = int(pick(monitored))  # an index into the history
    summary = {names.BEST_EPOCH: names.epoch_number(best), names.EPOCHS_RUN: len(history["loss"]),
               names.TRAIN_SECONDS: seconds}
    summary.update({names.best(k): float(v[best]) for k, v in history.items()
                    if k.startswith("val_")})
    return summary


def _predict(model: keras.Model, data: PreparedData, split: str, tta: str) -> np.ndarray:
    """Softmax outputs on a split, averaged over the `tta` views (uncalibrated)."""
    import tensorflow as tf

    size = data.image_size
    forward = tf.function(lambda x: model(x, training=False), input_signature=[
        tf.TensorSpec((None, size, size, 3), tf.float32)])
    idx = data.splits[split]
    chunks = [served_probabilities(forward, data.images[idx[i:i + _CHUNK]], tta)
              for i in range(0, len(idx), _CHUNK)]
    return np.concatenate(chunks) if chunks else np.zeros((0, len(data.class_names)))


def _evaluate(probabilities: np.ndarray, data: PreparedData, split: str,
              prefix: str, seed: int) -> Evaluation:
    idx = data.splits[split]
    return evaluate_predictions(data.labels[idx], probabilities.argmax(axis=1), data.class_names,
                                groups=data.group_ids()[idx], prefix=prefix, seed=seed)


@dataclass
class _Scores:
    validation: Evaluation  # served (TTA) predictions of the kept weights
    test: Evaluation
    test_probabilities: np.ndarray  # calibrated, as served
    temperature: float
    extra: dict[str, float]  # test scores without TTA, calibration before and after
    reliability: object  # the reliability figure


def _score(model: keras.Model, config: TrainConfig, data: PreparedData) -> _Scores:
    """Validation and test as the served model will answer: TTA views, then a temperature
    fitted on validation; the plain (no TTA) test score and calibration before/after beside."""
    val_labels, test_labels = data.labels[data.splits["val"]], data.labels[data.splits["test"]]
    val = _predict(model, data, "val", config.tta)
    test_raw = _predict(model, data, "test", config.tta)
    temperature = fit_temperature(val, val_labels) if config.calibrate and len(val) else 1.0
    test = with_temperature(test_raw, temperature)
    extra = {}
    if config.tta != "none":
        plain = _evaluate(_predict(model, data, "test", "none"), data, "test", "test",
                          config.seed)
        extra.update({names.without_tta(k): plain.metrics[k] for k in names.TEST_SUMMARY})
    extra.update(calibration_metrics(test, test_labels, data.class_names,
                                     data.group_ids()[data.splits["test"]], seed=config.seed,
                                     uncalibrated=test_raw))
    extra[names.TEMPERATURE] = temperature
    return _Scores(
        validation=_evaluate(val, data, "val", names.best("val"), config.seed),
        test=_evaluate(test, data, "test", "test", config.seed),
        test_probabilities=test, temperature=temperature, extra=extra,
        reliability=reliability_figure(test_raw, test, test_labels, temperature))


def _gap(validation: Evaluation, test: Evaluation) -> dict[str, float]:
    """Selected validation minus test, per summary metric: large = validation leaked."""
    return {names.val_test_gap(kind): validation.value(kind) - test.value(kind)
            for kind in ("accuracy", "macro_f1")}


def _log_evaluation(evaluation: Evaluation, title: str) -> None:
    mlflow.log_dict(evaluation.report, names.CLASSIFICATION_REPORT)
    mlflow.log_text(evaluation.confusion.to_csv(), names.CONFUSION_CSV)
    figure = plot_confusion(evaluation.confusion, title)
    mlflow.log_figure(figure, names.CONFUSION_PNG)


def _log_predictions(data: PreparedData, probabilities: np.ndarray) -> None:
    """One row per test image (file, true, predicted, probability, correct) as a table
    the MLflow UI can filter and sort."""
    import pandas as pd

    idx = data.splits["test"]
    predicted = probabilities.argmax(axis=1)
    true = data.labels[idx]
    mlflow.log_table(pd.DataFrame({
        "file": [data.files[i] for i in idx],
        "true": [data.class_names[t] for t in true],
        "predicted": [data.class_names[p] for p in predicted],
        "probability": probabilities.max(axis=1) if len(idx) else [],
        "correct": true == predicted,
    }), names.PREDICTIONS_TABLE)


def _explain(model: keras.Model, data: PreparedData, probabilities: np.ndarray,
             served: ServingConfig) -> None:
    try:
        log_gradcam(model, data, probabilities, served_as=served.describe())
    except Exception as exc:  # a diagnostic must not cost the trained model
        log.warning("Grad-CAM failed: %s", exc)
        mlflow.log_text(f"{type(exc).__name__}: {exc}\n", f"{names.GRADCAM_DIR}/error.txt")


def train_and_log(
    config: TrainConfig,
    data: PreparedData,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    log_model: bool = True,
    backup_dir=None,
) -> TrainResult:
    """Train `config` on `data` and log params, curves, scores and the served model.

    Logs to the active MLflow run. `callbacks` run after the epoch logger, so a
    pruning callback that stops the trial leaves the epoch's metrics logged.
    With `backup_dir`, Keras backs the run up every epoch there and a rerun
    after a kill resumes from the last finished epoch.
    """
    config = config.validated()
    _check(config, data)
    entry = get_backbone(config.backbone)
    device = configure_devices(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    keras.backend.clear_session()
    mlflow.set_tag(names.TAG_DEVICE, device)
    log_params({**asdict(config), names.TIER: entry.tier})
    log_data(data)

    steps = -(-len(data.splits["train"]) // config.batch_size)
    model = _compiled(entry, config, len(data.class_names), steps)
    log_params({names.PARAM_COUNT: model.count_params(),
                names.PEAK_LEARNING_RATE: config.peak_learning_rate()})
    history, seconds = _fit(model, config, data, callbacks, backup_dir)
    summary = _summary(history, config, seconds)

    scored = _score(model, config, data)
    summary.update({**scored.validation.metrics, **scored.test.metrics, **scored.extra,
                    **_gap(scored.validation, scored.test)})
    mlflow.log_metrics(summary)
    _log_evaluation(scored.test, f"{config.backbone} on {len(data.splits['test'])} test images")
    mlflow.log_figure(scored.reliability, names.RELIABILITY_PNG)
    _log_predictions(data, scored.test_probabilities)
    gap = summary[names.val_test_gap("accuracy")]
    validation, test = scored.validation, scored.test
    if gap > GAP_WARNING and not validation.interval("accuracy").contains(test.value("accuracy")):
        mlflow.set_tag(names.TAG_GAP_WARNING, f"validation accuracy exceeds test by {gap:.3f}, "
                       "outside its 95% interval: validation probably shares cells with train")
    member = Member(config.backbone, config.image_size, crop=config.crop, tta=config.tta,
                    temperature=scored.temperature)
    served = ServingConfig(list(data.class_names), (member,),
                           test_scores={k: test.metrics[k] for k in names.TEST_SUMMARY})
    _explain(model, data, scored.test_probabilities, served)

    model_uri = None
    if log_model:
        info = log_serving_model([model], served)
        mlflow.log_metrics({**test.metrics, **scored.extra}, model_id=info.model_id)
        model_uri = info.model_uri
    log.info(
        "%s: test accuracy %.4f %s, macro-F1 %.4f after %d epochs (best %d) in %.0f s",
        config.backbone, test.value("accuracy"), test.interval("accuracy"),
        test.value("macro_f1"), len(history["loss"]), summary[names.BEST_EPOCH], seconds,
    )
    return TrainResult(model, history, summary, test, validation, scored.test_probabilities,
                       model_uri)

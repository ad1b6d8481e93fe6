"""Training pieces: the streaming metrics, class weights, and a diverging run stopped clearly."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from leukoml.training import BalancedAccuracy, MacroF1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_metrics_equal_sklearn_over_several_batches(seed):
    rng = np.random.default_rng(seed)
    n_classes = 5
    y_true = rng.integers(0, n_classes - 1, 300)  # the last class never occurs
    logits = rng.normal(size=(300, n_classes))
    logits[np.arange(300), y_true] += rng.uniform(0, 2, 300)  # better than chance, not perfect
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_pred = probabilities.argmax(axis=1)
    f1, balanced = MacroF1(n_classes), BalancedAccuracy(n_classes)
    for start in range(0, 300, 64):  # streamed in batches, as during fit
        batch = slice(start, start + 64)
        f1.update_state(y_true[batch], probabilities[batch])
        balanced.update_state(y_true[batch], probabilities[batch])
    expected_f1 = f1_score(y_true, y_pred, labels=range(n_classes), average="macro",
                           zero_division=0)
    assert float(f1.result()) == pytest.approx(expected_f1, abs=1e-6)
    assert float(balanced.result()) == pytest.approx(balanced_accuracy_score(y_true, y_pred),
                                                     abs=1e-6)
    f1.reset_state()
    assert float(f1.result()) == 0.0


def test_balanced_class_weights_are_inverse_to_the_class_frequency(make_dataset_folder):
    from leukoml.config import TrainConfig
    from leukoml.data import prepare_dataset
    from leukoml.training.run import _class_weights

    root = make_dataset_folder({"common": 60, "rare": 20})
    config = TrainConfig(data=str(root), image_size=32, group_by="none", crop="none",
                         class_weight="balanced")
    data = prepare_dataset(config.data_spec())
    counts = np.bincount(data.labels[data.splits["train"]])
    weights = _class_weights(config, data)
    assert weights[0] * counts[0] == pytest.approx(weights[1] * counts[1])  # equal totals
    assert weights[1] > 1 > weights[0]
    assert _class_weights(TrainConfig(data=str(root), class_weight="none"), data) is None


def test_a_loss_that_becomes_nan_stops_training_with_a_clear_error(tracking_uri,
                                                                   make_dataset_folder):
    """A callback poisons the weights after the first batch, as a learning rate far too
    high does: TerminateOnNaN stops the fit and train_and_log says what happened."""
    import keras
    import mlflow

    from leukoml.config import TrainConfig
    from leukoml.data import prepare_dataset
    from leukoml.training.run import TrainingDiverged, train_and_log

    class Poison(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            bias = self.model.trainable_weights[-1]  # of the softmax head: NaN logits
            bias.assign(bias * float("nan"))

    root = make_dataset_folder({"a": 20, "b": 20})
    config = TrainConfig(data=str(root), backbone="Asghar2022CNN", image_size=32, max_epochs=3,
                         group_by="none", crop="none", augment="none", tta="none",
                         learning_rate="0.001")
    data = prepare_dataset(config.data_spec())
    with mlflow.start_run(), pytest.raises(TrainingDiverged, match="try a lower learning_rate"):
        train_and_log(config, data, callbacks=[Poison()])


def test_epochs_are_numbered_as_keras_prints_them_in_steps_and_best_epoch(tracking_uri):
    """One numbering: the metric step of an epoch, `best_epoch` and the console all count
    from 1, as Keras prints "Epoch 1/40". Before: `best_epoch` was logged 0-based (4.0) while
    the console said `best 5`, and the UI's step axis started at 0."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from leukoml import names
    from leukoml.config import TrainConfig
    from leukoml.training.callbacks import EpochLogger
    from leukoml.training.run import _summary

    val_loss = [0.9, 0.4, 0.6]
    logger = EpochLogger(n_train=10)
    with mlflow.start_run() as run:
        for epoch, value in enumerate(val_loss):  # Keras passes 0-based epoch indices
            logger.on_epoch_begin(epoch)
            logger.on_epoch_end(epoch, {"loss": 1.0, "val_loss": value})
    history = MlflowClient().get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    summary = _summary({"loss": [1.0] * 3, "val_loss": val_loss},
                       TrainConfig(monitor="val_loss"), seconds=1.0)
    best_step = min(history, key=lambda m: m.value).step
    assert summary[names.BEST_EPOCH] == best_step == 2
    assert summary[names.best("val_loss")] == 0.4

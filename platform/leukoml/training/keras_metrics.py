"""Streaming macro-F1 and balanced accuracy for Keras, so validation can select on them."""

from __future__ import annotations

import keras
from keras import ops

from leukoml import names


class _SparseConfusion(keras.metrics.Metric):
    """Streams a confusion matrix from integer (or one-hot) labels and softmax outputs.

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
        if len(y_true.shape) == 2 and y_true.shape[-1] == n:  # one-hot (label smoothing)
            y_true = ops.argmax(y_true, axis=-1)
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

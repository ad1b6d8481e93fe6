"""Training pieces that can be checked without MLflow: the streaming metrics."""

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

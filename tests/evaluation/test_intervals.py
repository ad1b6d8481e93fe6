"""Group-bootstrap intervals: copies of one cell are one piece of evidence, not many."""

from __future__ import annotations

import numpy as np
import pytest

from leukoml.evaluation.calibration import expected_calibration_error
from leukoml.evaluation.intervals import ece_interval, group_bootstrap, paired_difference

CELLS, COPIES = 200, 10


def _cells(seed: int = 0):
    """200 cells: labels, a model's probabilities that are right ~80% of the time."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, CELLS)
    logits = rng.normal(0, 1, (CELLS, 4))
    logits[np.arange(CELLS), labels] += 2.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


def _copies(array: np.ndarray) -> np.ndarray:
    return np.repeat(array, COPIES, axis=0)


def test_copies_grouped_by_cell_give_the_interval_of_the_cells_themselves():
    labels, probabilities = _cells()
    cells = np.arange(CELLS)
    once = group_bootstrap(labels, probabilities.argmax(1), cells, 4)
    copied = group_bootstrap(_copies(labels), _copies(probabilities).argmax(1), _copies(cells), 4)
    assert once["accuracy"] == copied["accuracy"]
    ungrouped = group_bootstrap(_copies(labels), _copies(probabilities).argmax(1),
                                np.arange(CELLS * COPIES), 4)
    width = once["accuracy"].high - once["accuracy"].low
    assert ungrouped["accuracy"].high - ungrouped["accuracy"].low < width / 2  # overconfident


def test_the_ece_interval_holds_the_estimate_and_resamples_cells_not_copies():
    labels, probabilities = _cells()
    cells = np.arange(CELLS)
    point = expected_calibration_error(probabilities, labels)
    once = ece_interval(probabilities, labels, cells)
    assert once.contains(point) and once.high - once.low > 0.02
    copied = ece_interval(_copies(probabilities), _copies(labels), _copies(cells))
    assert (copied.low, copied.high) == pytest.approx((once.low, once.high), abs=1e-12)
    ungrouped = ece_interval(_copies(probabilities), _copies(labels), np.arange(CELLS * COPIES))
    assert ungrouped.high - ungrouped.low < (once.high - once.low) / 2


def test_a_paired_difference_separates_a_better_model_and_not_the_same_one():
    labels, probabilities = _cells()
    predicted, cells = probabilities.argmax(1), np.arange(CELLS)
    same = paired_difference(labels, predicted, predicted, cells, 4, metric="accuracy")
    assert same.value == 0.0 and not same.distinguishable
    better = paired_difference(labels, labels, predicted, cells, 4, metric="accuracy")
    assert better.value > 0.1 and better.distinguishable and better.interval.low > 0

"""Temperature scaling and calibration scores on synthetic probabilities with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from leukoml.evaluation.calibration import (
    calibration_scores,
    expected_calibration_error,
    fit_temperature,
    reliability_figure,
    with_temperature,
)

# A worked example: 4 images 90% sure (3 right) and 6 images 55% sure (5 right).
WORKED = np.array([[0.90, 0.05, 0.05]] * 4 + [[0.55, 0.25, 0.20]] * 6)
WORKED_LABELS = np.array([0, 0, 0, 1] + [0, 0, 0, 0, 0, 2])
# 15 bins put the groups apart: (4 * |3/4 - 0.90| + 6 * |5/6 - 0.55|) / 10 = (0.6 + 1.7) / 10
WORKED_ECE_15 = 0.23
# 2 bins ([0, 0.5), [0.5, 1]) put them together: |8/10 - (4 * 0.90 + 6 * 0.55) / 10| = |0.8 - 0.69|
WORKED_ECE_2 = 0.11


def test_ece_on_a_worked_example_follows_its_bins():
    assert expected_calibration_error(WORKED, WORKED_LABELS) == pytest.approx(WORKED_ECE_15)
    assert expected_calibration_error(WORKED, WORKED_LABELS, bins=2) == pytest.approx(WORKED_ECE_2)


@pytest.mark.parametrize(("bins", "ece", "points"), [(15, WORKED_ECE_15, 2), (2, WORKED_ECE_2, 1)])
def test_the_reliability_figure_draws_and_scores_the_bins_it_is_given(bins, ece, points):
    figure = reliability_figure(WORKED, None, WORKED_LABELS, 1.0, bins=bins)
    (ax,) = figure.axes
    (label,) = [t.get_text() for t in ax.get_legend().get_texts() if "ECE" in t.get_text()]
    assert label.endswith(f"ECE {ece:.3f}")
    curve = ax.lines[1]  # lines[0] is the diagonal
    assert len(curve.get_xdata()) == points


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sample(true_probabilities: np.ndarray, rng) -> np.ndarray:
    """Labels drawn from the probabilities: the probabilities are then calibrated."""
    cumulative = true_probabilities.cumsum(axis=1)
    return (rng.random((len(cumulative), 1)) > cumulative).sum(axis=1)


@pytest.mark.parametrize("true_temperature", [0.5, 2.0])
def test_the_fitted_temperature_recovers_the_one_the_labels_came_from(true_temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20000, 4))
    labels = _sample(_softmax(logits / true_temperature), rng)
    reported = _softmax(logits)  # the model's probabilities: wrong by that temperature
    fitted = fit_temperature(reported, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.1)
    before = expected_calibration_error(reported, labels)
    after = expected_calibration_error(with_temperature(reported, fitted), labels)
    assert after < 0.02 < before


def test_calibrated_probabilities_have_a_small_ece_and_sharpened_ones_a_large_one():
    rng = np.random.default_rng(1)
    probabilities = _softmax(rng.normal(0, 2, (20000, 4)))
    labels = _sample(probabilities, rng)
    assert expected_calibration_error(probabilities, labels) < 0.02
    sharpened = with_temperature(probabilities, 0.3)
    assert (sharpened.argmax(1) == probabilities.argmax(1)).all()  # same ranking
    assert expected_calibration_error(sharpened, labels) > 0.1


def test_scores_name_every_class_and_rank_a_perfect_model_first():
    labels = np.array([0, 1, 2, 3] * 10)
    perfect = np.eye(4)[labels] * 0.96 + 0.01
    scores = calibration_scores(perfect, labels, ["a", "b", "c", "d"])
    assert {f"roc_auc_{k}" for k in range(4)} <= set(scores)
    assert scores["roc_auc_macro"] == 1.0
    assert scores["nll"] == pytest.approx(-np.log(0.97), rel=1e-6)
    assert scores["ece"] == pytest.approx(0.03, abs=1e-9)  # always right, 0.97 sure


def test_calibration_metrics_name_before_and_after_with_intervals():
    from leukoml.evaluation import calibration_metrics

    # "after": every image 80% sure, 8 of 10 right, so a perfect ECE of 0
    calibrated = np.array([[0.8, 0.1, 0.1]] * 10)
    labels = WORKED_LABELS
    metrics = calibration_metrics(calibrated, labels, ["eos", "lym", "mono"],
                                  groups=np.arange(10) // 2, uncalibrated=WORKED)
    for prefix, ece in (("test", 0.0), ("test_uncalibrated", WORKED_ECE_15)):
        assert metrics[f"{prefix}_ece"] == pytest.approx(ece, abs=1e-12)
        assert metrics[f"{prefix}_ece_ci_low"] <= metrics[f"{prefix}_ece_ci_high"]
        assert {f"{prefix}_roc_auc_{c}" for c in ("eos", "lym", "mono")} <= set(metrics)
    assert not any(k.startswith("test_uncalibrated") for k in calibration_metrics(
        calibrated, labels, ["eos", "lym", "mono"]))

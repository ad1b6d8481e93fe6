"""Calibration: one temperature fitted on validation, and how well probabilities mean what
they say (NLL, Brier score, expected calibration error, one-vs-rest ROC-AUC, a reliability
diagram). scikit-learn computes the scores; SciPy fits the temperature."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

ECE_BINS = 15
_EPS = 1e-12


def with_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax(log p / T): the same ranking, sharper (T < 1) or softer (T > 1)."""
    logits = np.log(np.clip(probabilities, _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the NLL of `labels` (Guo et al. 2017), in [0.05, 20]."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels)
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-np.log(with_temperature(probabilities, np.exp(log_t))[rows, labels]
                             + _EPS).mean())

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def confidence_bins(probabilities: np.ndarray, labels: np.ndarray,
                    bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top-class confidence, whether it is right, its equal-width bin) per row: what the
    calibration error, its interval and the reliability diagram all count."""
    probabilities = np.asarray(probabilities)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    return confidence, correct, np.minimum((confidence * bins).astype(int), bins - 1)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by count."""
    confidence, correct, which = confidence_bins(probabilities, labels, bins)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / max(len(labels), 1))


def calibration_scores(probabilities: np.ndarray, labels: np.ndarray,
                       class_names: list[str]) -> dict[str, float]:
    """nll, brier, ece, roc_auc_macro and roc_auc_<k> (k = class index, one-vs-rest)."""
    labels = np.asarray(labels)
    k = len(class_names)
    onehot = np.eye(k)[labels]
    scores = {
        "nll": float(log_loss(labels, np.clip(probabilities, _EPS, 1.0), labels=list(range(k)))),
        "brier": float(((probabilities - onehot) ** 2).sum(axis=1).mean()),
        "ece": expected_calibration_error(probabilities, labels),
    }
    aucs = {}
    for c in range(k):
        positives = onehot[:, c]
        if 0 < positives.sum() < len(labels):
            aucs[c] = float(roc_auc_score(positives, probabilities[:, c]))
    scores.update({f"roc_auc_{c}": v for c, v in aucs.items()})
    if aucs:
        scores["roc_auc_macro"] = float(np.mean(list(aucs.values())))
    return scores


def reliability_figure(before: np.ndarray, after: np.ndarray | None, labels: np.ndarray,
                       temperature: float, bins: int = ECE_BINS,
                       title: str = "reliability on the test split"):
    """Accuracy against confidence per bin, before and after temperature scaling (or, with
    `after` None, of the served probabilities `before` alone); the legend's ECE is over
    the same `bins`."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 5), layout="constrained")
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    labels = np.asarray(labels)
    edges = np.linspace(0, 1, bins + 1)
    curves = ((before, "uncalibrated"), (after, f"temperature {temperature:.2f}")) \
        if after is not None else ((before, f"served (temperature {temperature:.2f})"),)
    for probabilities, name in curves:
        confidence, correct, which = confidence_bins(probabilities, labels, bins)
        used = [b for b in range(bins) if (which == b).any()]
        ax.plot([confidence[which == b].mean() for b in used],
                [correct[which == b].mean() for b in used], marker="o",
                label=f"{name}: ECE {expected_calibration_error(probabilities, labels, bins):.3f}")
    ax.set_xticks(edges[::max(1, bins // 5)])
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return figure

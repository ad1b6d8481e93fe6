"""95% intervals that resample groups (source cells), not images.

Augmented copies of one cell are not independent evidence: resampling images
would give intervals far too narrow on sets built from a few hundred cells.
Each bootstrap replicate draws groups with replacement and recomputes the
metrics from the summed confusion counts (or, for the calibration error, the
summed per-bin counts), vectorised over replicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leukoml.evaluation.calibration import ECE_BINS, confidence_bins

REPLICATES = 1000
LEVEL = 0.95
_CHUNK = 200  # replicates per matrix product: bounds memory on large test sets


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def overlaps(self, other: "Interval") -> bool:
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"[{self.low:.3f}, {self.high:.3f}]"


def _group_index(groups) -> np.ndarray:
    """0..G-1 per row, one per distinct group."""
    return np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)


def _per_group_confusion(y_true, y_pred, groups, n_classes) -> np.ndarray:
    """(G, K*K) confusion counts per group."""
    group = _group_index(groups)
    cells = (group * n_classes + np.asarray(y_true)) * n_classes + np.asarray(y_pred)
    return np.bincount(cells, minlength=(group.max() + 1) * n_classes * n_classes).reshape(
        group.max() + 1, n_classes * n_classes)


def _draws(n_groups: int, replicates: int, seed: int):
    rng = np.random.default_rng(seed)
    for start in range(0, replicates, _CHUNK):
        size = min(_CHUNK, replicates - start)
        yield rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=size)


def confusion_metrics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro-F1 and per-class F1 of (..., K, K) counts.

    Means run over the classes present (true or predicted), as scikit-learn's do
    when every class occurs.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    diagonal = np.diagonal(confusion, axis1=-2, axis2=-1)
    support, predicted = confusion.sum(axis=-1), confusion.sum(axis=-2)
    total = np.maximum(support.sum(axis=-1), 1e-12)
    recall = diagonal / np.maximum(support, 1e-12)
    f1 = 2 * diagonal / np.maximum(support + predicted, 1e-12)
    present, seen = support > 0, (support + predicted) > 0
    return {
        "accuracy": diagonal.sum(axis=-1) / total,
        "balanced_accuracy": (recall * present).sum(axis=-1) / np.maximum(present.sum(-1), 1),
        "macro_f1": (f1 * seen).sum(axis=-1) / np.maximum(seen.sum(-1), 1),
        "f1": f1,
    }


def _interval(values: np.ndarray, level: float) -> Interval:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high))


def ece_interval(probabilities, labels, groups, bins: int = ECE_BINS,
                 replicates: int = REPLICATES, seed: int = 0, level: float = LEVEL) -> Interval:
    """Interval of the expected calibration error, resampling groups.

    ECE = sum over confidence bins of |correct - confidence| summed in the bin, over N; per
    group and bin those sums (and the count) add up, so a replicate is one matrix product.
    """
    confidence, correct, which = confidence_bins(probabilities, labels, bins)
    group = _group_index(groups)
    cell, size = group * bins + which, (group.max() + 1) * bins
    per_group = np.stack([np.bincount(cell, weights=w, minlength=size) for w in (
        np.ones(len(cell)), correct.astype(np.float64), confidence.astype(np.float64))], axis=-1)
    per_group = per_group.reshape(group.max() + 1, bins * 3)
    values = []
    for counts in _draws(len(per_group), replicates, seed):
        sums = (counts @ per_group).reshape(-1, bins, 3)
        values.append(np.abs(sums[..., 1] - sums[..., 2]).sum(axis=-1)
                      / np.maximum(sums[..., 0].sum(axis=-1), 1e-12))
    return _interval(np.concatenate(values), level)


def group_bootstrap(y_true, y_pred, groups, n_classes: int, replicates: int = REPLICATES,
                    seed: int = 0, level: float = LEVEL) -> dict[str, Interval]:
    """Intervals of accuracy, balanced_accuracy, macro_f1 and f1_<k> (class index k)."""
    per_group = _per_group_confusion(y_true, y_pred, groups, n_classes)
    values: dict[str, list[np.ndarray]] = {}
    for counts in _draws(len(per_group), replicates, seed):
        confusion = (counts @ per_group).reshape(-1, n_classes, n_classes)
        for key, value in confusion_metrics(confusion).items():
            if key == "f1":
                for k in range(n_classes):
                    values.setdefault(f"f1_{k}", []).append(value[:, k])
            else:
                values.setdefault(key, []).append(value)
    return {key: _interval(np.concatenate(parts), level) for key, parts in values.items()}


@dataclass(frozen=True)
class Difference:
    """A paired comparison of two models on the same images: `a - b`."""

    metric: str
    a: float
    b: float
    interval: Interval  # of a - b, groups resampled jointly

    @property
    def value(self) -> float:
        return self.a - self.b

    @property
    def distinguishable(self) -> bool:
        """Whether the interval of the difference excludes zero."""
        return not self.interval.contains(0.0)


def paired_difference(y_true, pred_a, pred_b, groups, n_classes: int, metric: str = "macro_f1",
                      replicates: int = REPLICATES, seed: int = 0,
                      level: float = LEVEL) -> Difference:
    """Paired group bootstrap of `metric(a) - metric(b)`: one draw of groups scores both."""
    a = _per_group_confusion(y_true, pred_a, groups, n_classes)
    b = _per_group_confusion(y_true, pred_b, groups, n_classes)
    diffs = []
    for counts in _draws(len(a), replicates, seed):
        shape = (-1, n_classes, n_classes)
        diffs.append(confusion_metrics((counts @ a).reshape(shape))[metric]
                     - confusion_metrics((counts @ b).reshape(shape))[metric])
    full = np.ones(len(a), dtype=np.int64)
    point_a = float(confusion_metrics((full @ a).reshape(n_classes, n_classes))[metric])
    point_b = float(confusion_metrics((full @ b).reshape(n_classes, n_classes))[metric])
    return Difference(metric, point_a, point_b, _interval(np.concatenate(diffs), level))

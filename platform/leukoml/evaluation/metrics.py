"""Scores of one model's predictions on one split, each with a group-bootstrap interval."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from leukoml import names
from leukoml.evaluation.calibration import calibration_scores
from leukoml.evaluation.intervals import Interval, ece_interval, group_bootstrap

SUMMARY = ("accuracy", "balanced_accuracy", "macro_f1")


@dataclass
class Evaluation:
    metrics: dict[str, float]  # <prefix>_accuracy, ..._ci_low/_ci_high, <prefix>_f1_<class>, ...
    confusion: pd.DataFrame  # counts; rows = true class, columns = predicted class
    report: dict  # sklearn's classification_report, as a dict
    intervals: dict[str, Interval] = field(default_factory=dict)  # metric name -> 95% interval
    prefix: str = "test"

    def value(self, kind: str) -> float:
        """`kind` is "accuracy", "balanced_accuracy" or "macro_f1"."""
        return self.metrics[f"{self.prefix}_{kind}"]

    def interval(self, kind: str) -> Interval:
        return self.intervals[f"{self.prefix}_{kind}"]


def evaluate_predictions(y_true, y_pred, class_names: list[str], groups=None,
                         prefix: str = "test", seed: int = 0) -> Evaluation:
    """Scores of `y_pred` against `y_true`; intervals resample `groups` (default: images)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    labels = list(range(len(class_names)))
    metrics = {
        f"{prefix}_accuracy": accuracy_score(y_true, y_pred),
        f"{prefix}_balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
        f"{prefix}_macro_f1": f1_score(y_true, y_pred, labels=labels, average="macro",
                                       zero_division=0),
    }
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    for i, name in enumerate(class_names):
        metrics[names.per_class(prefix, "precision", name)] = precision[i]
        metrics[names.per_class(prefix, "recall", name)] = recall[i]
        metrics[names.per_class(prefix, "f1", name)] = f1[i]
    intervals = {}
    if len(y_true):
        groups = np.arange(len(y_true)) if groups is None else np.asarray(groups)
        found = group_bootstrap(y_true, y_pred, groups, len(class_names), seed=seed)
        intervals = {f"{prefix}_{kind}": found[kind] for kind in SUMMARY}
        intervals.update({names.per_class(prefix, "f1", name): found[f"f1_{i}"]
                          for i, name in enumerate(class_names)})
        for key, interval in intervals.items():
            metrics[names.ci_low(key)], metrics[names.ci_high(key)] = interval.low, interval.high
    confusion = pd.DataFrame(
        confusion_matrix(y_true, y_pred, labels=labels), index=class_names, columns=class_names
    )
    confusion.index.name, confusion.columns.name = "true", "predicted"
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=class_names, output_dict=True, zero_division=0
    )
    return Evaluation({k: float(v) for k, v in metrics.items()}, confusion, report, intervals,
                      prefix)


def calibration_metrics(probabilities, y_true, class_names: list[str], groups=None,
                        prefix: str = "test", seed: int = 0,
                        uncalibrated=None) -> dict[str, float]:
    """`<prefix>_nll`, `_brier`, `_ece` (with its group-bootstrap interval), `_roc_auc_macro`
    and `_roc_auc_<class>` of `probabilities`: how far their confidence can be trusted. With
    `uncalibrated` (the same before temperature scaling), its scores too, as
    `<prefix>_uncalibrated_*`."""
    y_true = np.asarray(y_true, dtype=np.int64)
    groups = np.arange(len(y_true)) if groups is None else np.asarray(groups)
    metrics = {}
    for name, scored in ((f"{prefix}_uncalibrated", uncalibrated), (prefix, probabilities)):
        if scored is None:
            continue
        metrics.update({names.calibration(name, key, class_names): value
                        for key, value in calibration_scores(scored, y_true,
                                                             class_names).items()})
        if len(y_true):
            ece = ece_interval(scored, y_true, groups, seed=seed)
            key = names.calibration(name, "ece", class_names)
            metrics.update({names.ci_low(key): ece.low, names.ci_high(key): ece.high})
    return metrics


def normalised(confusion: pd.DataFrame) -> pd.DataFrame:
    """Row-normalised: each row is the distribution of predictions for one true class."""
    totals = confusion.sum(axis=1).replace(0, np.nan)
    return confusion.div(totals, axis=0).fillna(0.0)

"""Test-set metrics and the confusion-matrix figure of one trained model."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from leukoml import names  # noqa: E402


@dataclass
class Evaluation:
    metrics: dict[str, float]  # test_accuracy, test_macro_f1, test_f1_<class>, ...
    confusion: pd.DataFrame  # counts; rows = true class, columns = predicted class
    report: dict  # sklearn's classification_report, as a dict


def evaluate_predictions(y_true, y_pred, class_names: list[str]) -> Evaluation:
    labels = list(range(len(class_names)))
    metrics = {
        names.TEST_ACCURACY: accuracy_score(y_true, y_pred),
        names.TEST_BALANCED_ACCURACY: balanced_accuracy_score(y_true, y_pred),
        names.TEST_MACRO_F1: f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
    }
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    for i, name in enumerate(class_names):
        metrics[names.test_per_class("precision", name)] = precision[i]
        metrics[names.test_per_class("recall", name)] = recall[i]
        metrics[names.test_per_class("f1", name)] = f1[i]
    confusion = pd.DataFrame(
        confusion_matrix(y_true, y_pred, labels=labels), index=class_names, columns=class_names
    )
    confusion.index.name, confusion.columns.name = "true", "predicted"
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=class_names, output_dict=True, zero_division=0
    )
    return Evaluation({k: float(v) for k, v in metrics.items()}, confusion, report)


def normalised(confusion: pd.DataFrame) -> pd.DataFrame:
    """Row-normalised: each row is the distribution of predictions for one true class."""
    totals = confusion.sum(axis=1).replace(0, np.nan)
    return confusion.div(totals, axis=0).fillna(0.0)


def plot_confusion(confusion: pd.DataFrame, title: str = "") -> plt.Figure:
    """Counts and row-normalised confusion matrices, side by side."""
    n = len(confusion)
    side = max(4.0, 0.7 * n + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side), constrained_layout=True)
    panels = ((confusion, "d", "counts"), (normalised(confusion), ".2f", "row-normalised (recall)"))
    for ax, (frame, fmt, label) in zip(axes, panels):
        sns.heatmap(frame, annot=n <= 15, fmt=fmt, cmap="Blues", square=True, cbar=True, ax=ax,
                    vmin=0, vmax=None if fmt == "d" else 1)
        ax.set_title(label)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.tick_params(axis="x", labelrotation=45)
        ax.tick_params(axis="y", labelrotation=0)
    if title:
        fig.suptitle(title)
    return fig

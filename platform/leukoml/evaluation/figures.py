"""The confusion-matrix figure: one function, used by training, report and evaluate.

Figures here and in `calibration` and `explain.figures` are `matplotlib.figure.Figure`
objects made without pyplot: pyplot keeps every figure it makes until `plt.close`, so
a study of many trials would grow; a bare `Figure` is freed with its last reference,
right after `mlflow.log_figure`.
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from leukoml.evaluation.metrics import normalised


def plot_confusion(confusion: pd.DataFrame, title: str = "", counts: bool = True) -> Figure:
    """Row-normalised confusion matrix, with the counts beside it when `counts`."""
    n = len(confusion)
    side = max(4.0, 0.7 * n + 2.5)
    panels = [(normalised(confusion), ".2f", "row-normalised (recall)")]
    if counts:
        panels.insert(0, (confusion, "d", "counts"))
    fig = Figure(figsize=(len(panels) * side + 1, side), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (frame, fmt, label) in zip(axes[0], panels):
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

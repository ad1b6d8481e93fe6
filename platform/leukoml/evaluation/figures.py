"""The confusion-matrix figure: one function, used by training, report and evaluate."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from leukoml.evaluation.metrics import normalised  # noqa: E402


def plot_confusion(confusion: pd.DataFrame, title: str = "", counts: bool = True) -> plt.Figure:
    """Row-normalised confusion matrix, with the counts beside it when `counts`."""
    n = len(confusion)
    side = max(4.0, 0.7 * n + 2.5)
    panels = [(normalised(confusion), ".2f", "row-normalised (recall)")]
    if counts:
        panels.insert(0, (confusion, "d", "counts"))
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * side + 1, side),
                             constrained_layout=True, squeeze=False)
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

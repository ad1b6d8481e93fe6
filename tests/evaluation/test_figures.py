"""Figures are `matplotlib.figure.Figure` objects pyplot never holds: a study that logs
hundreds of them does not keep them alive."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from leukoml.evaluation.calibration import reliability_figure
from leukoml.evaluation.figures import plot_confusion


def test_figures_are_made_without_pyplot_and_save_as_png(tmp_path):
    confusion = pd.DataFrame([[5, 1], [2, 4]], index=["eos", "lym"], columns=["eos", "lym"])
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    open_before = plt.get_fignums()
    figures = {"confusion": plot_confusion(confusion, "title"),
               "confusion_rates": plot_confusion(confusion, counts=False),
               "reliability": reliability_figure(probabilities, None, np.array([0, 1, 1]), 1.0)}
    assert plt.get_fignums() == open_before  # nothing for pyplot to keep, nothing to close
    for name, figure in figures.items():
        assert isinstance(figure, Figure)
        figure.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert [len(f.axes) for f in figures.values()] == [4, 2, 1]  # heatmaps + colour bars

"""The evaluation room: metrics with group-bootstrap intervals, and their figures.

Imports only numpy / pandas / scikit-learn / matplotlib and `leukoml.names`,
never TensorFlow or MLflow: training, registry, report and `-e evaluate` all
score predictions through it, so their numbers agree by construction.
"""

from leukoml.evaluation.figures import plot_confusion
from leukoml.evaluation.intervals import Interval, group_bootstrap, paired_difference
from leukoml.evaluation.metrics import (
    Evaluation,
    calibration_metrics,
    evaluate_predictions,
    normalised,
)

__all__ = [
    "Evaluation",
    "Interval",
    "calibration_metrics",
    "evaluate_predictions",
    "group_bootstrap",
    "normalised",
    "paired_difference",
    "plot_confusion",
]

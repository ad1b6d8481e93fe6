"""The training room: one model, one MLflow run (build -> fit -> evaluate -> explain -> log).

May import data, backbones, evaluation, explain, serving, config, names, errors;
never study, registry or report.
"""

from leukoml.training.keras_metrics import BalancedAccuracy, MacroF1
from leukoml.training.run import TrainingDiverged, TrainResult, train_and_log

__all__ = ["BalancedAccuracy", "MacroF1", "TrainResult", "TrainingDiverged", "train_and_log"]

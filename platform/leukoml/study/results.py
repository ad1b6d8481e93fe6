"""The study's parent run as its results page: the resolved settings as params, the
best validation score so far against elapsed seconds (an anytime curve), and the
final figures as metrics, so the MLflow UI's experiment table shows a study."""

from __future__ import annotations

import time

import optuna
from mlflow.tracking import MlflowClient

from leukoml import names
from leukoml.locks import mask_url

_STATES = {"complete": optuna.trial.TrialState.COMPLETE,
           "pruned": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL}


def log_settings(run_id: str, study_name: str, storage: str, n_trials: int,
                 timeout: float | None) -> None:
    """What the study really runs with, beside the -P values `mlflow run` logged."""
    MlflowClient().log_batch(run_id, params=[
        _param(names.PARAM_STUDY_NAME, study_name),
        _param(names.PARAM_STUDY_STORAGE, mask_url(storage)),
        _param(names.PARAM_STUDY_N_TRIALS, n_trials),
        _param(names.PARAM_STUDY_TIMEOUT, "none" if timeout is None else f"{timeout:g}"),
    ])


def _param(key: str, value):
    from mlflow.entities import Param

    return Param(key, str(value))


def started_at(study: optuna.Study) -> float:
    """Unix time the study was first started (recorded once, by its creator)."""
    if names.STUDY_STARTED_ATTR not in study.user_attrs:
        study.set_user_attr(names.STUDY_STARTED_ATTR, time.time())
    return float(study.user_attrs[names.STUDY_STARTED_ATTR])


class AnytimeCurve:
    """An Optuna callback: after each trial, the best value so far into the parent run, at
    step = whole seconds since the study started (every worker logs into the one curve)."""

    def __init__(self, parent_run_id: str, started: float):
        self.parent_run_id, self.started = parent_run_id, started

    def __call__(self, study: optuna.Study, trial) -> None:
        try:
            best = study.best_value
        except ValueError:  # nothing complete yet
            return
        MlflowClient().log_metric(self.parent_run_id, names.BEST_SO_FAR, best,
                                  step=int(time.time() - self.started))


def _ran(trial) -> bool:
    return not (trial.user_attrs.get(names.SURPLUS_ATTR)
                or trial.user_attrs.get(names.NOT_STARTED_ATTR))


def study_figures(study: optuna.Study, seconds: float) -> dict[str, float]:
    """Best validation and its trial with its test scores, trials by outcome, time."""
    trials = study.get_trials(deepcopy=False)
    ran = [t for t in trials if _ran(t)]
    figures = {names.trials_counted(kind): sum(t.state == state for t in ran)
               for kind, state in _STATES.items()}
    figures[names.trials_counted("stopped_by_deadline")] = sum(
        t.user_attrs.get(names.STOPPED_BY) == names.STOPPED_BY_DEADLINE for t in ran)
    figures[names.trials_counted("not_started")] = sum(
        names.NOT_STARTED_ATTR in t.user_attrs for t in trials)
    figures[names.STUDY_SECONDS] = seconds
    figures[names.TRIAL_SECONDS] = sum(t.duration.total_seconds() for t in ran
                                       if t.duration is not None)
    try:
        best = study.best_trial
    except ValueError:
        return figures
    figures[names.STUDY_BEST_VALUE] = best.value
    figures[names.STUDY_BEST_TRIAL] = best.number
    for key, attr in ((names.STUDY_BEST_TEST_ACCURACY, names.TEST_ACCURACY),
                      (names.STUDY_BEST_TEST_MACRO_F1, names.TEST_MACRO_F1)):
        if attr in best.user_attrs:
            figures[key] = best.user_attrs[attr]
    return figures


def log_figures(run_id: str, study: optuna.Study, seconds: float) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[
        Metric(key, float(value), now, 0) for key, value in study_figures(study, seconds).items()])

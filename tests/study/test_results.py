"""The study's parent run as its results page: settings as params, figures as metrics."""

from __future__ import annotations

import mlflow
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from leukoml import names
from leukoml.study.results import AnytimeCurve, log_figures, log_settings


def test_the_parent_run_holds_the_real_settings_with_the_password_masked(tracking_uri):
    with mlflow.start_run() as run:
        log_settings(run.info.run_id, "kaggle-45", "postgresql://leukoml:s3cret@db:5432/optuna",
                     n_trials=100, timeout=2700.0)
    params = mlflow.get_run(run.info.run_id).data.params
    assert params[names.PARAM_STUDY_STORAGE] == "postgresql://leukoml:***@db:5432/optuna"
    assert (params[names.PARAM_STUDY_NAME], params[names.PARAM_STUDY_N_TRIALS],
            params[names.PARAM_STUDY_TIMEOUT]) == ("kaggle-45", "100", "2700")


def test_the_figures_count_trials_by_outcome_and_name_the_best(tracking_uri):
    study = optuna.create_study(direction="maximize")
    for state, value, attrs in (
            (TrialState.COMPLETE, 0.8, {names.TEST_ACCURACY: 0.79, names.TEST_MACRO_F1: 0.78}),
            (TrialState.COMPLETE, 0.9, {names.STOPPED_BY: names.STOPPED_BY_DEADLINE,
                                        names.TEST_ACCURACY: 0.88, names.TEST_MACRO_F1: 0.87}),
            (TrialState.PRUNED, None, {}),
            (TrialState.FAIL, None, {names.ERROR_ATTR: "OOM"}),
            (TrialState.FAIL, None, {names.SURPLUS_ATTR: True}),  # never ran
            (TrialState.FAIL, None, {names.NOT_STARTED_ATTR: "not started: ..."})):
        study.add_trial(create_trial(state=state, value=value, user_attrs=attrs))
    with mlflow.start_run() as run:
        AnytimeCurve(run.info.run_id, started=0.0)(study, study.trials[-1])
        log_figures(run.info.run_id, study, seconds=120.0)
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    assert {kind: metrics[names.trials_counted(kind)] for kind in (
        "complete", "pruned", "failed", "stopped_by_deadline", "not_started")} == {
        "complete": 2, "pruned": 1, "failed": 1, "stopped_by_deadline": 1, "not_started": 1}
    assert metrics[names.STUDY_BEST_TRIAL] == 1 and metrics[names.STUDY_BEST_VALUE] == 0.9
    assert metrics[names.STUDY_BEST_TEST_ACCURACY] == pytest.approx(0.88)
    assert metrics[names.STUDY_SECONDS] == 120.0
    assert metrics[names.BEST_SO_FAR] == 0.9

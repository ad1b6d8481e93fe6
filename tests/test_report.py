"""The study report from an Optuna study alone (trials added through Optuna's own API)."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from leukoml import names
from leukoml.names import SURPLUS_ATTR
from leukoml.report import build_report, leaderboard

CLASSES = ["basophil", "eosinophil", "lymphocyte"]


def _trial(backbone, tier, value, state=TrialState.COMPLETE, lr=1e-3, **attrs):
    distributions = {
        "tier": CategoricalDistribution(["low", "medium"]),
        f"backbone_{tier}": CategoricalDistribution([backbone]),
        "learning_rate": FloatDistribution(1e-5, 1e-2, log=True),
    }
    params = {"tier": tier, f"backbone_{tier}": backbone, "learning_rate": lr}
    if state == TrialState.FAIL:
        return create_trial(state=state, params=params, distributions=distributions,
                            user_attrs=attrs)
    user_attrs = {names.BACKBONE: backbone, names.TEST_MACRO_F1: value - 0.02,
                  names.TEST_ACCURACY: value - 0.01, names.TEST_BALANCED_ACCURACY: value - 0.03,
                  names.EPOCHS_RUN: 5.0, names.TRAIN_SECONDS: 100 * value,
                  names.PARAM_COUNT: 1_000_000 if tier == "low" else 25_000_000,
                  "class_f1": {c: value - 0.1 * i for i, c in enumerate(CLASSES)}, **attrs}
    intermediate = {0: value / 2, 1: value} if state == TrialState.PRUNED else {}
    return create_trial(state=state, value=value, params=params, distributions=distributions,
                        user_attrs=user_attrs, intermediate_values=intermediate)


@pytest.fixture
def study():
    study = optuna.create_study(direction="maximize", study_name="unit")
    study.set_user_attr("objective_metric", "val_macro_f1")
    for trial in (_trial("MobileNetV3Small", "low", 0.81, lr=2e-3),
                  _trial("ResNet50", "medium", 0.88, lr=4e-4),
                  _trial("Asghar2022CNN", "low", 0.42, TrialState.PRUNED, lr=1e-5),
                  _trial("DenseNet201", "medium", 0.0, TrialState.FAIL, error="OOM"),
                  _trial("MobileNetV2", "low", 0.0, TrialState.FAIL, **{SURPLUS_ATTR: True}),
                  _trial("EfficientNetB0", "low", 0.77, lr=1e-3)):
        study.add_trial(trial)
    return study


def test_leaderboard_orders_by_objective_and_leaves_out_surplus_trials(study):
    board = leaderboard(study)
    assert list(board["backbone"]) == ["ResNet50", "MobileNetV3Small", "EfficientNetB0",
                                       "Asghar2022CNN", "DenseNet201"]
    assert list(board["state"]) == ["COMPLETE"] * 3 + ["PRUNED", "FAIL"]
    assert board.loc[0, "tier"] == "medium" and board.loc[0, "objective"] == 0.88
    assert board.loc[3, names.EPOCHS_RUN] == 2  # a pruned trial counts the epochs it ran
    assert board.loc[4, "error"] == "OOM"


def test_report_has_every_figure_and_one_self_contained_page(study):
    board, pngs, page = build_report(study)
    assert set(pngs) >= {"score_vs_params.png", "per_class_f1.png", "objective_vs_time.png",
                         "optimisation_history.png", "param_importances.png",  # optuna's own
                         "intermediate_values.png", "timeline.png"}
    for data in pngs.values():
        assert data.startswith(b"\x89PNG")
    assert page.count("data:image/png;base64,") == len(pngs)
    assert "<table" in page and "ResNet50" in page and "Study unit" in page
    assert len(board) == 5


def test_a_study_without_finished_trials_still_reports():
    study = optuna.create_study(study_name="empty")
    board, pngs, page = build_report(study)
    assert board.empty and pngs == {} and "Study empty" in page


def test_the_leaderboard_shows_every_dimension_as_trained_and_only_trials_that_ran():
    """Before: learning_rate None (the trial's param was learning_rate_scale), class_weight
    empty (a fixed dimension never reaches trial.params), epochs_run 6.0000, and one row per
    queued trial a timeout left behind."""
    config = {"image_size": 64, "learning_rate": 1.3e-3, "batch_size": 32,
              "class_weight": "none", "weight_decay": 1e-4}
    study = optuna.create_study(direction="maximize", study_name="dims")
    study.add_trial(_trial("MobileNetV3Small", "low", 0.8, **{
        names.CONFIG_ATTR: config, names.EPOCHS_RUN: 6}))
    study.add_trial(_trial("MobileNetV2", "low", 0.9, **{
        names.CONFIG_ATTR: {**config, "batch_size": 64}, names.EPOCHS_RUN: 3,
        names.STOPPED_BY: names.STOPPED_BY_DEADLINE}))
    study.enqueue_trial({})  # WAITING: never ran
    study.add_trial(_trial("Asghar2022CNN", "low", 0.0, TrialState.FAIL,
                           **{names.NOT_STARTED_ATTR: "120 s left, 2 epochs need ~300 s"}))
    board, _, page = build_report(study)
    assert list(board["number"]) == [1, 0]
    assert list(board[names.LEARNING_RATE]) == [1.3e-3, 1.3e-3]
    assert list(board[names.CLASS_WEIGHT]) == ["none", "none"]
    assert list(board[names.STOPPED_BY].fillna("")) == ["deadline", ""]
    csv = board.to_csv(index=False)
    assert ",6," in csv and "6.0" not in csv and ",64," in csv  # integers as integers
    assert "deadline" in page

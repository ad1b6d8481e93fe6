"""The study report: a leaderboard (and figures) built from the study storage alone.

Everything here reads an `optuna.Study`, so `mlflow run . -e report` can
rebuild the report of any study from its storage, whichever workers ran it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import mlflow
import optuna
import pandas as pd

from leukoml import names
from leukoml.search import RUN_ID_ATTR

log = logging.getLogger(__name__)

LEADERBOARD_COLUMNS = [
    "number", "state", names.TIER, names.BACKBONE, names.LEARNING_RATE, names.BATCH_SIZE,
    names.PATIENCE, names.CLASS_WEIGHT, names.EPOCHS_RUN, "objective", *names.TEST_SUMMARY,
    names.PARAM_COUNT, names.TRAIN_SECONDS, "run_id", "error",
]


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, best objective first; pruned and failed trials last."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        params = dict(trial.params)
        tier = params.get(names.TIER)
        row = {
            "number": trial.number,
            "state": trial.state.name,
            names.TIER: tier,
            names.BACKBONE: params.get(f"{names.BACKBONE}_{tier}",
                                       trial.user_attrs.get(names.BACKBONE)),
            "objective": trial.value,
            "run_id": trial.user_attrs.get(RUN_ID_ATTR),
            "error": trial.user_attrs.get("error"),
        }
        for key in (names.LEARNING_RATE, names.BATCH_SIZE, names.PATIENCE, names.CLASS_WEIGHT):
            row[key] = params.get(key)
        for key in (*names.TEST_SUMMARY, names.EPOCHS_RUN, names.TRAIN_SECONDS, names.PARAM_COUNT):
            row[key] = trial.user_attrs.get(key)
        if trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values:
            row[names.EPOCHS_RUN] = len(trial.intermediate_values)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)
    if frame.empty:
        return frame
    ascending = study.direction == optuna.study.StudyDirection.MINIMIZE
    frame["_complete"] = frame["state"] != "COMPLETE"
    frame = frame.sort_values(["_complete", "objective", "number"],
                              ascending=[True, ascending, True], na_position="last")
    return frame.drop(columns="_complete").reset_index(drop=True)


def log_report(study: optuna.Study, run_id: str) -> pd.DataFrame:
    """Write `report/` (leaderboard.csv, ...) into the study's parent run."""
    board = leaderboard(study)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(names.LEADERBOARD_CSV).name
        board.to_csv(path, index=False)
        mlflow.MlflowClient().log_artifact(run_id, str(path), names.REPORT_DIR)
    return board


def format_top(board: pd.DataFrame, n: int = 10) -> str:
    """The head of the leaderboard for the console."""
    columns = ["number", "state", names.BACKBONE, names.TIER, "objective", names.TEST_MACRO_F1,
               names.TEST_ACCURACY, names.EPOCHS_RUN]
    return board[columns].head(n).to_string(index=False, float_format=lambda v: f"{v:.4f}")

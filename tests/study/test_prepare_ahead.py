"""A study prepares its data before any trial, says what that took of the budget, and
starts no trial it would have to cut when too little is left."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna

from leukoml import names
from leukoml.cli import main

SMOKE = Path(__file__).resolve().parents[2] / "search_spaces" / "smoke.yaml"


def test_too_little_budget_after_the_data_starts_no_trial(tracking_uri, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    # 20 s: less than the time a trial keeps for its evaluation alone, whatever the data took
    assert main(["search", "--data", "synthetic:per_class=10,size=32", "--search-space",
                 str(SMOKE), "--timeout", "20", "--study-name", "short", "--storage",
                 storage]) == 0
    out = capsys.readouterr().out
    assert "data prepared in" in out and "not starting a trial" in out
    assert "leukoml prepare --data synthetic:per_class=10,size=32" in out
    study = optuna.load_study(study_name="short", storage=storage)
    assert not [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]
    parent = study.user_attrs[names.PARENT_RUN_ATTR]
    metrics = mlflow.get_run(parent).data.metrics
    assert {names.prepare_seconds(p) for p in ("listing", "decode", "copies", "siblings")} <= set(
        metrics)
    runs = mlflow.search_runs(filter_string=names.role_filter(names.Role.TRIAL),
                              output_format="list")
    assert runs == []  # no trial run was opened

"""`leukoml.tracking`: every experiment leukoml uses opens on training runs in the MLflow UI."""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from leukoml import names, tracking


def test_an_experiment_someone_else_created_is_tagged_when_leukoml_opens_a_run(tracking_uri):
    """As `mlflow run --experiment-name x` does: the experiment exists, untagged, before
    leukoml starts; the MLflow 3 UI would open it on the GenAI trace page."""
    client = MlflowClient()
    experiment = client.create_experiment("made-by-mlflow-run")
    client.set_experiment_tag(experiment, names.TAG_EXPERIMENT_KIND, "genai_development")
    with tracking.start_run(experiment_id=experiment) as run:
        assert run.info.experiment_id == experiment
    tags = client.get_experiment(experiment).tags
    assert tags[names.TAG_EXPERIMENT_KIND] == names.EXPERIMENT_KIND == "custom_model_development"


def test_an_experiment_mlflow_creates_for_leukoml_is_tagged_too(tracking_uri, monkeypatch):
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "created-on-first-run")
    with tracking.start_run_with_system_metrics():
        pass
    experiment = mlflow.get_experiment_by_name("created-on-first-run")
    assert experiment.tags[names.TAG_EXPERIMENT_KIND] == names.EXPERIMENT_KIND

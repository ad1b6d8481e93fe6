"""Small MLflow helpers shared by training, search and registry."""

from __future__ import annotations

import logging

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukoml import names

log = logging.getLogger(__name__)


def format_param(value: object) -> str:
    """Params as the command line spells them (`true`, not `True`), so runs compare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def log_params(params: dict[str, object]) -> None:
    """Log params to the active run, skipping keys it already has.

    `mlflow run` logs every entry-point parameter as typed before the code
    starts; MLflow refuses to change a param, so those raw values stand.
    """
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    fresh = {k: format_param(v) for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


_TAGGED: set[tuple[str, str]] = set()  # (tracking URI, experiment id) checked by this process


def tag_experiment(experiment_id: str, client: MlflowClient | None = None) -> None:
    """Mark an experiment leukoml uses as one of training runs, so the MLflow 3 UI opens it
    on its runs, not on the GenAI "send your first trace" page (whoever created it: leukoml,
    `mlflow run --experiment-name`, the user). Checked once per process."""
    client = client or MlflowClient()
    if (client.tracking_uri, experiment_id) in _TAGGED:
        return
    try:
        tags = client.get_experiment(experiment_id).tags
        if tags.get(names.TAG_EXPERIMENT_KIND) != names.EXPERIMENT_KIND:
            client.set_experiment_tag(experiment_id, names.TAG_EXPERIMENT_KIND,
                                      names.EXPERIMENT_KIND)
    except MlflowException as exc:  # e.g. no permission to edit it: the UI view is cosmetic
        log.warning("could not tag experiment %s for the MLflow UI: %s", experiment_id, exc)
    _TAGGED.add((client.tracking_uri, experiment_id))


def start_run(**kwargs) -> mlflow.ActiveRun:
    """`mlflow.start_run`, its experiment tagged for the UI (`tag_experiment`): every run a
    leukoml command opens or continues starts here."""
    run = mlflow.start_run(**kwargs)
    tag_experiment(run.info.experiment_id)
    return run


SYSTEM_METRICS_SECONDS = 2  # MLflow samples every 10 s by default: a short run logged none


def start_run_with_system_metrics(**kwargs) -> mlflow.ActiveRun:
    """`start_run` that logs CPU, memory (and GPU) metrics, sampled often enough
    that a run of a few seconds has them too."""
    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_SECONDS)
    return start_run(log_system_metrics=True, **kwargs)

"""Small MLflow helpers shared by training, search and registry."""

from __future__ import annotations

import mlflow


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


SYSTEM_METRICS_SECONDS = 2  # MLflow samples every 10 s by default: a short run logged none


def start_run_with_system_metrics(**kwargs):
    """`mlflow.start_run` that logs CPU, memory (and GPU) metrics, sampled often enough
    that a run of a few seconds has them too."""
    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_SECONDS)
    return mlflow.start_run(log_system_metrics=True, **kwargs)

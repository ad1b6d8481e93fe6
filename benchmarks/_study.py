"""Run a study in-process for a benchmark, in a throw-away MLflow and Optuna store."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

import mlflow

from leukoml.study import parse_search_space, run_search


def scratch_stores(prefix: str, folder: str | None = None) -> tuple[str, str]:
    """(tracking URI, Optuna storage URL) in a fresh temporary folder, or in `folder` again."""
    folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix=f"leukoml-{prefix}-"))
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    found = mlflow.get_experiment_by_name(prefix)
    mlflow.set_experiment(experiment_id=found.experiment_id if found else mlflow.create_experiment(
        prefix, (folder / "artifacts").as_uri()))
    return tracking, f"sqlite:///{folder / 'optuna.db'}"


def run_study(space: dict, data: str, name: str, storage: str, **budget):
    """Run the study defined by `space` (a search-space mapping); return (study, seconds)."""
    started = time.perf_counter()
    with mlflow.start_run(run_name=name):
        outcome = run_search(parse_search_space(space), data, name, storage=storage, **budget)
    return outcome.study, time.perf_counter() - started


def spent(study) -> tuple[int, Counter]:
    """Epochs trained (a pruned trial counts those it ran) and trials by state name.

    Queued trials a timeout left unrun are WAITING: they are not trials run.
    """
    return (sum(len(t.intermediate_values) for t in study.trials),
            Counter(t.state.name for t in study.trials))

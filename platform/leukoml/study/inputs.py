"""What a study needs that can be wrong, checked before any MLflow run, Optuna trial
or TensorFlow import: a bad `--data` fails in about a second, not after the
imports a study needs (mlflow, optuna, matplotlib), and leaves no run behind.
"""

from __future__ import annotations

from leukoml.study.space import SearchSpace


def check_search_inputs(space: SearchSpace, data: str, storage: str | None) -> None:
    """The data folder (listed, one readable image per class), its grouping, then the
    storage URL. Raises one `LeukomlError`."""
    from leukoml.data import DataSpec, check_source

    check_source(DataSpec(source=data, seed=space.seed,
                          group_by=space.split.get("group_by") or "siblings",
                          follow_links=bool(space.value("follow_links"))))
    from leukoml.study.storage import open_storage  # optuna and SQLAlchemy: after the data

    open_storage(storage)  # unreachable: fails here, naming the URL

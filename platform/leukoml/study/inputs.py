"""What a study needs that can be wrong, checked before any MLflow run, Optuna trial
or TensorFlow import: a bad `--data` fails in about a second, not after the
imports a study needs (mlflow, optuna, matplotlib), and leaves no run behind.
"""

from __future__ import annotations

from leukoml.errors import LeukomlError
from leukoml.study.space import SearchSpace


def check_search_inputs(space: SearchSpace, data: str, storage: str | None) -> None:
    """The data folder (listed, one readable image per class), its grouping, then the
    storage URL. Raises one `LeukomlError`."""
    from leukoml.data import DataSpec, list_source, parse_synthetic

    spec = DataSpec(source=data, seed=space.seed,
                    group_by=space.split.get("group_by") or "siblings",
                    follow_links=bool(space.value("follow_links")))
    if parse_synthetic(str(data).strip()) is None:  # the synthetic set is rendered, not listed
        _, root, listing = list_source(spec)
        _check_readable(root, listing)
    else:
        spec.validated()
    from leukoml.study.storage import open_storage  # optuna and SQLAlchemy: after the data

    open_storage(storage)  # unreachable: fails here, naming the URL


def _check_readable(root, listing) -> None:
    """Each class has an image that decodes, so a folder of non-images fails here, not in
    every trial. Stops at a class's first good file: one decode per class on good data."""
    from leukoml.data import ImageError, decode_image
    from leukoml.data._discover import printable

    for label in range(len(listing.class_names)):
        files = [f for f, mine in zip(listing.files, listing.labels) if mine == label]
        for name in files:
            try:
                decode_image((root / name).read_bytes(), 16)
                break
            except (ImageError, OSError):
                continue
        else:
            raise LeukomlError(f"data: class folder {printable(listing.class_folder(label))} "
                               f"has no readable image ({len(files)} file(s) tried)")

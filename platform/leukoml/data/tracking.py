"""What a run records about its data: spec, manifest, dataset inputs, leakage, skipped files.

`log_data(data)` writes it all to the active MLflow run, so anyone can rebuild
the split (`data/spec.json`), see it image by image (`data/manifest.csv`), and
the MLflow UI shows which data the run used: one dataset input per split with
a content digest, equal for two runs on the same split.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import mlflow
import pandas as pd

from leukoml import names
from leukoml.data import PreparedData
from leukoml.tracking import log_params

log = logging.getLogger(__name__)


def dataset_params(data: PreparedData) -> dict[str, object]:
    sizes = data.split_sizes()
    return {
        names.DATASET: str(data.root),
        names.DATASET_FINGERPRINT: data.fingerprint,
        names.CLASS_NAMES: json.dumps(data.class_names),
        names.N_TRAIN: sizes["train"],
        names.N_VAL: sizes["val"],
        names.N_TEST: sizes["test"],
        names.N_SKIPPED: len(data.skipped),
        names.SPLIT_SOURCE: data.split_source,
        names.GROUP_BY: data.spec.group_by,
    }


def log_skipped(skipped: list[tuple[str, str]]) -> None:
    """`data/skipped_files.csv` in the active run, if any file was skipped."""
    if not skipped:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(names.SKIPPED_FILES).name
        pd.DataFrame(skipped, columns=["file", "reason"]).to_csv(path, index=False)
        mlflow.log_artifact(str(path), str(Path(names.SKIPPED_FILES).parent))


def log_dataset_input(rows: pd.DataFrame, source: Path, name: str, context: str):
    """`rows` (with a `class` column) as an MLflow dataset input of the active run; returns
    the dataset, whose digest two runs on the same rows share."""
    with warnings.catch_warnings():  # MLflow registers its local source twice, and hints
        warnings.filterwarnings("ignore", "The specified dataset source", UserWarning)
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        dataset = mlflow.data.from_pandas(rows, source=str(source), targets="class", name=name)
        _log_input(dataset, context)  # inside: MLflow infers the schema when logging
    return dataset


def log_dataset_inputs(data: PreparedData, manifest: pd.DataFrame) -> None:
    """One MLflow dataset input per split (context training/validation/test)."""
    for split, context in names.SPLIT_CONTEXTS.items():
        rows = manifest[manifest["split"] == split].drop(columns="split").reset_index(drop=True)
        log_dataset_input(rows, data.root, f"{data.root.name}-{split}", context)


def _log_input(dataset, context: str, attempts: int = 4) -> None:
    """`mlflow.log_input`, retried: MLflow's SQL store looks a dataset up and then inserts
    it, so workers logging the same new dataset at once collide on its unique key (an
    IntegrityError that MLflow reports as INTERNAL_ERROR); a retry finds the row the
    winner wrote. A dataset input is a record, not worth a trial: warn if it never lands."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except MlflowException as exc:
            if attempt == attempts - 1:
                log.warning("dataset input %s (%s) not logged: %s", dataset.name, context, exc)
                return
            time.sleep(0.5 * (attempt + 1))


def log_data(data: PreparedData) -> None:
    """Everything about `data` to the active run: params, spec, manifest, inputs, leakage."""
    log_params(dataset_params(data))
    mlflow.log_text(data.spec.to_json() + "\n", names.DATA_SPEC)
    manifest = data.manifest()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(names.MANIFEST).name
        manifest.to_csv(path, index=False)
        mlflow.log_artifact(str(path), str(Path(names.MANIFEST).parent))
    log_dataset_inputs(data, manifest)
    mlflow.log_dict(
        {"split_source": data.split_source, "sizes": data.split_sizes(),
         "class_counts": data.class_counts()},
        names.SPLIT_SIZES,
    )
    leakage = data.leakage
    mlflow.log_dict(leakage.to_dict(), names.LEAKAGE_REPORT)
    mlflow.log_text(leakage.summary_text() + "\n", names.LEAKAGE_SUMMARY)
    mlflow.log_metrics({names.COPIES_TRAIN_TEST: leakage.shared_pairs("train", "test"),
                        names.COPIES_TRAIN_VAL: leakage.shared_pairs("train", "val"),
                        names.SIBLINGS_TRAIN_VAL: leakage.with_train_sibling("val"),
                        names.SIBLINGS_TRAIN_TEST: leakage.with_train_sibling("test"),
                        names.CELLS_NOT_FOUND: data.cells_missed})
    if leakage.train_shares_images:
        warning = next(line for line in leakage.summary_text().splitlines()
                       if line.startswith("WARNING"))
        mlflow.set_tag(names.TAG_LEAKAGE, warning[:500])
    log_skipped(data.skipped)


def dataset_card(data: PreparedData) -> dict:
    """What `leukoml prepare` found in a dataset, for a person deciding whether to train on it."""
    leakage = data.leakage
    found = data.decoded.cell_found
    return {
        "dataset": str(data.root), "fingerprint": data.fingerprint,
        "images": len(data.files), "classes": data.class_names,
        "images_per_class_and_split": data.class_counts(),
        "split": data.split_source,
        "siblings": (leakage.siblings or {}).get("summary"),
        "sibling_groups": (leakage.siblings or {}).get("groups"),
        "copy_pairs": sum(n for kinds in leakage.pairs.values() for where in kinds.values()
                          for n in where.values()),
        "crop": data.spec.crop,
        "crop_cell_found": (f"{sum(found)} of {len(found)}" if data.spec.crop == "cell"
                            else "no crop"),
        "skipped_files": len(data.skipped),
        "seconds": data.seconds,
    }


def log_dataset_card(data: PreparedData) -> dict:
    """The card as `data/card.json`, its figures as metrics, and everything `log_data` logs."""
    card = dataset_card(data)
    log_data(data)
    mlflow.log_dict(card, names.DATASET_CARD)
    metrics = {names.DATA_IMAGES: card["images"], names.DATA_SKIPPED: card["skipped_files"],
               names.DATA_COPY_PAIRS: card["copy_pairs"]}
    if card["sibling_groups"] is not None:
        metrics[names.DATA_SIBLING_GROUPS] = card["sibling_groups"]
    metrics.update({names.prepare_seconds(phase): s for phase, s in data.seconds.items()})
    mlflow.log_metrics(metrics)
    return card

"""Promote a training run into the Model Registry: `candidate` always, `champion` if better.

Aliases only: registry stages are deprecated in MLflow 3. The champion moves
only when the candidate scores a higher test macro-F1 than the current
champion on the same test images and the same classes, both models scored
through their served pyfuncs on the raw image files (each applies its own
decoding and input size). The decision also says whether the two are
distinguishable: a paired group-bootstrap interval of the difference that
excludes zero (docs/evaluation.md). The read-evaluate-set sequence runs under
a lock (`leukoml.locks`), so two racing promotions cannot leave the worse
model as champion.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from leukoml import names
from leukoml.data import DataSpec, prepare_dataset
from leukoml.errors import LeukomlError
from leukoml.evaluation import evaluate_predictions, paired_difference
from leukoml.locks import DEFAULT_TIMEOUT, named_lock
from leukoml.progress import progress
from leukoml.serving import (
    INPUT_COLUMN,
    LABEL_COLUMN,
    encode_image,
    find_serving_model,
    serving_config,
)

log = logging.getLogger(__name__)

_EVAL_BATCH = 64


@dataclass
class PromotionResult:
    model_name: str
    version: str  # the candidate's new model version
    run_id: str
    promoted: bool  # whether `champion` now points at `version`
    champion_version: str  # the champion after the decision
    previous_champion: str | None
    candidate_f1: float
    champion_f1: float | None  # None when there was no comparable champion
    eval_images: int
    reason: str
    difference: object | None = None  # evaluation.intervals.Difference, when compared

    def tags(self) -> dict[str, str]:
        """The decision as model-version tags."""
        values = {
            names.TAG_DECISION: "champion" if self.promoted else "not promoted",
            names.TAG_REASON: self.reason,
            names.TAG_CANDIDATE_F1: f"{self.candidate_f1:.6f}",
            names.TAG_CHAMPION_F1: None if self.champion_f1 is None else f"{self.champion_f1:.6f}",
            names.TAG_COMPARED_WITH: self.previous_champion,
            names.TAG_EVAL_IMAGES: str(self.eval_images),
        }
        if self.difference is not None:
            values[names.TAG_DIFFERENCE_CI] = str(self.difference.interval)
            values[names.TAG_DISTINGUISHABLE] = str(self.difference.distinguishable).lower()
        return {k: v for k, v in values.items() if v is not None}


def promotion_lock(lock_url: str | None, model_name: str, timeout: float = DEFAULT_TIMEOUT):
    """The lock every promotion into `model_name` takes (see `leukoml.locks`)."""
    return named_lock(lock_url, f"promote-{model_name}", timeout)


# --- the test data both models are scored on ------------------------------------------


@dataclass
class EvalImages:
    files: list[Path]
    labels: list[str]  # true class name per file
    class_names: list[str]
    sha256: list[str]
    groups: np.ndarray  # source group per file: intervals resample these
    check_files: list[Path]  # validation images an export's parity is checked on


def _split_data(run_id: str):
    """The run's dataset, decoded and split exactly as in training, from its `DataSpec`."""
    run = mlflow.get_run(run_id)
    data = prepare_dataset(DataSpec.from_run(run_id))
    trained_on = run.data.params.get(names.DATASET_FINGERPRINT)
    if trained_on and trained_on not in (data.fingerprint, data.stat_fingerprint):
        log.warning("run %s: dataset %s changed since training (fingerprint %s, now %s)",
                    run_id, data.root, trained_on, data.fingerprint)
    return data


def eval_images(run_id: str) -> EvalImages:
    """The raw files of the run's test split, as `prepare_dataset` rebuilds it."""
    data = _split_data(run_id)
    idx = data.splits["test"]
    return EvalImages(
        check_files=_validation_files(data),
        files=[data.root / data.files[i] for i in idx],
        labels=[data.class_names[data.labels[i]] for i in idx],
        class_names=list(data.class_names),
        sha256=[data.decoded.sha256[i] for i in idx],
        groups=data.group_ids()[idx],
    )


def _validation_files(data) -> list[Path]:
    from leukoml.serving.export import CHECK_IMAGES

    return [data.root / data.files[i] for i in data.splits["val"][:CHECK_IMAGES]]


def validation_files(run_id: str) -> list[Path]:
    """Validation images of a run an export's parity is checked on; [] if its split
    cannot be rebuilt here (the export then checks synthetic renders)."""
    try:
        return _validation_files(_split_data(run_id))
    except LeukomlError as exc:
        log.warning("cannot rebuild the split of run %s (%s): parity is checked on "
                    "synthetic renders", run_id, exc)
        return []


def seen_in_training(run_id: str) -> set[str] | None:
    """SHA-256 of the images a run trained or early-stopped on; None if it cannot be rebuilt."""
    try:
        data = _split_data(run_id)
    except LeukomlError as exc:
        log.warning("cannot rebuild the split of run %s (%s): its training images are "
                    "not excluded from the comparison", run_id, exc)
        return None
    seen = np.concatenate([data.splits["train"], data.splits["val"]])
    return {data.decoded.sha256[i] for i in seen}


def predict_labels(model: mlflow.pyfunc.PyFuncModel, files: list[Path]) -> list[str]:
    """Labels the served pyfunc gives the raw files: base64 bytes in, as over HTTP."""
    labels: list[str] = []
    chunks = range(0, len(files), _EVAL_BATCH)
    for start in progress(chunks, len(chunks), "scoring", unit="batch"):
        chunk = files[start:start + _EVAL_BATCH]
        frame = pd.DataFrame({INPUT_COLUMN: [encode_image(p.read_bytes()) for p in chunk]})
        labels.extend(model.predict(frame)[LABEL_COLUMN].tolist())
    return labels


def _indices(labels: list[str], class_names: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index[label] for label in labels], dtype=np.int64)


def macro_f1(true: list[str], predicted: list[str], class_names: list[str]) -> float:
    """Test macro-F1 exactly as training computes it."""
    evaluation = evaluate_predictions(_indices(true, class_names),
                                      _indices(predicted, class_names), class_names)
    return evaluation.metrics[names.TEST_MACRO_F1]


# --- promotion ------------------------------------------------------------------


def run_tags(run: mlflow.entities.Run) -> dict[str, str]:
    """What a model version should say about its training run: study, trial, data, scores."""
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    values = {
        names.TAG_SOURCE_RUN: run.info.run_id,
        names.TAG_VERSION_STUDY: tags.get(names.TAG_OPTUNA_STUDY) or tags.get(names.TAG_STUDY_NAME),
        names.TAG_VERSION_TRIAL: tags.get(names.TAG_OPTUNA_TRIAL),
        names.STOPPED_BY: names.STOPPED_BY_DEADLINE if names.TAG_STOPPED in tags else None,
        names.BACKBONE: params.get(names.BACKBONE),
        names.IMAGE_SIZE: params.get(names.IMAGE_SIZE),
        names.DATASET_FINGERPRINT: params.get(names.DATASET_FINGERPRINT),
        names.CLASS_NAMES: params.get(names.CLASS_NAMES),
        **{k: metrics.get(k) for k in names.TEST_SUMMARY},
        **{names.ci_low(k): metrics.get(names.ci_low(k)) for k in names.TEST_SUMMARY},
        **{names.ci_high(k): metrics.get(names.ci_high(k)) for k in names.TEST_SUMMARY},
    }
    return {k: str(v) for k, v in values.items() if v is not None}


def _version_uri(model_name: str, version: str) -> str:
    return f"models:/{model_name}/{version}"


def check_promotable(run_id: str) -> tuple[mlflow.entities.Run, str, DataSpec]:
    """The run, its served model URI and its data spec, or a `LeukomlError`: nothing is
    registered for a run that cannot be compared."""
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise LeukomlError(f"run_id: no run {run_id!r} in {mlflow.get_tracking_uri()} "
                           f"({type(exc).__name__})") from None
    if run.info.status != "FINISHED":
        raise LeukomlError(f"run_id: run {run_id} is {run.info.status}, not FINISHED: nothing "
                           "to promote")
    try:
        return run, find_serving_model(run_id), DataSpec.from_run(run_id)
    except LeukomlError as exc:  # a finished run, but not one leukoml trained
        raise LeukomlError(f"run_id: {exc}") from None


def promote(
    run_id: str,
    model_name: str = names.DEFAULT_MODEL_NAME,
    force: bool = False,
    lock_url: str | None = None,
    lock_timeout: float = DEFAULT_TIMEOUT,
    export: tuple[str, ...] | None = None,
) -> PromotionResult:
    """Register run `run_id`'s served model as a new version; make it champion if it is better.

    The new version always gets alias `candidate`. `champion` moves to it when
    there is no champion, when it has a higher test macro-F1 than the champion
    on the candidate run's test images (minus any the champion trained on),
    or when `force`. Classes that differ make the scores incomparable: the
    champion stays unless `force`. Everything that can fail is checked, and
    the test images rebuilt, before the version is registered. A new champion
    is exported to `export` (default ONNX and TFLite; () for none).
    """
    run, source, _ = check_promotable(run_id)
    test = eval_images(run_id)
    client = MlflowClient()
    version = str(mlflow.register_model(source, model_name, tags=run_tags(run)).version)
    client.set_registered_model_alias(model_name, names.CANDIDATE, version)
    log.info("run %s registered as %s version %s (alias %s)", run_id, model_name, version,
             names.CANDIDATE)

    # The candidate's scores do not depend on the champion: compute them before waiting.
    candidate = mlflow.pyfunc.load_model(_version_uri(model_name, version))
    candidate_labels = predict_labels(candidate, test.files)

    with promotion_lock(lock_url, model_name, lock_timeout):
        # Read the champion only now: it may have moved while this waited for the lock.
        previous = client.get_registered_model(model_name).aliases.get(names.CHAMPION)
        previous = None if previous is None else str(previous)
        result = _decide(client, model_name, version, run_id, previous, test, candidate_labels,
                         force)
        if result.promoted:
            client.set_registered_model_alias(model_name, names.CHAMPION, version)
        for key, value in result.tags().items():
            client.set_model_version_tag(model_name, version, key, value)
    log.info("%s version %s %s: %s", model_name, version,
             "is the champion" if result.promoted else f"not promoted (champion stays "
             f"version {result.champion_version})", result.reason)
    if result.promoted and export != ():
        export_champion(run_id, model_name, version, candidate, test.check_files, export)
    return result


def export_champion(run_id: str, model_name: str, version: str, pyfunc, check_files,
                    formats: tuple[str, ...] | None = None) -> None:
    """The new champion's network as ONNX and TFLite in its run's `export/`, with parity
    (on validation images) and size as run metrics; a failed export is tagged on the
    version, and does not undo a promotion that is already made."""
    import tempfile

    from leukoml.serving.export import DEFAULT_FORMATS, export_metrics, export_served

    formats = formats or DEFAULT_FORMATS
    client = MlflowClient()
    with tempfile.TemporaryDirectory(prefix="leukoml-export-") as folder:
        try:
            summary = export_served(pyfunc.unwrap_python_model(), folder, formats,
                                    [path.read_bytes() for path in check_files])
        except Exception as exc:
            log.warning("%s version %s: export failed: %s", model_name, version, exc)
            client.set_model_version_tag(model_name, version, names.TAG_EXPORT,
                                         f"failed: {type(exc).__name__}: {exc}"[:1000])
            return
        client.log_artifacts(run_id, folder, names.EXPORT_DIR)
    for key, value in export_metrics(summary).items():
        client.log_metric(run_id, key, value)
    client.set_model_version_tag(model_name, version, names.TAG_EXPORT,
                                 f"{','.join(formats)} in runs:/{run_id}/"
                                 f"{names.EXPORT_DIR} (parity on {summary['parity_checked_on']})")


def _decide(
    client: MlflowClient, model_name: str, version: str, run_id: str, previous: str | None,
    test: EvalImages, candidate_labels: list[str], force: bool,
) -> PromotionResult:
    def result(promoted: bool, reason: str, candidate_f1: float, champion_f1: float | None = None,
               n: int = len(test.files), difference=None) -> PromotionResult:
        if force and not promoted:
            promoted, reason = True, f"forced; without force: {reason}"
        return PromotionResult(
            model_name, version, run_id, promoted, version if promoted else previous, previous,
            candidate_f1, champion_f1, n, reason, difference,
        )

    full_f1 = macro_f1(test.labels, candidate_labels, test.class_names)
    if previous is None:
        return result(True, f"no champion yet; test macro-F1 {full_f1:.4f} on "
                            f"{len(test.files)} images", full_f1)
    champion_uri = _version_uri(model_name, previous)
    champion_classes = serving_config(champion_uri, "champion").class_names
    if sorted(champion_classes) != sorted(test.class_names):
        return result(False, f"not comparable: champion version {previous} classifies "
                             f"{champion_classes}, the candidate {test.class_names}", full_f1)

    # Score both only on images the champion never trained on, if its split can be rebuilt.
    champion_run = client.get_model_version(model_name, previous).run_id
    seen = seen_in_training(champion_run) if champion_run else None
    keep = [i for i, sha in enumerate(test.sha256) if not seen or sha not in seen]
    if not keep:
        return result(False, f"not comparable: champion version {previous} trained on all "
                             f"{len(test.files)} test images of the candidate", full_f1)
    champion = mlflow.pyfunc.load_model(champion_uri)
    true = _indices([test.labels[i] for i in keep], test.class_names)
    mine = _indices([candidate_labels[i] for i in keep], test.class_names)
    theirs = _indices(predict_labels(champion, [test.files[i] for i in keep]), test.class_names)
    difference = paired_difference(true, mine, theirs, test.groups[keep],
                                   len(test.class_names))
    candidate_f1, champion_f1 = difference.a, difference.b
    scores = (f"test macro-F1 {candidate_f1:.4f} vs champion version {previous}'s "
              f"{champion_f1:.4f} on {len(keep)} images, difference {difference.value:+.4f} "
              f"95% CI {difference.interval} "
              + ("(distinguishable)" if difference.distinguishable else "(not distinguishable)"))
    if len(keep) < len(test.files):
        scores += f"; {len(test.files) - len(keep)} images the champion trained on left out"
    if candidate_f1 > champion_f1:
        return result(True, f"better: {scores}", candidate_f1, champion_f1, len(keep), difference)
    verdict = ("a tie keeps the champion" if candidate_f1 == champion_f1
               else "worse" if difference.distinguishable else "not better")
    return result(False, f"{verdict}: {scores}", candidate_f1, champion_f1, len(keep), difference)

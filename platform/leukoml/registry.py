"""Promote a training run into the Model Registry: `candidate` always, `champion` if better.

Aliases only: registry stages are deprecated in MLflow 3. The champion moves
only when the candidate scores a higher test macro-F1 than the current
champion on the same test images and the same classes, both models scored
through their served pyfuncs on the raw image files (each applies its own
preprocessing and input size). The read-evaluate-set sequence runs under a
lock, so two racing promotions cannot leave the worse model as champion.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from leukoml import names
from leukoml.data import cache_root, prepare_dataset
from leukoml.errors import LeukomlError
from leukoml.evaluate import evaluate_predictions
from leukoml.serving import (
    INPUT_COLUMN,
    LABEL_COLUMN,
    encode_image,
    run_tags,
    serving_model_uri,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "wbc-classifier"
CANDIDATE = "candidate"
CHAMPION = "champion"
LOCK_TIMEOUT = 3600.0  # seconds; a promotion evaluates two models on a test set
# Split params the data layer may log; passed back to `prepare_dataset` when present.
DROP_CROSS_SPLIT_DUPLICATES = "drop_cross_split_duplicates"
TAG_DECISION = "leukoml.promotion.decision"  # "champion" or "not promoted"
TAG_REASON = "leukoml.promotion.reason"
TAG_CANDIDATE_F1 = "leukoml.promotion.candidate_macro_f1"
TAG_CHAMPION_F1 = "leukoml.promotion.champion_macro_f1"
TAG_COMPARED_WITH = "leukoml.promotion.compared_with_version"
TAG_EVAL_IMAGES = "leukoml.promotion.eval_images"
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

    def tags(self) -> dict[str, str]:
        """The decision as model-version tags."""
        values = {
            TAG_DECISION: "champion" if self.promoted else "not promoted",
            TAG_REASON: self.reason,
            TAG_CANDIDATE_F1: f"{self.candidate_f1:.6f}",
            TAG_CHAMPION_F1: None if self.champion_f1 is None else f"{self.champion_f1:.6f}",
            TAG_COMPARED_WITH: self.previous_champion,
            TAG_EVAL_IMAGES: str(self.eval_images),
        }
        return {k: v for k, v in values.items() if v is not None}


# --- the lock -----------------------------------------------------------------


def promotion_lock(
    lock_url: str | None = None, model_name: str = DEFAULT_MODEL_NAME,
    timeout: float = LOCK_TIMEOUT,
):
    """A context manager holding the promotion lock of `model_name`.

    `postgresql://...`: a PostgreSQL advisory lock (shared by every host using
    that database). `sqlite:///path` or a file path (e.g. an Optuna journal):
    an fcntl lock on a file beside it. None: an fcntl lock in the leukoml
    cache dir, which serialises promotions on this machine only.
    """
    scheme = lock_url.partition("://")[0].split("+")[0].lower() if lock_url else ""
    if scheme in ("postgresql", "postgres"):
        return _advisory_lock(lock_url, model_name, timeout)
    return _file_lock(lock_path(lock_url, model_name), timeout)


def lock_path(lock_url: str | None, model_name: str) -> Path:
    """The lock file for `lock_url` (see `promotion_lock`)."""
    stem = "promote-" + re.sub(r"[^A-Za-z0-9_.-]", "_", model_name) + ".lock"
    if not lock_url:
        return cache_root() / "locks" / stem
    if lock_url.startswith("sqlite:///") and lock_url != "sqlite:///:memory:":
        beside = Path(lock_url[len("sqlite:///"):])
    elif "://" in lock_url:
        raise LeukomlError(
            f"lock_url: unsupported scheme in {lock_url.partition('://')[0]}://...; use "
            "postgresql://..., sqlite:///path, a file path, or nothing for the cache dir"
        )
    else:
        beside = Path(lock_url)
    beside = beside.expanduser()
    return beside.parent / f"{beside.name}.{stem}"


def _wait_for(try_acquire: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    pause = 0.05
    while not try_acquire():
        if time.monotonic() > deadline:
            raise LeukomlError(
                f"the promotion lock ({what}) is still held after {timeout:.0f} s: "
                "another promotion is running or hung"
            )
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


@contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    # flock locks belong to the open file, so threads of one process exclude each other too.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:

        def try_acquire() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        _wait_for(try_acquire, timeout, str(path))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def advisory_key(model_name: str) -> int:
    """A signed 64-bit PostgreSQL advisory-lock key for `model_name`."""
    digest = hashlib.sha256(f"leukoml.promote:{model_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _advisory_lock(url: str, model_name: str, timeout: float) -> Iterator[None]:
    # Session-level: held while this connection lives, released at close even on a crash.
    import importlib.util

    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url.replace("postgres://", "postgresql://", 1))
    if "+" not in parsed.drivername:  # SQLAlchemy 2.1 would insist on psycopg 3
        driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
        parsed = parsed.set(drivername=f"postgresql+{driver}")
    engine = sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.pool.NullPool)
    key = advisory_key(model_name)
    where = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            _wait_for(
                lambda: bool(conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"),
                                          {"k": key}).scalar()),
                timeout, f"advisory lock {key} on {where}",
            )
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


# --- the test data both models are scored on ------------------------------------------


@dataclass
class EvalImages:
    files: list[Path]
    labels: list[str]  # true class name per file
    class_names: list[str]
    sha256: list[str]


def _split_data(run: mlflow.entities.Run):
    """The run's dataset, decoded and split as in training, from its params."""
    params = run.data.params
    missing = [k for k in ("data", names.IMAGE_SIZE, names.SEED) if k not in params]
    if missing:
        raise LeukomlError(
            f"run {run.info.run_id} has no param(s) {missing}: cannot rebuild its split"
        )
    # The resolved folder, unless it is gone (e.g. a synthetic set in another cache dir).
    dataset = params.get(names.DATASET)
    source = dataset if dataset and Path(dataset).is_dir() else params["data"]
    options: dict[str, object] = {}  # only what the run set, so older runs rebuild as before
    if params.get(names.GROUP_BY, "none").lower() not in ("", "none"):
        options[names.GROUP_BY] = params[names.GROUP_BY]
    if params.get(DROP_CROSS_SPLIT_DUPLICATES, "false").lower() == "true":
        options[DROP_CROSS_SPLIT_DUPLICATES] = True
    data = prepare_dataset(source, int(float(params[names.IMAGE_SIZE])),
                           seed=int(float(params[names.SEED])), **options)
    if data.fingerprint != params.get(names.DATASET_FINGERPRINT):
        log.warning("run %s: dataset %s changed since training (fingerprint %s, now %s)",
                    run.info.run_id, source, params.get(names.DATASET_FINGERPRINT),
                    data.fingerprint)
    return data


def eval_images(run: mlflow.entities.Run) -> EvalImages:
    """The raw files of the run's test split, as `prepare_dataset` rebuilds it."""
    data = _split_data(run)
    idx = data.splits["test"]
    return EvalImages(
        files=[data.root / data.files[i] for i in idx],
        labels=[data.class_names[data.labels[i]] for i in idx],
        class_names=list(data.class_names),
        sha256=[data.decoded.sha256[i] for i in idx],
    )


def seen_in_training(run: mlflow.entities.Run) -> set[str] | None:
    """SHA-256 of the images a run trained or early-stopped on; None if it cannot be rebuilt."""
    try:
        data = _split_data(run)
    except LeukomlError as exc:
        log.warning("cannot rebuild the split of run %s (%s): its training images are "
                    "not excluded from the comparison", run.info.run_id, exc)
        return None
    seen = np.concatenate([data.splits["train"], data.splits["val"]])
    return {data.decoded.sha256[i] for i in seen}


def predict_labels(model: mlflow.pyfunc.PyFuncModel, files: list[Path]) -> list[str]:
    """Labels the served pyfunc gives the raw files: base64 bytes in, as over HTTP."""
    labels: list[str] = []
    for start in range(0, len(files), _EVAL_BATCH):
        chunk = files[start:start + _EVAL_BATCH]
        frame = pd.DataFrame({INPUT_COLUMN: [encode_image(p.read_bytes()) for p in chunk]})
        labels.extend(model.predict(frame)[LABEL_COLUMN].tolist())
    return labels


def macro_f1(true: list[str], predicted: list[str], class_names: list[str]) -> float:
    """Test macro-F1 exactly as training computes it."""
    index = {name: i for i, name in enumerate(class_names)}
    evaluation = evaluate_predictions(
        [index[t] for t in true], [index[p] for p in predicted], class_names
    )
    return evaluation.metrics[names.TEST_MACRO_F1]


# --- promotion ------------------------------------------------------------------


def _version_uri(model_name: str, version: str) -> str:
    return f"models:/{model_name}/{version}"


def _class_names(model: mlflow.pyfunc.PyFuncModel) -> list[str]:
    return json.loads(model.metadata.flavors["python_function"]["config"][names.CLASS_NAMES])


def promote(
    run_id: str,
    model_name: str = DEFAULT_MODEL_NAME,
    force: bool = False,
    lock_url: str | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
) -> PromotionResult:
    """Register run `run_id`'s served model as a new version; make it champion if it is better.

    The new version always gets alias `candidate`. `champion` moves to it when
    there is no champion, when it has a higher test macro-F1 than the champion
    on the candidate run's test images (minus any the champion trained on),
    or when `force`. Classes that differ make the scores incomparable: the
    champion stays unless `force`.
    """
    client = MlflowClient()
    run = client.get_run(run_id)
    source = serving_model_uri(run_id)
    version = str(mlflow.register_model(source, model_name, tags=run_tags(run)).version)
    client.set_registered_model_alias(model_name, CANDIDATE, version)
    log.info("run %s registered as %s version %s (alias %s)", run_id, model_name, version,
             CANDIDATE)

    # The candidate's scores do not depend on the champion: compute them before waiting.
    test = eval_images(run)
    candidate = mlflow.pyfunc.load_model(_version_uri(model_name, version))
    candidate_labels = predict_labels(candidate, test.files)

    with promotion_lock(lock_url, model_name, lock_timeout):
        # Read the champion only now: it may have moved while this waited for the lock.
        previous = client.get_registered_model(model_name).aliases.get(CHAMPION)
        previous = None if previous is None else str(previous)
        result = _decide(client, model_name, version, run_id, previous, test, candidate_labels,
                         force)
        if result.promoted:
            client.set_registered_model_alias(model_name, CHAMPION, version)
        for key, value in result.tags().items():
            client.set_model_version_tag(model_name, version, key, value)
    log.info("%s version %s %s: %s", model_name, version,
             "is the champion" if result.promoted else f"not promoted (champion stays "
             f"version {result.champion_version})", result.reason)
    return result


def _decide(
    client: MlflowClient, model_name: str, version: str, run_id: str, previous: str | None,
    test: EvalImages, candidate_labels: list[str], force: bool,
) -> PromotionResult:
    def result(promoted: bool, reason: str, candidate_f1: float, champion_f1: float | None = None,
               n: int = len(test.files)) -> PromotionResult:
        if force and not promoted:
            promoted, reason = True, f"forced; without force: {reason}"
        return PromotionResult(
            model_name, version, run_id, promoted, version if promoted else previous, previous,
            candidate_f1, champion_f1, n, reason,
        )

    full_f1 = macro_f1(test.labels, candidate_labels, test.class_names)
    if previous is None:
        return result(True, f"no champion yet; test macro-F1 {full_f1:.4f} on "
                            f"{len(test.files)} images", full_f1)
    champion = mlflow.pyfunc.load_model(_version_uri(model_name, previous))
    champion_classes = _class_names(champion)
    if sorted(champion_classes) != sorted(test.class_names):
        return result(False, f"not comparable: champion version {previous} classifies "
                             f"{champion_classes}, the candidate {test.class_names}", full_f1)

    # Score both only on images the champion never trained on, if its split can be rebuilt.
    champion_run = client.get_model_version(model_name, previous).run_id
    seen = seen_in_training(client.get_run(champion_run)) if champion_run else None
    keep = [i for i, sha in enumerate(test.sha256) if not seen or sha not in seen]
    if not keep:
        return result(False, f"not comparable: champion version {previous} trained on all "
                             f"{len(test.files)} test images of the candidate", full_f1)
    true = [test.labels[i] for i in keep]
    candidate_f1 = macro_f1(true, [candidate_labels[i] for i in keep], test.class_names)
    champion_f1 = macro_f1(true, predict_labels(champion, [test.files[i] for i in keep]),
                           test.class_names)
    scores = (f"test macro-F1 {candidate_f1:.4f} vs champion version {previous}'s "
              f"{champion_f1:.4f} on {len(keep)} images")
    if len(keep) < len(test.files):
        scores += f" ({len(test.files) - len(keep)} the champion trained on left out)"
    if candidate_f1 > champion_f1:
        return result(True, f"better: {scores}", candidate_f1, champion_f1, len(keep))
    return result(False, f"not better (a tie keeps the champion): {scores}", candidate_f1,
                  champion_f1, len(keep))

"""The served model: base64 image files in, class probabilities out.

A `mlflow.pyfunc` model that carries the trained Keras model, the exact
preprocessing of training (`leukoml.data.decode_image`, then the backbone's
`preprocess_input`) and the class names, so a caller sends image files, not
tensors, and `mlflow models serve` needs nothing but this model. The leukoml
package travels with it (`code_paths`), so it imports in any environment.
"""

from __future__ import annotations

import base64
import binascii
import html
import importlib.metadata
import json
import logging
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema

import leukoml
from leukoml import names
from leukoml.data import MAX_PIXELS, ImageError, decode_image
from leukoml.errors import LeukomlError

log = logging.getLogger(__name__)

SERVING_MODEL = "serving_model"  # name of the pyfunc logged in the training run
INPUT_COLUMN = "image"
LABEL_COLUMN = "label"
CONFIDENCE_COLUMN = "confidence"
PROB_PREFIX = "prob_"
KERAS_ARTIFACT = "keras_model"
# Model-version / logged-model tags beyond the names.* params they copy.
TAG_STUDY = "study"
TAG_TRIAL = "trial"
TAG_SOURCE_RUN = "source_run_id"
_REQUIREMENTS = ("mlflow", "tensorflow", "keras", "numpy", "pandas", "pillow", "scikit-learn",
                 "cloudpickle")
_MODEL_CODE = """\
import mlflow

from leukoml.serving import LeukocyteClassifier

mlflow.models.set_model(LeukocyteClassifier())
"""
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Limits:
    """Per-request guards, kept in the pyfunc's model config.

    Override them when serving with MLflow's inference config, e.g.
    `MLFLOW_PYFUNC_INFERENCE_CONFIG='{"max_image_bytes": 5000000}' mlflow models serve ...`.
    (MLflow also logs the model config as params of the training run.)
    """

    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = MAX_PIXELS  # decompression bombs are refused before decoding
    max_batch: int = 256  # one Keras batch: bounds the memory of one request


class RequestError(MlflowException):
    """A bad request (HTTP 400) whose message names the problem and the row, never the payload.

    `mlflow models serve` rewrites the message of an MlflowException raised in
    `predict` to quote the whole request DataFrame ("Failed to predict data
    '...'"), echoing the caller's payload back. This message is set once and
    keeps its text.
    """

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


def probability_column(class_name: str) -> str:
    return PROB_PREFIX + names.safe(class_name)


def output_columns(class_names: list[str]) -> list[str]:
    """`label`, `confidence`, then one `prob_<class>` per class; distinct or an error."""
    columns = [probability_column(c) for c in class_names]
    if len(set(columns)) != len(columns):
        raise LeukomlError(f"class_names: {class_names} map to clashing columns {columns}")
    return [LABEL_COLUMN, CONFIDENCE_COLUMN, *columns]


def signature(class_names: list[str]) -> ModelSignature:
    # `image` is optional in the schema so a request without it reaches
    # `predict`, which names the problem without quoting the request.
    outputs = [ColSpec("string", LABEL_COLUMN)] + [
        ColSpec("double", c) for c in output_columns(class_names)[1:]
    ]
    return ModelSignature(Schema([ColSpec("string", INPUT_COLUMN, required=False)]),
                          Schema(outputs))


def encode_image(data: bytes) -> str:
    """The request form of an image file: its bytes in base64."""
    return base64.b64encode(data).decode("ascii")


def _image_bytes(row: int, value: object, limits: Limits) -> bytes:
    if not isinstance(value, str) or not value:
        missing = value is None or value == "" or (isinstance(value, float) and value != value)
        kind = "nothing" if missing else type(value).__name__
        raise RequestError(f"row {row}: column 'image' must hold a base64 string, got {kind}")
    text = _WHITESPACE.sub("", _DATA_URL.sub("", value, count=1))
    if len(text) * 3 // 4 > limits.max_image_bytes + 2:
        raise RequestError(
            f"row {row}: image of about {len(text) * 3 // 4:,} bytes is over the limit of "
            f"{limits.max_image_bytes:,} bytes"
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"row {row}: column 'image' is not valid base64") from None


def decode_request(frame: object, image_size: int, limits: Limits) -> np.ndarray:
    """A request DataFrame -> (n, size, size, 3) uint8, or a `RequestError` naming the row."""
    if not isinstance(frame, pd.DataFrame):
        raise RequestError("send a DataFrame with a string column 'image' of base64 image files")
    # MLflow's schema check drops unknown columns, so a request without `image`
    # arrives as an empty frame: the message covers both cases.
    if INPUT_COLUMN not in frame.columns:
        raise RequestError("missing column 'image' (or an empty batch): send one "
                           "base64-encoded image file per row in column 'image'")
    if len(frame) == 0:
        raise RequestError("empty batch: send at least one image in column 'image'")
    if len(frame) > limits.max_batch:
        raise RequestError(f"batch of {len(frame)} images is over the limit of {limits.max_batch}")
    batch = np.empty((len(frame), image_size, image_size, 3), np.uint8)
    for row, value in enumerate(frame[INPUT_COLUMN].tolist()):
        data = _image_bytes(row, value, limits)
        try:
            batch[row] = decode_image(data, image_size, max_pixels=limits.max_image_pixels)
        except ImageError as exc:
            # PIL's reasons can quote a few header bytes: escape and bound them.
            raise RequestError(f"row {row}: {html.escape(str(exc))[:200]}") from None
    return batch


class LeukocyteClassifier(mlflow.pyfunc.PythonModel):
    """The pyfunc: decode, preprocess and classify a batch of image files as one Keras batch.

    After loading it also serves Grad-CAM: `keras_model`, `backbone`,
    `class_names`, `image_size` and `model_input(images)`.
    """

    def load_context(self, context) -> None:
        import keras
        import tensorflow as tf

        from leukoml.backbones.classifier import preprocess_fn

        config = context.model_config
        self.backbone = config[names.BACKBONE]
        self.image_size = int(float(config[names.IMAGE_SIZE]))
        self.class_names = json.loads(config[names.CLASS_NAMES])
        self.limits = Limits(**{k: int(config[k]) for k in asdict(Limits()) if k in config})
        self.columns = output_columns(self.class_names)
        self.keras_model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)
        self._preprocess = preprocess_fn(self.backbone)
        # One graph for every batch size, traced here rather than in the first
        # request (Keras' predict_on_batch retraces per new batch size).
        size = self.image_size
        self._forward = tf.function(
            lambda x: self.keras_model(x, training=False),
            input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
        )
        self.probabilities(np.zeros((1, self.image_size, self.image_size, 3), np.uint8))

    def model_input(self, pixels: np.ndarray) -> np.ndarray:
        """Decoded uint8 RGB images -> the Keras model's input, as in training."""
        return np.asarray(self._preprocess(pixels.astype(np.float32)), dtype=np.float32)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        probs = np.asarray(self._forward(self.model_input(pixels)), np.float64)
        return probs / probs.sum(axis=1, keepdims=True)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        probs = self.probabilities(decode_request(model_input, self.image_size, self.limits))
        best = probs.argmax(axis=1)
        frame = pd.DataFrame(probs, columns=self.columns[2:])
        frame.insert(0, CONFIDENCE_COLUMN, probs[np.arange(len(probs)), best])
        frame.insert(0, LABEL_COLUMN, [self.class_names[i] for i in best])
        return frame


def load_served_model(model_uri: str) -> LeukocyteClassifier:
    """The loaded pyfunc behind any `models:/...` or `runs:/...` URI of a served leukoml model."""
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    try:
        model = pyfunc.unwrap_python_model()
    except MlflowException:  # another flavor, e.g. the run's plain Keras `model`
        model = None
    if not isinstance(model, LeukocyteClassifier):
        raise LeukomlError(f"{model_uri} is not a leukoml serving model "
                           f"(flavor {pyfunc.loader_module})")
    return model


def _requirements() -> list[str]:
    return [f"{p}=={importlib.metadata.version(p)}" for p in _REQUIREMENTS]


def _input_example(image_size: int) -> pd.DataFrame:
    """One synthetic cell as a PNG: a real request, with no patient image in the artifact."""
    import io

    from PIL import Image

    from leukoml.data import SYNTHETIC_CLASSES, render_cell

    buffer = io.BytesIO()
    Image.fromarray(render_cell(SYNTHETIC_CLASSES[0], max(image_size, 32), 0)).save(buffer, "PNG")
    return pd.DataFrame({INPUT_COLUMN: [encode_image(buffer.getvalue())]})


def run_tags(run: mlflow.entities.Run) -> dict[str, str]:
    """What a model version should say about its training run: study, trial, data, scores."""
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    values = {
        TAG_SOURCE_RUN: run.info.run_id,
        TAG_STUDY: tags.get(names.TAG_OPTUNA_STUDY) or tags.get(names.TAG_STUDY_NAME),
        TAG_TRIAL: tags.get(names.TAG_OPTUNA_TRIAL),
        names.BACKBONE: params.get(names.BACKBONE),
        names.IMAGE_SIZE: params.get(names.IMAGE_SIZE),
        names.DATASET_FINGERPRINT: params.get(names.DATASET_FINGERPRINT),
        names.CLASS_NAMES: params.get(names.CLASS_NAMES),
        **{k: metrics.get(k) for k in names.TEST_SUMMARY},
    }
    return {k: str(v) for k, v in values.items() if v is not None}


def run_config(run: mlflow.entities.Run) -> dict[str, str]:
    """Backbone, image size and class names as the run logged them, or an error naming the param.

    Kept as the run's own strings: MLflow logs a pyfunc's model config as
    params of its run, and identical values make that a no-op.
    """
    params = run.data.params
    for key in (names.BACKBONE, names.IMAGE_SIZE, names.CLASS_NAMES):
        if key not in params:
            raise LeukomlError(
                f"run {run.info.run_id} has no param {key!r}: not a leukoml training run"
            )
    return {key: params[key] for key in (names.BACKBONE, names.IMAGE_SIZE, names.CLASS_NAMES)}


def find_serving_model(run_id: str) -> str | None:
    """The `models:/<id>` URI of the newest pyfunc already logged for `run_id`, if any."""
    from mlflow.entities import LoggedModelStatus

    run = mlflow.get_run(run_id)
    found = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"name = '{SERVING_MODEL}' AND source_run_id = '{run_id}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        output_format="list",
    )
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    return ready[0].model_uri if ready else None


def log_serving_model(run_id: str) -> str:
    """Log the pyfunc of finished training run `run_id` into that run; returns its model URI.

    The run's `model` artifact (Keras) becomes the pyfunc's artifact; its
    params give backbone, image size and class names.
    """
    from mlflow.models import Model

    run = mlflow.get_run(run_id)
    config = run_config(run)
    image_size = int(float(config[names.IMAGE_SIZE]))
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            f"runs:/{run_id}/{names.MODEL_ARTIFACT}", dst_path=tmp
        )
        keras_files = sorted(Path(local).rglob("*.keras"))
        if not keras_files:
            raise LeukomlError(f"run {run_id}: its '{names.MODEL_ARTIFACT}' holds no .keras file")
        # Models from code: the model is this one import, not a pickle.
        code = Path(tmp) / "leukoml_serving_model.py"
        code.write_text(_MODEL_CODE)
        # Model.log, not pyfunc.log_model: it takes the run id, so the pyfunc joins
        # the training run even when another run is active (e.g. a study's); the
        # logged model is created first to place it in the run's experiment.
        model = mlflow.initialize_logged_model(
            name=SERVING_MODEL, source_run_id=run_id, experiment_id=run.info.experiment_id,
            params=run.data.params, tags=run_tags(run),
        )
        info = Model.log(
            artifact_path=None,
            name=SERVING_MODEL,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=model.model_id,
            python_model=str(code),
            artifacts={KERAS_ARTIFACT: str(keras_files[0])},
            model_config={**config, **asdict(Limits())},
            code_paths=[str(Path(leukoml.__file__).parent)],
            signature=signature(json.loads(config[names.CLASS_NAMES])),
            input_example=_input_example(image_size),
            pip_requirements=_requirements(),
        )
    log.info("logged the serving model of run %s as %s", run_id, info.model_uri)
    return info.model_uri


def serving_model_uri(run_id: str) -> str:
    """The pyfunc of `run_id`: the one logged before, else a new one."""
    return find_serving_model(run_id) or log_serving_model(run_id)

"""What ships inside a served model: decode, resize, predict; base64 files in, probabilities out.

`LeukocyteClassifier` is the `mlflow.pyfunc` model. It carries the trained
Keras model (which scales its own input), the decoding of training
(`leukoml.data.decode_image`) and the class names, so a caller sends image
files, not tensors, and `mlflow models serve` needs nothing but this model.
How it is packaged and logged lives in `leukoml.serving.package`.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import logging
import re
from dataclasses import asdict, dataclass, field

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from leukoml import names
from leukoml.data import MAX_PIXELS, ImageError, decode_image
from leukoml.errors import LeukomlError

log = logging.getLogger(__name__)

INPUT_COLUMN = "image"
LABEL_COLUMN = "label"
CONFIDENCE_COLUMN = "confidence"
LOW_CONFIDENCE_COLUMN = "low_confidence"  # calibrated confidence below the model's threshold
PROB_PREFIX = "prob_"
KERAS_ARTIFACT = "keras_model"
CONFIG_ARTIFACT = "serving_config"


MIN_CONFIDENCE = 0.5  # below this calibrated confidence a prediction is flagged


@dataclass(frozen=True)
class Member:
    """One Keras model of a served model, and how it reads an image."""

    backbone: str
    image_size: int
    crop: str = "none"  # decoding, as in training
    tta: str = "none"  # test-time views averaged: none, flips, dihedral
    temperature: float = 1.0  # fitted on validation: its probabilities are calibrated


@dataclass(frozen=True)
class ServingConfig:
    """What the served model needs beside its weights; stored with it as JSON and metadata.

    One member is a trained model; several are an ensemble whose calibrated
    probabilities are averaged, then scaled by `temperature` (fitted on validation).
    """

    class_names: list[str]
    members: tuple[Member, ...]
    temperature: float = 1.0
    min_confidence: float = MIN_CONFIDENCE
    # what the model scored on its own test split, for `-e evaluate`'s verdict
    test_scores: dict = field(default_factory=dict)

    @property
    def backbone(self) -> str:
        return "+".join(m.backbone for m in self.members)

    @property
    def image_size(self) -> int:
        return self.members[0].image_size

    def describe(self) -> str:
        """How the served probabilities are made, for captions: `8 views, temperature 1.30`."""
        from leukoml.data.augment import TTA_VIEWS

        def made(m: Member) -> str:
            n = TTA_VIEWS[m.tta]
            return f"{n} view{'s' if n > 1 else ''}, temperature {m.temperature:.2f}"

        if len(self.members) == 1:
            return made(self.members[0])
        return (f"ensemble of {len(self.members)} ("
                + "; ".join(f"{m.backbone} {made(m)}" for m in self.members)
                + f"), temperature {self.temperature:.2f}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "ServingConfig":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in raw.items() if k in known}
        values["members"] = tuple(Member(**m) for m in raw["members"])
        return cls(**values)


def keras_artifact(index: int) -> str:
    return f"{KERAS_ARTIFACT}_{index}"


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
    """`label`, `confidence`, `low_confidence`, then one `prob_<class>` per class."""
    columns = [probability_column(c) for c in class_names]
    if len(set(columns)) != len(columns):
        raise LeukomlError(f"class_names: {class_names} map to clashing columns {columns}")
    return [LABEL_COLUMN, CONFIDENCE_COLUMN, LOW_CONFIDENCE_COLUMN, *columns]


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


def request_images(frame: object, limits: Limits) -> list[bytes]:
    """A request DataFrame -> the image files' bytes, or a `RequestError` naming the row."""
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
    return [_image_bytes(row, value, limits) for row, value in
            enumerate(frame[INPUT_COLUMN].tolist())]


def decode_files(files: list[bytes], member: Member, limits: Limits,
                 unreadable: dict[int, str] | None = None) -> np.ndarray:
    """(n, size, size, 3) uint8 as `member` reads them, or a `RequestError` naming the row.

    Given `unreadable`, a file that cannot be read is noted there (row -> reason) and its
    row left black instead: callers that skip bad files (explain, evaluate) decode once."""
    size = member.image_size
    batch = np.zeros((len(files), size, size, 3), np.uint8)
    for row, data in enumerate(files):
        try:
            batch[row] = decode_image(data, size, max_pixels=limits.max_image_pixels,
                                      crop=member.crop)
        except ImageError as exc:
            # PIL's reasons can quote a few header bytes: escape and bound them.
            reason = html.escape(str(exc))[:200]
            if unreadable is None:
                raise RequestError(f"row {row}: {reason}") from None
            unreadable.setdefault(row, reason)
    return batch


def served_probabilities(forward, pixels, tta: str = "none", temperature: float = 1.0):
    """What the served model answers: `forward` (a Keras model or its traced call) averaged
    over the `tta` views, then temperature-scaled. Training evaluates through this too."""
    import tensorflow as tf

    from leukoml.data.augment import TTA_VIEWS, dihedral_view
    from leukoml.evaluation.calibration import with_temperature

    x = tf.convert_to_tensor(np.asarray(pixels, np.float32))
    views = TTA_VIEWS[tta]
    probs = sum(np.asarray(forward(dihedral_view(x, k)), np.float64) for k in range(views))
    probs = probs / views
    probs = probs / probs.sum(axis=1, keepdims=True)
    return with_temperature(probs, temperature) if temperature != 1.0 else probs


@dataclass(frozen=True)
class Answer:
    """The served model's answer for a batch of files, and the images it looked at."""

    probabilities: np.ndarray  # (n, classes): calibrated, over every view (and member)
    pixels: tuple[np.ndarray, ...]  # per member, (n, size, size, 3) uint8: the original view
    rows: np.ndarray  # the position in the batch of each answered file
    unreadable: dict[int, str] = field(default_factory=dict)  # position -> why it was skipped

    @property
    def labels(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1) if len(self.probabilities) else np.zeros(0)


class LeukocyteClassifier(mlflow.pyfunc.PythonModel):
    """The pyfunc: decode and classify a batch of image files, one Keras call per view.

    After loading it also serves Grad-CAM and evaluation: `config`, `class_names`,
    `read(files)`, and for the first (or only) member
    `keras_model`, `backbone`, `image_size` and `probabilities(pixels)`.
    """

    def load_context(self, context) -> None:
        import keras
        import tensorflow as tf

        with open(context.artifacts[CONFIG_ARTIFACT]) as handle:
            self.config = ServingConfig.from_dict(json.load(handle))
        self.class_names = list(self.config.class_names)
        limits = context.model_config or {}
        self.limits = Limits(**{k: int(limits[k]) for k in asdict(Limits()) if k in limits})
        self.columns = output_columns(self.class_names)
        self.keras_models, self._forwards = [], []
        for i, member in enumerate(self.config.members):
            model = keras.saving.load_model(context.artifacts[keras_artifact(i)], compile=False)
            size = member.image_size
            # One graph for every batch size, traced here rather than in the first request.
            self._forwards.append(tf.function(
                lambda x, model=model: model(x, training=False),
                input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)]))
            self.keras_models.append(model)
        first = self.config.members[0]
        self.keras_model, self.backbone, self.image_size = (
            self.keras_models[0], first.backbone, first.image_size)
        self._forward = self._forwards[0]
        self._member_probabilities(0, np.zeros((1, first.image_size, first.image_size, 3),
                                               np.uint8))

    def _member_probabilities(self, index: int, pixels: np.ndarray) -> np.ndarray:
        member = self.config.members[index]
        forward = self._forward if index == 0 else self._forwards[index]
        return served_probabilities(forward, pixels, member.tta, member.temperature)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of images decoded as the (only) member reads them."""
        if len(self.config.members) != 1:
            raise ValueError("an ensemble reads files: use read")
        return self._member_probabilities(0, pixels)

    def read(self, files: list[bytes], skip_unreadable: bool = False) -> Answer:
        """The one prediction path of serving, explain and evaluate: each member decodes and
        crops the files its way, averages its views and applies its temperature; an
        ensemble averages the members and applies its own. A file that cannot be read is a
        `RequestError` naming its row, or with `skip_unreadable` left out and named."""
        from leukoml.evaluation.calibration import with_temperature

        skipped: dict[int, str] = {}
        decoded = [decode_files(files, member, self.limits, skipped if skip_unreadable else None)
                   for member in self.config.members]
        rows = np.array([r for r in range(len(files)) if r not in skipped], np.int64)
        pixels = tuple(batch[rows] for batch in decoded)
        if not len(rows):
            return Answer(np.zeros((0, len(self.class_names))), pixels, rows, skipped)
        parts = [self._member_probabilities(i, batch) for i, batch in enumerate(pixels)]
        probs = sum(parts) / len(parts)
        if len(parts) > 1:
            probs = with_temperature(probs, self.config.temperature)
        return Answer(probs, pixels, rows, skipped)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        answer = self.read(request_images(model_input, self.limits))
        frame = pd.DataFrame(answer.probabilities, columns=self.columns[3:])
        confidence = answer.confidence
        frame.insert(0, LOW_CONFIDENCE_COLUMN, confidence < self.config.min_confidence)
        frame.insert(0, CONFIDENCE_COLUMN, confidence)
        frame.insert(0, LABEL_COLUMN, [self.class_names[i] for i in answer.labels])
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

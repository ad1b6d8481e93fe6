"""The serving room: what ships inside a served model (`runtime`) and how it is packaged
(`package`). May import data (decoding), evaluation (calibration), names and errors; never
training or study."""

from leukoml.serving.package import find_serving_model, log_serving_model, serving_config
from leukoml.serving.runtime import (
    CONFIDENCE_COLUMN,
    INPUT_COLUMN,
    LABEL_COLUMN,
    LOW_CONFIDENCE_COLUMN,
    LeukocyteClassifier,
    Limits,
    Member,
    RequestError,
    ServingConfig,
    encode_image,
    load_served_model,
    output_columns,
)

__all__ = [
    "CONFIDENCE_COLUMN",
    "INPUT_COLUMN",
    "LOW_CONFIDENCE_COLUMN",
    "LABEL_COLUMN",
    "LeukocyteClassifier",
    "Limits",
    "Member",
    "RequestError",
    "ServingConfig",
    "encode_image",
    "find_serving_model",
    "load_served_model",
    "log_serving_model",
    "output_columns",
    "serving_config",
]

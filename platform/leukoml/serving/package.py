"""How a served model is packaged: pyfunc wrapper, signature, input example, requirements.

`log_serving_model` runs at the end of training, inside the training run: the
run's one logged model is the pyfunc that `mlflow models serve` runs, with the
Keras model and `ServingConfig` (backbone, image size, classes, ...) as its
artifacts and the config copied into the MLmodel `metadata`, where the UI and
the registry read it without loading TensorFlow.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import leukoml
from leukoml import names
from leukoml.errors import LeukomlError, one_line
from leukoml.serving.runtime import (
    CONFIG_ARTIFACT,
    INPUT_COLUMN,
    Limits,
    ServingConfig,
    encode_image,
    keras_artifact,
    output_columns,
)

log = logging.getLogger(__name__)

_REQUIREMENTS = ("mlflow", "tensorflow", "keras", "numpy", "pandas", "pillow", "scikit-learn",
                 "cloudpickle")
_MODEL_CODE = """\
import mlflow

from leukoml.serving.runtime import LeukocyteClassifier

mlflow.models.set_model(LeukocyteClassifier())
"""
METADATA_KEY = "leukoml"


def signature(class_names: list[str]) -> ModelSignature:
    # `image` is optional in the schema so a request without it reaches
    # `predict`, which names the problem without quoting the request.
    label, confidence, low, *probabilities = output_columns(class_names)
    outputs = [ColSpec("string", label), ColSpec("double", confidence),
               ColSpec("boolean", low), *(ColSpec("double", c) for c in probabilities)]
    return ModelSignature(Schema([ColSpec("string", INPUT_COLUMN, required=False)]),
                          Schema(outputs))


def _requirements() -> list[str]:
    return [f"{p}=={importlib.metadata.version(p)}" for p in _REQUIREMENTS]


def _input_example(image_size: int) -> pd.DataFrame:
    """One synthetic cell as a PNG: a real request, with no patient image in the artifact."""
    from PIL import Image

    from leukoml.data import SYNTHETIC_CLASSES, render_cell

    buffer = io.BytesIO()
    Image.fromarray(render_cell(SYNTHETIC_CLASSES[0], max(image_size, 32), 0)).save(buffer, "PNG")
    return pd.DataFrame({INPUT_COLUMN: [encode_image(buffer.getvalue())]})


def serving_config(model_uri: str, field: str = "model_uri") -> ServingConfig:
    """The `ServingConfig` of a logged leukoml model, from its MLmodel metadata (no TensorFlow).
    A bad URI, alias or run id is one `LeukomlError` naming `field`, the option that gave it."""
    try:
        info = mlflow.models.get_model_info(model_uri)
    except Exception as exc:
        raise LeukomlError(f"{field}: cannot read model {model_uri}: {type(exc).__name__}: "
                           f"{one_line(exc)}") from None
    raw = (info.metadata or {}).get(METADATA_KEY)
    if not raw:
        raise LeukomlError(f"{field}: {model_uri} is not a leukoml serving model (no "
                           f"'{METADATA_KEY}' metadata)")
    return ServingConfig.from_dict(raw)


def log_serving_model(keras_models: list, config: ServingConfig,
                      name: str = names.MODEL_ARTIFACT) -> mlflow.models.model.ModelInfo:
    """Log the Keras models (one, or an ensemble's members) as the served pyfunc into the
    active run; returns its ModelInfo."""
    if len(keras_models) != len(config.members):
        raise ValueError(f"{len(keras_models)} models for {len(config.members)} members")
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {}
        for i, model in enumerate(keras_models):
            path = Path(tmp) / f"model_{i}.keras"
            model.save(path)
            artifacts[keras_artifact(i)] = str(path)
        config_file = Path(tmp) / "serving.json"
        config_file.write_text(json.dumps(config.to_dict(), indent=2))
        code = Path(tmp) / "leukoml_serving_model.py"
        code.write_text(_MODEL_CODE)  # models from code: the model is one import, not a pickle
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(code),
            artifacts={**artifacts, CONFIG_ARTIFACT: str(config_file)},
            model_config=asdict(Limits()),
            code_paths=[str(Path(leukoml.__file__).parent)],
            signature=signature(config.class_names),
            input_example=_input_example(config.image_size),
            pip_requirements=_requirements(),
            metadata={METADATA_KEY: config.to_dict()},
        )
    log.info("logged the serving model as %s", info.model_uri)
    return info


def find_serving_model(run_id: str) -> str:
    """The `models:/<id>` URI of the serving model training logged in run `run_id`."""
    from mlflow.entities import LoggedModelStatus

    run = mlflow.get_run(run_id)
    found = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"name = '{names.MODEL_ARTIFACT}' AND source_run_id = '{run_id}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        output_format="list",
    )
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    if not ready:
        raise LeukomlError(f"run {run_id} has no logged '{names.MODEL_ARTIFACT}': not a finished "
                           "leukoml training run")
    return ready[0].model_uri

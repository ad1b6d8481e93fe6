"""The served pyfunc, in process: same pixels as training, batched, and safe on bad input."""

from __future__ import annotations

import base64
import io
import json
import os
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import sqlite_store
from leukoml import names
from leukoml.config import TrainConfig
from leukoml.data import SYNTHETIC_CLASSES, decode_image, prepare_dataset, render_cell
from leukoml.errors import LeukomlError
from leukoml.serving import (
    INPUT_COLUMN,
    RequestError,
    load_served_model,
    log_serving_model,
    output_columns,
    run_config,
    serving_model_uri,
)

SIZE = 32
PROBS = [f"prob_{c}" for c in SYNTHETIC_CLASSES]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store and an experiment with its artifacts in tmp, for this module."""
    with sqlite_store(tmp_path_factory.mktemp("serving-store"), "serving") as store:
        yield store


@pytest.fixture(scope="module")
def served(store):
    """One tiny trained run, its serving pyfunc logged and loaded."""
    from leukoml.training import train_and_log

    config = TrainConfig(image_size=SIZE, max_epochs=2, augment=False)
    data = prepare_dataset(config.data, SIZE, seed=config.seed)
    with mlflow.start_run(experiment_id=store.experiment) as run:
        train_and_log(config, data)
    uri = log_serving_model(run.info.run_id)
    return SimpleNamespace(run_id=run.info.run_id, uri=uri, data=data,
                           pyfunc=mlflow.pyfunc.load_model(uri))


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_file(fmt: str = "PNG", mode: str = "RGB", size: tuple[int, int] = (64, 64),
               seed: int = 0) -> bytes:
    pixels = render_cell(SYNTHETIC_CLASSES[seed % 5], max(size), seed)[: size[1], : size[0]]
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def frame(*images: bytes | str) -> pd.DataFrame:
    return pd.DataFrame({INPUT_COLUMN: [i if isinstance(i, str) else encode(i) for i in images]})


def test_logged_with_signature_input_example_code_and_requirements(served):
    meta = mlflow.models.Model.load(served.uri)
    assert meta.signature.inputs.input_names() == [INPUT_COLUMN]
    assert meta.signature.inputs.inputs[0].type.name == "string"
    assert meta.signature.outputs.input_names() == ["label", "confidence", *PROBS]
    local = mlflow.artifacts.download_artifacts(served.uri)
    example = meta.load_input_example(local)
    assert list(example.columns) == [INPUT_COLUMN]
    assert served.pyfunc.predict(example)["label"].iloc[0] in SYNTHETIC_CLASSES
    assert os.path.isfile(os.path.join(local, "code", "leukoml", "serving.py"))
    requirements = open(os.path.join(local, "requirements.txt")).read()
    for package in ("tensorflow==", "keras==", "pillow==", "mlflow=="):
        assert package in requirements


def test_tags_name_the_run_data_and_scores(served):
    model = mlflow.get_logged_model(served.uri.removeprefix("models:/"))
    run = mlflow.get_run(served.run_id)
    assert model.source_run_id == served.run_id
    assert model.tags[names.BACKBONE] == "Asghar2022CNN"
    assert model.tags[names.DATASET_FINGERPRINT] == run.data.params[names.DATASET_FINGERPRINT]
    assert json.loads(model.tags[names.CLASS_NAMES]) == list(SYNTHETIC_CLASSES)
    assert float(model.tags[names.TEST_MACRO_F1]) == pytest.approx(
        run.data.metrics[names.TEST_MACRO_F1])


def test_the_logged_pyfunc_is_reused(served):
    assert serving_model_uri(served.run_id) == served.uri


def test_predictions_match_the_training_pipeline(served):
    """Raw files through the pyfunc == decode cache through training's tf.data feed."""
    from leukoml.backbones.classifier import preprocess_fn
    from leukoml.data.tfdata import make_dataset

    data = served.data
    test = data.splits["test"][:20]
    keras_model = mlflow.keras.load_model(f"runs:/{served.run_id}/{names.MODEL_ARTIFACT}",
                                          load_model_kwargs={"compile": False})
    feed = make_dataset(data.images, data.labels, test, 32, preprocess_fn("Asghar2022CNN"))
    expected = keras_model.predict(feed, verbose=0)
    files = [(data.root / data.files[i]).read_bytes() for i in test]
    got = served.pyfunc.predict(frame(*files))
    np.testing.assert_allclose(got[PROBS].to_numpy(), expected, atol=1e-5)
    assert got["label"].tolist() == [SYNTHETIC_CLASSES[k] for k in expected.argmax(axis=1)]


def test_output_is_label_confidence_and_probabilities_summing_to_one(served):
    out = served.pyfunc.predict(frame(*(image_file(seed=s) for s in range(4))))
    assert list(out.columns) == ["label", "confidence", *PROBS]
    probs = out[PROBS].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(out["confidence"], probs.max(axis=1))
    assert out["label"].tolist() == [SYNTHETIC_CLASSES[k] for k in probs.argmax(axis=1)]


def test_any_format_size_and_mode_is_classified_as_decode_image_sees_it(served):
    files = [image_file("JPEG"), image_file("PNG", "L"), image_file("PNG", "RGBA"),
             image_file("BMP"), image_file("TIFF"), image_file("PNG", size=(300, 180)),
             image_file("TIFF", "L", size=(50, 90))]
    model = served.pyfunc.unwrap_python_model()
    pixels = np.stack([decode_image(f, SIZE) for f in files])
    expected = model.keras_model.predict(model.model_input(pixels), verbose=0)
    out = served.pyfunc.predict(frame(*files))
    np.testing.assert_allclose(out[PROBS].to_numpy(), expected, atol=1e-5)


def test_data_url_prefix_and_line_breaks_are_accepted(served):
    data = image_file()
    encoded = encode(data)
    text = "data:image/png;base64," + "\n".join(
        encoded[i:i + 76] for i in range(0, len(encoded), 76))
    out = served.pyfunc.predict(frame(text, data))
    np.testing.assert_allclose(out.iloc[0][PROBS].to_numpy(float),
                               out.iloc[1][PROBS].to_numpy(float))


def test_a_batch_is_one_keras_call(served):
    model = served.pyfunc.unwrap_python_model()
    forward, calls = model._forward, []
    model._forward = lambda x: (calls.append(int(x.shape[0])), forward(x))[1]
    try:
        out = served.pyfunc.predict(frame(*(image_file(seed=s) for s in range(16))))
    finally:
        model._forward = forward
    assert calls == [16] and len(out) == 16


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buffer, "PNG")  # 64 Mpx in a few kB
    return buffer.getvalue()


INJECTED = "<script>alert(1)</script>"
BAD_REQUESTS = {
    "invalid base64": (lambda: frame(image_file(), image_file(), INJECTED),
                       "row 2: column 'image' is not valid base64"),
    "not an image": (lambda: frame(INJECTED.encode() * 3), "row 0: not an image"),
    "truncated image": (lambda: frame(image_file()[:120]), "row 0: truncated or corrupt"),
    "not a string": (lambda: pd.DataFrame({INPUT_COLUMN: [encode(image_file()), None]}),
                     "row 1: column 'image' must hold a base64 string"),
    "missing column": (lambda: pd.DataFrame({INJECTED: [encode(image_file())]}),
                       "missing column 'image'"),
    "empty batch": (lambda: pd.DataFrame({INPUT_COLUMN: pd.Series([], dtype=object)}),
                    "empty batch"),
    "too many pixels": (lambda: frame(_bomb()), "row 0: 8000x8000 px is over the limit"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_name_the_problem_and_never_echo_the_payload(served, case):
    make, expected = BAD_REQUESTS[case]
    with pytest.raises(RequestError) as caught:
        served.pyfunc.predict(make())
    error = caught.value
    assert expected in error.message
    assert "<script>" not in error.message and INJECTED.encode().hex() not in error.message
    assert error.get_http_status_code() == 400


def test_request_error_keeps_its_message_when_the_server_rewrites_it():
    error = RequestError("row 1: column 'image' is not valid base64")
    error.message = f"Failed to predict data '{INJECTED}'. \nError: {error.message}"
    assert json.loads(error.serialize_as_json())["message"] == (
        "row 1: column 'image' is not valid base64")


def test_limits_come_from_the_model_config_and_can_be_overridden(served):
    strict = mlflow.pyfunc.load_model(served.uri, model_config={"max_image_bytes": 2000,
                                                                "max_batch": 2})
    big = image_file(size=(200, 200))
    assert len(big) > 2000
    with pytest.raises(RequestError, match=r"row 0: image of about [\d,]+ bytes is over the "
                                           r"limit of 2,000 bytes"):
        strict.predict(frame(big))
    with pytest.raises(RequestError, match="batch of 3 images is over the limit of 2"):
        strict.predict(frame(*(image_file(seed=s) for s in range(3))))
    assert len(served.pyfunc.predict(frame(big))) == 1  # the default limits still hold


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_load_served_model_from_run_and_registry_uris(served):
    version = mlflow.register_model(served.uri, "serving-test").version
    for uri in (served.uri, f"runs:/{served.run_id}/serving_model",
                f"models:/serving-test/{version}"):
        model = load_served_model(uri)
        assert (model.backbone, model.image_size) == ("Asghar2022CNN", SIZE)
        assert model.class_names == list(SYNTHETIC_CLASSES)
        assert tuple(model.keras_model.input_shape) == (None, SIZE, SIZE, 3)
    with pytest.raises(LeukomlError, match="not a leukoml serving model"):
        load_served_model(f"runs:/{served.run_id}/{names.MODEL_ARTIFACT}")


def test_a_run_without_training_params_is_refused(store):
    with mlflow.start_run(experiment_id=store.experiment) as run:
        mlflow.log_param(names.BACKBONE, "Asghar2022CNN")
    with pytest.raises(LeukomlError, match="has no param 'image_size'"):
        run_config(mlflow.get_run(run.info.run_id))


def test_class_names_that_clash_as_columns_are_refused():
    with pytest.raises(LeukomlError, match="clashing columns"):
        output_columns(["band?", "band!"])

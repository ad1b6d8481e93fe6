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
from helpers import sqlite_store, train_tiny
from PIL import Image

from leukoml import names
from leukoml.data import SYNTHETIC_CLASSES, DataSpec, decode_image, prepare_dataset, render_cell
from leukoml.errors import LeukomlError
from leukoml.serving import (
    INPUT_COLUMN,
    RequestError,
    find_serving_model,
    load_served_model,
    output_columns,
    serving_config,
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
    run_id, result = train_tiny(store.experiment, image_size=SIZE)
    data = prepare_dataset(DataSpec.from_run(run_id))
    return SimpleNamespace(run_id=run_id, uri=result.model_uri, data=data,
                           pyfunc=mlflow.pyfunc.load_model(result.model_uri))


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
    assert meta.signature.outputs.input_names() == ["label", "confidence", "low_confidence",
                                                    *PROBS]
    local = mlflow.artifacts.download_artifacts(served.uri)
    example = meta.load_input_example(local)
    assert list(example.columns) == [INPUT_COLUMN]
    assert served.pyfunc.predict(example)["label"].iloc[0] in SYNTHETIC_CLASSES
    assert os.path.isfile(os.path.join(local, "code", "leukoml", "serving", "runtime.py"))
    requirements = open(os.path.join(local, "requirements.txt")).read()
    for package in ("tensorflow==", "keras==", "pillow==", "mlflow=="):
        assert package in requirements


def test_the_logged_model_carries_its_config_and_test_metrics(served):
    model = mlflow.get_logged_model(served.uri.removeprefix("models:/"))
    run = mlflow.get_run(served.run_id)
    assert model.source_run_id == served.run_id
    config = serving_config(served.uri)
    assert (config.backbone, config.image_size) == ("Asghar2022CNN", SIZE)
    assert config.class_names == list(SYNTHETIC_CLASSES)
    metrics = {m.key: m.value for m in model.metrics}
    assert metrics[names.TEST_MACRO_F1] == pytest.approx(run.data.metrics[names.TEST_MACRO_F1])
    assert metrics[names.ci_low(names.TEST_ACCURACY)] <= metrics[names.TEST_ACCURACY]
    assert find_serving_model(served.run_id) == served.uri


def test_predictions_match_the_training_pipeline(served):
    """Raw files through the pyfunc == the decode cache training evaluated on, and the
    served probabilities are the calibrated average over the logged TTA views."""
    data = served.data
    test = data.splits["test"][:20]
    model = served.pyfunc.unwrap_python_model()
    assert (model.config.members[0].tta, model.config.members[0].crop) == ("flips", "none")
    expected = model.probabilities(np.asarray(data.images[test]))
    files = [(data.root / data.files[i]).read_bytes() for i in test]
    got = served.pyfunc.predict(frame(*files))
    np.testing.assert_allclose(got[PROBS].to_numpy(), expected, atol=1e-6)
    plain = model.keras_model.predict(np.asarray(data.images[test], np.float32), verbose=0)
    assert not np.allclose(plain, expected, atol=1e-3)  # TTA and temperature changed them
    assert got["label"].tolist() == [SYNTHETIC_CLASSES[k] for k in expected.argmax(axis=1)]


def test_output_is_label_confidence_and_probabilities_summing_to_one(served):
    out = served.pyfunc.predict(frame(*(image_file(seed=s) for s in range(4))))
    assert list(out.columns) == ["label", "confidence", "low_confidence", *PROBS]
    probs = out[PROBS].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(out["confidence"], probs.max(axis=1))
    threshold = served.pyfunc.unwrap_python_model().config.min_confidence
    assert (out["low_confidence"] == (out["confidence"] < threshold)).all()
    assert out["label"].tolist() == [SYNTHETIC_CLASSES[k] for k in probs.argmax(axis=1)]


def test_any_format_size_and_mode_is_classified_as_decode_image_sees_it(served):
    files = [image_file("JPEG"), image_file("PNG", "L"), image_file("PNG", "RGBA"),
             image_file("BMP"), image_file("TIFF"), image_file("PNG", size=(300, 180)),
             image_file("TIFF", "L", size=(50, 90))]
    model = served.pyfunc.unwrap_python_model()
    pixels = np.stack([decode_image(f, SIZE) for f in files])
    expected = model.probabilities(pixels)
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


def test_a_batch_is_one_keras_call_per_tta_view(served):
    from leukoml.data.augment import TTA_VIEWS

    model = served.pyfunc.unwrap_python_model()
    forward, calls = model._forward, []
    model._forward = lambda x: (calls.append(int(x.shape[0])), forward(x))[1]
    try:
        out = served.pyfunc.predict(frame(*(image_file(seed=s) for s in range(16))))
    finally:
        model._forward = forward
    assert calls == [16] * TTA_VIEWS[model.config.members[0].tta] and len(out) == 16


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
    for uri in (served.uri, f"runs:/{served.run_id}/{names.MODEL_ARTIFACT}",
                f"models:/serving-test/{version}"):
        model = load_served_model(uri)
        assert (model.backbone, model.image_size) == ("Asghar2022CNN", SIZE)
        assert model.class_names == list(SYNTHETIC_CLASSES)
        assert tuple(model.keras_model.input_shape) == (None, SIZE, SIZE, 3)


def test_other_models_and_runs_without_one_are_refused(store):
    from sklearn.dummy import DummyClassifier

    with mlflow.start_run(experiment_id=store.experiment) as run:
        other = mlflow.sklearn.log_model(DummyClassifier().fit([[0], [1]], [0, 1]), name="other")
    with pytest.raises(LeukomlError, match="not a leukoml serving model"):
        load_served_model(other.model_uri)
    with pytest.raises(LeukomlError, match="not a leukoml serving model"):
        serving_config(other.model_uri)
    with pytest.raises(LeukomlError, match=f"has no logged '{names.MODEL_ARTIFACT}'"):
        find_serving_model(run.info.run_id)


def test_class_names_that_clash_as_columns_are_refused():
    with pytest.raises(LeukomlError, match="clashing columns"):
        output_columns(["band?", "band!"])


def test_an_image_too_small_to_hold_a_cell_is_refused_not_labelled(served):
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 100, 200)).save(buffer, "PNG")
    with pytest.raises(RequestError, match=r"row 1: 1x1 px is too small to hold a cell"):
        served.pyfunc.predict(frame(image_file(), buffer.getvalue()))

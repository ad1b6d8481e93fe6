"""ONNX and TFLite export of a served model, checked against Keras on the same images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import sqlite_store, train_tiny

from leukoml.errors import LeukomlError
from leukoml.serving import find_serving_model, load_served_model
from leukoml.serving.export import PARITY_TOLERANCE, _check_images, export_served, parse_formats


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with sqlite_store(tmp_path_factory.mktemp("export"), "export") as store:
        run_id, _ = train_tiny(store.experiment)
        yield load_served_model(find_serving_model(run_id))


def test_both_formats_answer_as_keras_does(served, tmp_path):
    summary = export_served(served, tmp_path, ("onnx", "tflite"))
    [member] = summary["members"]
    assert (tmp_path / "model.onnx").stat().st_size > 0
    assert (tmp_path / "model.tflite").stat().st_size > 0
    assert json.loads((tmp_path / "export.json").read_text()) == summary
    assert summary["class_names"] == served.class_names and member["tta"] == "flips"
    for name in ("onnx", "tflite"):
        assert member["max_abs_difference"][name] <= PARITY_TOLERANCE

    # an independent check: onnxruntime on new images against the Keras network
    import onnxruntime

    images = _check_images(member["image_size"], count=4, seed=9)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: images})[0]
    want = np.asarray(served.keras_model(images, training=False))
    assert got.shape == want.shape and np.abs(got - want).max() <= PARITY_TOLERANCE
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-4)


def test_an_unknown_format_is_refused_with_the_known_ones():
    assert parse_formats("TFLite, onnx") == ("tflite", "onnx")
    with pytest.raises(LeukomlError, match="use one or more of onnx, tflite"):
        parse_formats("coreml")

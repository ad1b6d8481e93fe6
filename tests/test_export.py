"""ONNX, TFLite and SavedModel export of a served model, checked against Keras."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import sqlite_store, train_tiny
from PIL import Image

from leukoml import names
from leukoml.data import SYNTHETIC_CLASSES, render_cell
from leukoml.errors import LeukomlError
from leukoml.serving import find_serving_model, load_served_model
from leukoml.serving.export import (
    CHECK_IMAGES,
    FORMATS,
    PARITY_TOLERANCE,
    export_metrics,
    export_served,
    parse_formats,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with sqlite_store(tmp_path_factory.mktemp("export"), "export") as store:
        run_id, _ = train_tiny(store.experiment)
        yield load_served_model(find_serving_model(run_id))


def png_files(count: int) -> list[bytes]:
    """Smear renders larger than the model's input, as PNG file bytes."""
    files = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(render_cell(SYNTHETIC_CLASSES[i % 5], 72, (5, i))).save(buffer, "PNG")
        files.append(buffer.getvalue())
    return files


def test_every_format_answers_as_keras_does_on_the_check_images(served, tmp_path):
    summary = export_served(served, tmp_path, FORMATS, check_files=png_files(CHECK_IMAGES))
    [member] = summary["members"]
    assert summary["parity_checked_on"] == f"{CHECK_IMAGES} validation images"
    assert json.loads((tmp_path / "export.json").read_text()) == summary
    assert summary["class_names"] == served.class_names and member["tta"] == "flips"
    for name in FORMATS:
        assert member["max_abs_difference"][name] <= PARITY_TOLERANCE[name]
        assert member["bytes"][name] > 1000
    assert (tmp_path / "saved_model" / "saved_model.pb").is_file()
    metrics = export_metrics(summary)
    assert metrics[names.export_metric("onnx", "max_abs_diff")] == \
        member["max_abs_difference"]["onnx"]
    assert metrics[names.export_metric("tflite", "bytes")] == \
        (tmp_path / "model.tflite").stat().st_size


def test_the_onnx_file_runs_where_tensorflow_cannot_be_imported(served, tmp_path):
    export_served(served, tmp_path, ("onnx",))
    size = served.image_size
    images = np.stack([render_cell(c, size, (8, i)) for i, c in enumerate(SYNTHETIC_CLASSES)])
    np.save(tmp_path / "images.npy", images.astype(np.float32))
    np.save(tmp_path / "keras.npy", np.asarray(served.keras_model(
        images.astype(np.float32), training=False)))
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
        "import numpy as np, onnxruntime\n"
        f"folder = {str(tmp_path)!r}\n"
        "session = onnxruntime.InferenceSession(folder + '/model.onnx')\n"
        "x = np.load(folder + '/images.npy')\n"
        "got = session.run(None, {session.get_inputs()[0].name: x})[0]\n"
        "print(float(np.abs(got - np.load(folder + '/keras.npy')).max()))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')"
        " and sys.modules[m] is not None))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    difference, loaded = proc.stdout.strip().splitlines()
    assert float(difference) <= PARITY_TOLERANCE["onnx"] and loaded == "[]"


def test_an_unknown_format_is_refused_with_the_known_ones():
    assert parse_formats("TFLite, onnx") == ("tflite", "onnx")
    assert parse_formats("savedmodel") == ("savedmodel",)
    with pytest.raises(LeukomlError, match="use one or more of onnx, tflite, savedmodel"):
        parse_formats("coreml")

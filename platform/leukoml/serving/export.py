"""Export a served model's network to ONNX and TFLite, checked against Keras.

The exported graph is the Keras network (which scales its own input), so a
phone or an ONNX runtime feeds it RGB images of `image_size` px as float32
0-255. What runs around the network in the served pyfunc (decoding, the cell
crop, test-time views, the temperature) is written beside it in
`export.json`, so a consumer can do the same; parity is measured on the same
images (32 of the run's validation images when they are at hand, else
synthetic renders) through Keras and through each runtime, and an export
whose outputs drift beyond its format's tolerance is refused. Promotion to
champion exports the new champion (`leukoml.registry`); `leukoml export`
exports any version.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from leukoml import names
from leukoml.errors import LeukomlError
from leukoml.progress import progress

log = logging.getLogger(__name__)

FORMATS = ("onnx", "tflite", "savedmodel")
DEFAULT_FORMATS = ("onnx", "tflite")
# max |probability difference| against Keras on the check images: float32 graphs
PARITY_TOLERANCE = {"onnx": 1e-4, "tflite": 1e-3, "savedmodel": 1e-5}
CHECK_IMAGES = 32


def _check_images(size: int, count: int = CHECK_IMAGES, seed: int = 0) -> np.ndarray:
    """Synthetic smear renders at the model's size, as float32 0-255."""
    from leukoml.data import SYNTHETIC_CLASSES, render_cell

    images = [render_cell(SYNTHETIC_CLASSES[i % len(SYNTHETIC_CLASSES)], size, (seed, i))
              for i in range(count)]
    return np.stack(images).astype(np.float32)


def _onnx(model, path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)  # parity is checked below
    model.export(str(path), format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def _tflite(model, path: Path, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    # through Keras's exporter: tf.lite's own converter prints to stdout. TFLite's built-in
    # ops only, so the file runs in a bare LiteRT runtime (no TensorFlow "Flex" library)
    model.export(str(path), format="litert", verbose=False,
                 target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
    import warnings

    with warnings.catch_warnings():  # tf.lite.Interpreter's move to LiteRT is announced
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(path))
    inputs, outputs = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inputs["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(outputs["index"])


def _savedmodel(model, path: Path, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    model.export(str(path), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(path))  # held: its variables must outlive the call
    return np.asarray(loaded.serve(tf.constant(images)))


_EXPORTERS = {"onnx": (_onnx, "model.onnx"), "tflite": (_tflite, "model.tflite"),
              "savedmodel": (_savedmodel, "saved_model")}


def parse_formats(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise LeukomlError(f"formats: {text!r}; use one or more of {', '.join(FORMATS)}")
    return chosen


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() \
        else path.stat().st_size


def export_served(served, output_dir: str | Path, formats: tuple[str, ...] = DEFAULT_FORMATS,
                  check_files: list[bytes] | None = None) -> dict:
    """Export each member network of a loaded leukoml pyfunc; return what `export.json` says.

    `check_files` (image file bytes, e.g. validation images) are decoded as each member
    reads them for the parity check; without them, synthetic renders are used."""
    from leukoml.serving.runtime import decode_files

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = served.config
    check = (f"{len(check_files)} validation images" if check_files
             else f"{CHECK_IMAGES} synthetic renders")
    summary = {"class_names": list(served.class_names), "input": "float32 RGB 0-255, NHWC",
               "ensemble_temperature": config.temperature, "parity_checked_on": check,
               "members": []}
    for index, (member, network) in enumerate(zip(config.members, served.keras_models)):
        images = (decode_files(check_files, member, served.limits).astype(np.float32)
                  if check_files else _check_images(member.image_size))
        reference = np.asarray(network(images, training=False))
        entry = {**asdict(member), "files": {}, "max_abs_difference": {}, "bytes": {},
                 "seconds": {}}
        for name in progress(formats, len(formats), f"export {member.backbone}", unit="format"):
            export, file_name = _EXPORTERS[name]
            path = output_dir / (f"member{index}_{file_name}" if len(config.members) > 1
                                 else file_name)
            started = time.perf_counter()
            got = np.asarray(export(network, path, images))
            entry["seconds"][name] = round(time.perf_counter() - started, 1)
            difference = float(np.abs(got - reference).max())
            if not difference <= PARITY_TOLERANCE[name]:
                raise LeukomlError(f"{name} export of {member.backbone} differs from Keras by "
                                   f"{difference:.2g} (> {PARITY_TOLERANCE[name]:g}); not "
                                   f"exported")
            entry["files"][name], entry["max_abs_difference"][name] = path.name, difference
            entry["bytes"][name] = _size(path)
            log.info("%s: %s, max |difference| from Keras %.2g", member.backbone, path.name,
                     difference)
        summary["members"].append(entry)
    (output_dir / "export.json").write_text(json.dumps(summary, indent=2))
    return summary


def export_metrics(summary: dict) -> dict[str, float]:
    """Parity and size per format (and member, in an ensemble) as MLflow metrics."""
    members = summary["members"]
    metrics = {}
    for index, entry in enumerate(members):
        member = index if len(members) > 1 else None
        for name in entry["files"]:
            metrics[names.export_metric(name, "max_abs_diff", member)] = \
                entry["max_abs_difference"][name]
            metrics[names.export_metric(name, "bytes", member)] = float(entry["bytes"][name])
    return metrics

"""Grad-CAM: target layer per backbone family, heatmaps, overlays, MLflow grids (image files:
tests/test_prediction_path.py)."""

from __future__ import annotations

import warnings

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from leukoml import names
from leukoml.backbones import get_backbone
from leukoml.backbones.classifier import HEAD_PREFIX, build_classifier
from leukoml.data import SYNTHETIC_CLASSES, DataSpec, prepare_dataset, render_cell
from leukoml.errors import LeukomlError
from leukoml.explain import (
    DegenerateHeatmapWarning,
    GradCam,
    find_target_layer,
    log_gradcam,
    overlay,
)
from leukoml.explain.core import TRACE_FROM_BATCHES

# One backbone per family at a tiny input: the family's minimum size or a bit
# more. Most end in 1x1 maps there, which exercises the step back to the last
# block output that still has a spatial extent.
FAMILIES = [
    ("Asghar2022CNN", 32),
    ("MobileNetV3Small", 32),
    ("EfficientNetB0", 32),
    pytest.param("EfficientNetV2B0", 32, marks=pytest.mark.slow),
    pytest.param("ConvNeXtTiny", 32, marks=pytest.mark.slow),
    pytest.param("NASNetMobile", 32, marks=pytest.mark.slow),
    pytest.param("InceptionResNetV2", 75, marks=pytest.mark.slow),
    ("DenseNet121", 32),
    ("ResNet50", 32),
    ("VGG16", 32),
    ("Xception", 32),
    ("InceptionV3", 75),
    ("MobileNetV2", 64),  # 2x2 output: the head's own input is the target
]


def cells(size: int, count: int = 2) -> np.ndarray:
    return np.stack([render_cell(SYNTHETIC_CLASSES[i % 5], size, seed=i) for i in range(count)])


def layer_feeding_head(model: keras.Model) -> keras.layers.Layer:
    head = next(layer for layer in model.layers if layer.name.startswith(HEAD_PREFIX))
    return next(op for op in model.operations if op.output is head.input)


def assert_heatmap(heatmap, size: int) -> None:
    assert heatmap is not None
    assert heatmap.shape == (size, size)
    assert heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0)
    assert np.ptp(heatmap) > 0.05, "constant heatmap"


@pytest.mark.parametrize(("backbone", "size"), FAMILIES)
def test_gradcam_per_family(backbone, size):
    keras.utils.set_random_seed(0)
    model = build_classifier(get_backbone(backbone), 3, size, weights="none")

    layer_name = find_target_layer(model)
    layer = model.get_layer(layer_name)
    assert not layer_name.startswith(HEAD_PREFIX)
    assert len(layer.output.shape) == 4
    height, width = layer.output.shape[1:3]
    assert height * width > 1
    feeder = layer_feeding_head(model)
    if np.prod(feeder.output.shape[1:3]) > 1:
        assert layer_name == feeder.name

    explanation = GradCam(model).explain(cells(size))
    for heatmap in explanation.heatmaps:
        assert_heatmap(heatmap, size)
    assert np.isfinite(explanation.logits).all()
    np.testing.assert_array_equal(explanation.classes, explanation.logits.argmax(axis=1))
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def small_cnn():
    keras.utils.set_random_seed(0)
    return build_classifier(get_backbone("Asghar2022CNN"), 3, 32, weights="none")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_logits_match_the_model_and_batches_do_not_mix(small_cnn):
    images = cells(32, TRACE_FROM_BATCHES + 1)
    explainer = GradCam(small_cnn)
    traced = explainer.explain(images, batch_size=1)  # enough batches for the traced step
    eager = explainer.explain(images, batch_size=4)
    expected = small_cnn.predict(images.astype("float32"), verbose=0)
    np.testing.assert_allclose(softmax(traced.logits), expected, atol=1e-5)
    np.testing.assert_allclose(softmax(eager.logits), expected, atol=1e-5)
    for a, b in zip(traced.heatmaps, eager.heatmaps):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_heatmap_explains_the_requested_class(small_cnn):
    images = cells(32, 2)
    explainer = GradCam(small_cnn)
    first = explainer.explain(images, classes=[0, 0])
    second = explainer.explain(images, classes=[1, 1])
    np.testing.assert_array_equal(first.classes, [0, 0])
    assert not np.allclose(first.heatmaps[0], second.heatmaps[0], atol=1e-3)
    with pytest.raises(ValueError, match="3 classes given for 2 images"):
        explainer.explain(images, classes=[0, 1, 2])
    with pytest.raises(ValueError, match=r"classes \[-1, 3\] are not all in 0..2"):
        explainer.explain(images, classes=[3, -1])
    with pytest.raises(ValueError, match="do not fit the model's input"):
        explainer.explain(cells(40, 2))


def tiny_model(kernel: np.ndarray, size: int = 8) -> keras.Model:
    """Conv (no bias, ReLU) + leukoml's head layers, with fixed weights."""
    inputs = keras.Input((size, size, 3))
    features = keras.layers.Conv2D(1, kernel.shape[0], use_bias=False, activation="relu",
                                   name="features")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(features)
    logits = keras.layers.Dense(2, name="head_logits")(x)
    outputs = keras.layers.Activation("softmax", name="head_probabilities")(logits)
    model = keras.Model(inputs, outputs)
    model.get_layer("features").set_weights([kernel])
    model.get_layer("head_logits").set_weights([np.ones((1, 2), "float32"), np.zeros(2, "float32")])
    return model


def test_all_zero_and_nan_heatmaps_are_warned_about_not_drawn():
    ramp = np.repeat(np.linspace(0, 255, 8, dtype=np.uint8)[None, :, None], 8, axis=0)
    images = np.stack([np.zeros((8, 8, 3), np.uint8), np.repeat(ramp, 3, axis=2)])
    explainer = GradCam(tiny_model(np.ones((1, 1, 3, 1), "float32")))
    assert explainer.layer_name == "features"
    with pytest.warns(DegenerateHeatmapWarning, match=r"1 of 2 image\(s\) \(positions \[0\]"):
        explanation = explainer.explain(images)
    assert explanation.heatmaps[0] is None  # black image: no activation anywhere
    assert_heatmap(explanation.heatmaps[1], 8)

    broken = GradCam(tiny_model(np.full((1, 1, 3, 1), np.nan, "float32")))
    with pytest.warns(DegenerateHeatmapWarning, match="2 of 2"):
        assert broken.explain(images).heatmaps == [None, None]


def test_layer_choice_refuses_models_it_cannot_explain():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    no_head = keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))
    with pytest.raises(LeukomlError, match="no 'head_\\*' layers"):
        find_target_layer(no_head)
    with pytest.raises(LeukomlError, match="no feature map larger than 1x1"):
        find_target_layer(tiny_model(np.ones((4, 4, 3, 1), "float32"), size=4))


def test_frozen_backbone_still_gets_a_heatmap():
    keras.utils.set_random_seed(0)
    frozen = build_classifier(get_backbone("Asghar2022CNN"), 3, 32, weights="none",
                              freeze_base=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateHeatmapWarning)
        explanation = GradCam(frozen).explain(cells(32, 2))
    for heatmap in explanation.heatmaps:
        assert_heatmap(heatmap, 32)


def test_target_layer_survives_saving_and_loading(small_cnn, tmp_path):
    path = tmp_path / "model.keras"
    small_cnn.save(path)
    assert find_target_layer(keras.saving.load_model(path)) == find_target_layer(small_cnn)


def test_overlay_blends_the_colour_map_on_the_image():
    image = np.full((4, 4, 3), 128, np.uint8)
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[:2] = 1.0
    blended = overlay(image, heatmap)
    assert blended.dtype == np.uint8 and blended.shape == image.shape
    hot, cold = blended[0, 0].astype(int), blended[3, 3].astype(int)
    assert hot[0] > cold[0] and cold[2] > hot[2]  # "jet": red where hot, blue where cold
    with pytest.raises(ValueError, match="does not match image"):
        overlay(image, heatmap[:3])


@pytest.fixture(scope="module")
def trained_on_synthetic():
    """Asghar2022CNN fitted for a few steps on 32 px synthetic cells."""
    data = prepare_dataset(DataSpec("synthetic:per_class=20,size=32", image_size=32))
    keras.utils.set_random_seed(0)
    model = build_classifier(get_backbone("Asghar2022CNN"), len(data.class_names), 32,
                             weights="none")
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    train = data.splits["train"]
    model.fit(data.images[train].astype("float32"), data.labels[train],
              epochs=3, batch_size=16, verbose=0)
    test_images = data.images[data.splits["test"]].astype("float32")
    return model, data, model.predict(test_images, verbose=0)


def test_log_gradcam_logs_small_png_grids_to_the_active_run(tracking_uri, trained_on_synthetic):
    model, data, probabilities = trained_on_synthetic
    with mlflow.start_run() as run:
        logged = log_gradcam(model, data, probabilities, per_class=2)

    client = MlflowClient()
    assert client.get_run(run.info.run_id).data.tags[names.TAG_GRADCAM_LAYER] == logged.layer
    assert logged.layer == "pool3"
    artifacts = client.list_artifacts(run.info.run_id, names.GRADCAM_DIR)
    assert sorted(a.path for a in artifacts) == sorted(logged.paths)
    assert len(artifacts) == len(data.class_names)  # every class has test images here
    assert all(a.path.endswith(".png") for a in artifacts)
    assert sum(a.file_size for a in artifacts) < 3_000_000
    local = client.download_artifacts(run.info.run_id, logged.paths[0])
    with Image.open(local) as grid:
        assert grid.format == "PNG" and grid.width >= 4 * 100


def test_log_gradcam_refuses_bad_arguments(trained_on_synthetic):
    model, data, probabilities = trained_on_synthetic
    with pytest.raises(LeukomlError, match="target 'label' is not one of predicted, true"):
        log_gradcam(model, data, probabilities, target="label")
    with pytest.raises(ValueError, match="do not match the test split"):
        log_gradcam(model, data, probabilities[1:])

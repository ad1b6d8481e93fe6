"""Build a classifier from a registry entry, as ONE flat functional graph.

Each backbone is built on the classifier's own input tensor, so its layers
sit directly in the classifier (no nested `Model`); Grad-CAM can then reach
the last convolutional feature map without "Graph disconnected" errors.
The head keeps logits and softmax as separate layers so Grad-CAM can take
gradients of the logits, which do not saturate like probabilities.
"""

from __future__ import annotations

import os
from typing import Callable

import keras

from leukoml.backbones._registry import Backbone, check_image_size, check_weights, get_backbone
from leukoml.errors import LeukomlError

# Keras applications ship batch-norm momentum 0.99-0.999, tuned for fine-tuning.
# From scratch on a few thousand images the moving statistics then lag the
# weights for many epochs and validation accuracy sits at chance; 0.9 tracks.
FROM_SCRATCH_BN_MOMENTUM = 0.9
LOGITS_LAYER = "head_logits"
PROBABILITIES_LAYER = "head_probabilities"
HEAD_PREFIX = "head_"


def preprocess_fn(backbone: str) -> Callable:
    """The backbone's `preprocess_input`: float RGB in [0, 255] -> model input."""
    entry = get_backbone(backbone)
    if not entry.is_keras_application:
        return _scale_unit
    return getattr(keras.applications, entry.module).preprocess_input


def _scale_unit(x):
    return x / 255.0


def _keras_home() -> str:
    return os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")


def _build_base(entry: Backbone, inputs, weights: str) -> keras.Model:
    if not entry.is_keras_application:
        from leukoml.backbones._asghar import asghar2022_features

        base = keras.Model(inputs, asghar2022_features(inputs), name="asghar2022_cnn")
        if weights == "imagenet":
            raise LeukomlError("weights: Asghar2022CNN has no ImageNet weights; use 'none' or a path")
        if weights != "none":
            base.load_weights(weights)
        return base
    cls = getattr(keras.applications, entry.name)
    try:
        return cls(
            include_top=False,
            weights=None if weights == "none" else weights,
            input_tensor=inputs,
        )
    except Exception as exc:
        if weights == "imagenet" and "fetch failure" in str(exc):
            raise LeukomlError(
                f"cannot download the ImageNet weights of {entry.name} ({exc}). Keras caches "
                f"them in {_keras_home()}: copy the file there from a machine with internet "
                "access, or set weights: none to train from scratch."
            ) from exc
        raise


def build_classifier(
    backbone: str,
    num_classes: int,
    image_size: int,
    weights: str = "none",
    dropout: float = 0.2,
    freeze_base: bool = False,
) -> keras.Model:
    """Backbone without top + pooling + dropout + softmax, one flat graph.

    Input: a batch of preprocessed images (`preprocess_fn(backbone)` applied).
    """
    entry = get_backbone(backbone)
    check_image_size(entry, image_size)
    weights = check_weights(weights)
    if num_classes < 2:
        raise LeukomlError(f"a classifier needs at least 2 classes, got {num_classes}")

    inputs = keras.Input((image_size, image_size, 3), name="image")
    base = _build_base(entry, inputs, weights)
    if weights == "none":
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = FROM_SCRATCH_BN_MOMENTUM
    if freeze_base:
        base.trainable = False

    x = base.output
    if entry.head == "flatten_dense64":
        x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout")(x)
        x = keras.layers.Flatten(name=f"{HEAD_PREFIX}flatten")(x)
        x = keras.layers.Dense(64, activation="relu", name=f"{HEAD_PREFIX}dense64")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(x)
        x = keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout")(x)
    logits = keras.layers.Dense(num_classes, name=LOGITS_LAYER)(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name=PROBABILITIES_LAYER)(logits)
    return keras.Model(inputs, outputs, name=f"{entry.name}_classifier")

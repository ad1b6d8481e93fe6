"""Build a classifier from a registry entry, as ONE flat functional graph.

The model takes raw RGB pixels in [0, 255]: the backbone's input scaling is
built in from Keras' own layers, so training, serving, Grad-CAM and the
ONNX/TFLite exports feed the same thing and never look the backbone up again.
Each backbone is built on the classifier's own tensor, so its layers sit
directly in the classifier (no nested `Model`); Grad-CAM can then reach the
last convolutional feature map without "Graph disconnected" errors. The head
keeps logits and softmax as separate layers so Grad-CAM can take gradients of
the logits, which do not saturate like probabilities.
"""

from __future__ import annotations

import importlib
import os

import keras
import numpy as np

from leukoml.backbones._registry import Backbone, check_image_size, check_weights
from leukoml.errors import LeukomlError

# Keras applications ship batch-norm momentum 0.99-0.999, tuned for fine-tuning.
# From scratch on a few thousand images the moving statistics then lag the
# weights for many epochs and validation accuracy sits at chance; 0.9 tracks.
FROM_SCRATCH_BN_MOMENTUM = 0.9
LOGITS_LAYER = "head_logits"
PROBABILITIES_LAYER = "head_probabilities"
HEAD_PREFIX = "head_"


PREPROCESS_PREFIX = "preprocess_"
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _preprocess(mode: str, x):
    """The layers of a `preprocess_input` mode (see `Backbone.preprocess`), on tensor `x`."""
    if mode == "unit":
        return keras.layers.Rescaling(1 / 255.0, name=f"{PREPROCESS_PREFIX}unit")(x)
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name=f"{PREPROCESS_PREFIX}tf")(x)
    if mode == "torch":
        x = keras.layers.Rescaling(1 / 255.0, name=f"{PREPROCESS_PREFIX}unit")(x)
        return keras.layers.Normalization(mean=_TORCH_MEAN, variance=np.square(_TORCH_STD),
                                          name=f"{PREPROCESS_PREFIX}torch")(x)
    if mode == "caffe":  # RGB -> BGR as a fixed 1x1 convolution, then the ImageNet mean
        bgr = keras.layers.Conv2D(3, 1, use_bias=True, trainable=False,
                                  name=f"{PREPROCESS_PREFIX}caffe")
        x = bgr(x)
        bgr.set_weights([np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3),
                         -np.asarray(_CAFFE_MEAN_BGR, dtype="float32")])
        return x
    return x


def _keras_home() -> str:
    return os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")


def _build_base(entry: Backbone, inputs, scaled, weights: str) -> keras.Model:
    """The backbone on `scaled` (the scaled `inputs`), as a model from `inputs`, built by
    the builder its registry entry names."""
    if not entry.is_keras_application:
        if weights == "imagenet":
            raise LeukomlError(
                f"weights: {entry.name} has no ImageNet weights; use 'none' or a path")
        module, _, function = entry.builder.partition(":")
        features = getattr(importlib.import_module(module), function)
        base = keras.Model(inputs, features(scaled), name=f"{entry.name}_base")
        if weights != "none":
            base.load_weights(weights)
        return base
    cls = getattr(keras.applications, entry.name)
    try:
        return cls(
            include_top=False,
            weights=None if weights == "none" else weights,
            input_tensor=scaled,
        )
    except Exception as exc:
        if weights == "imagenet" and "fetch failure" in str(exc):
            raise LeukomlError(
                f"cannot download the ImageNet weights of {entry.name} ({exc}). Keras caches "
                f"them in {_keras_home()}: copy the file there from a machine with internet "
                "access, or set weights: none to train from scratch."
            ) from exc
        raise


def backbone_model(entry: Backbone, image_size: int, weights: str = "none") -> keras.Model:
    """The backbone alone, input scaling included: what a `weights` file must fit."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    return _build_base(entry, inputs, _preprocess(entry.preprocess, inputs), weights)


def build_classifier(
    entry: Backbone,
    num_classes: int,
    image_size: int,
    weights: str = "none",
    dropout: float = 0.2,
    freeze_base: bool = False,
) -> keras.Model:
    """Input scaling + backbone without top + pooling + dropout + softmax, one flat graph.

    Input: a batch of RGB images, float32 in [0, 255].
    """
    check_image_size(entry, image_size)
    weights = check_weights(weights)
    if num_classes < 2:
        raise LeukomlError(f"a classifier needs at least 2 classes, got {num_classes}")

    inputs = keras.Input((image_size, image_size, 3), name="image")
    base = _build_base(entry, inputs, _preprocess(entry.preprocess, inputs), weights)
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

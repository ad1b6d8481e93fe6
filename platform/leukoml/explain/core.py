"""Grad-CAM core: the target layer, the gradients and the heatmap (figures: `figures`).

`build_classifier` makes one flat functional graph, so a second model from the
same input to (feature map, logits) is always connected, whatever the
backbone family. Gradients are taken of the logits, not the softmax, which
saturates for confident predictions and then yields near-zero gradients.

A heatmap that is all zero or not finite carries no information; it is
reported with a `DegenerateHeatmapWarning` and returned as None, never drawn.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import keras
import matplotlib
import numpy as np
import tensorflow as tf

from leukoml.backbones.classifier import HEAD_PREFIX, LOGITS_LAYER
from leukoml.errors import LeukomlError

log = logging.getLogger(__name__)

COLORMAP = "jet"
OVERLAY_ALPHA = 0.45
# Tracing the gradient graph of a large backbone costs 10-40 s on a CPU, the
# price of about ten eager batches: calls with fewer batches run eagerly.
TRACE_FROM_BATCHES = 8


# Padded or cropped maps no longer cover exactly the image: resized to it, they
# would shift the heatmap.
_SHIFTED_MAPS = (keras.layers.ZeroPadding2D, keras.layers.Cropping2D)


class DegenerateHeatmapWarning(UserWarning):
    """Grad-CAM gave an all-zero or non-finite map: there is nothing to show."""


# --- the target layer ---------------------------------------------------------


def find_target_layer(model: keras.Model) -> str:
    """Name of the layer whose feature map Grad-CAM weighs.

    The last layer before the `head_` layers that (a) outputs a 4-D map
    (batch, h, w, c) larger than 1x1, neither padded nor cropped, and (b) every
    path from the input to the head passes through, so the map sees all the
    head sees. With a
    normal input size this is the backbone's output; at small sizes the
    backbone ends in 1x1 maps (a constant heatmap), and the choice steps back
    to the last block output that still has a spatial extent.
    """
    # `operations` (unlike `layers`) includes bare ops such as MobileNetV3's
    # `x + 3`; all of them are needed to see every path. Topological order.
    operations = model.operations
    head_start = next(
        (i for i, op in enumerate(operations) if op.name.startswith(HEAD_PREFIX)), None
    )
    if head_start is None or LOGITS_LAYER not in {op.name for op in operations}:
        raise LeukomlError(
            f"model {model.name!r} has no '{HEAD_PREFIX}*' layers ending in {LOGITS_LAYER!r}; "
            "Grad-CAM needs a classifier made by leukoml.backbones.classifier.build_classifier"
        )
    cuts = _cut_positions(operations)
    candidates = [
        operations[i] for i in range(1, head_start)  # 0 is the input layer: no features yet
        if i in cuts and isinstance(operations[i], keras.layers.Layer)
        and not isinstance(operations[i], _SHIFTED_MAPS)
        and len(operations[i].output.shape) == 4
    ]
    spatial = [layer for layer in candidates if _map_area(layer) != 1]
    if not spatial:
        raise LeukomlError(
            f"model {model.name!r} has no feature map larger than 1x1 before its head "
            f"(input {tuple(model.input_shape[1:3])}); use a larger image_size for Grad-CAM"
        )
    return spatial[-1].name


def _cut_positions(operations: Sequence[keras.Operation]) -> set[int]:
    """Positions of operations that every input-to-output path goes through.

    In topological order, operation i is such a cut exactly when no edge jumps
    over it, from an operation before i to one after i.
    """
    position = {id(op.output): i for i, op in enumerate(operations)}
    farthest_consumer = [-1] * len(operations)
    for i, op in enumerate(operations[1:], start=1):
        for tensor in keras.tree.flatten(op.input):
            source = position[id(tensor)]
            farthest_consumer[source] = max(farthest_consumer[source], i)
    cuts, reach = set(), -1  # reach: farthest consumer of any operation before i
    for i in range(len(operations)):
        if reach <= i:
            cuts.add(i)
        reach = max(reach, farthest_consumer[i])
    return cuts


def _map_area(layer: keras.layers.Layer) -> int | None:
    height, width = layer.output.shape[1:3]
    return None if height is None or width is None else height * width


# --- heatmaps -----------------------------------------------------------------


@dataclass
class Explanation:
    """Grad-CAM of a batch of images; row i of each field belongs to image i."""

    heatmaps: list[np.ndarray | None]  # (H, W) float32 in [0, 1]; None: all zero or not finite
    classes: np.ndarray  # (N,) the class each heatmap explains
    # (N, K) float32, the network's `head_logits` on this one view: not the served
    # prediction, which averages test-time views and is temperature-scaled
    logits: np.ndarray = field(repr=False)


class GradCam:
    """Grad-CAM for one classifier: the gradient model is built once, images go in batches.

    Takes raw uint8 RGB images, as the model does (it scales its own input);
    the overlays are drawn on the same images.
    """

    def __init__(self, model: keras.Model, layer_name: str | None = None):
        self.layer_name = layer_name or find_target_layer(model)
        self.image_size = tuple(model.input_shape[1:3])
        self.n_classes = int(model.get_layer(LOGITS_LAYER).output.shape[-1])
        self._gradient_model = keras.Model(
            model.inputs,
            [model.get_layer(self.layer_name).output, model.get_layer(LOGITS_LAYER).output],
        )
        self._traced_maps = None

    def _maps(self, images: tf.Tensor, classes: tf.Tensor):
        x = tf.cast(images, tf.float32)
        with tf.GradientTape() as tape:
            # Watching the input records every op even when the backbone is
            # frozen (freeze_base): its variables are not watched then.
            tape.watch(x)
            features, logits = self._gradient_model(x, training=False)
            logits = tf.cast(logits, tf.float32)
            # class -1 stands for "the predicted class", known only after the forward pass
            classes = tf.where(classes < 0, tf.argmax(logits, axis=-1, output_type=tf.int32),
                               classes)
            scores = tf.gather(logits, classes, axis=1, batch_dims=1)
        # Images are independent at inference, so one gradient of the summed
        # scores holds each image's own gradient.
        gradients = tf.cast(tape.gradient(scores, features), tf.float32)
        features = tf.cast(features, tf.float32)
        channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(channel_weights * features, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, self.image_size, method="bilinear")[..., 0]
        return cam, classes, logits

    def _step(self, n_batches: int):
        if n_batches < TRACE_FROM_BATCHES:
            return self._maps
        if self._traced_maps is None:  # one trace per model: the batch size stays open
            self._traced_maps = tf.function(self._maps, input_signature=(
                tf.TensorSpec((None, *self.image_size, 3), tf.uint8),
                tf.TensorSpec((None,), tf.int32),
            ))
        return self._traced_maps

    def explain(
        self, images: np.ndarray, classes: Sequence[int] | None = None, batch_size: int = 16
    ) -> Explanation:
        """Heatmaps for (N, H, W, 3) uint8 `images`, of `classes` or else the predicted ones."""
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != (*self.image_size, 3):
            raise ValueError(
                f"images of shape {images.shape} do not fit the model's input "
                f"(N, {self.image_size[0]}, {self.image_size[1]}, 3)"
            )
        wanted = np.full(len(images), -1, np.int32) if classes is None else (
            np.asarray(classes, np.int32))
        if wanted.shape != (len(images),):
            raise ValueError(f"{len(wanted)} classes given for {len(images)} images")
        if classes is not None and ((wanted < 0) | (wanted >= self.n_classes)).any():
            raise ValueError(f"classes {sorted(set(wanted.tolist()))} are not all in "
                             f"0..{self.n_classes - 1}")
        step = self._step(-(-len(images) // batch_size))
        maps, used, logits = [], [], []
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            cam, batch_classes, batch_logits = step(
                tf.constant(images[start:stop]), tf.constant(wanted[start:stop])
            )
            maps.append(cam.numpy())
            used.append(batch_classes.numpy())
            logits.append(batch_logits.numpy())
        heatmaps = [_normalised(cam) for cam in np.concatenate(maps)] if maps else []
        degenerate = [i for i, heatmap in enumerate(heatmaps) if heatmap is None]
        if degenerate:
            warnings.warn(
                f"Grad-CAM at layer {self.layer_name!r} is all zero or not finite for "
                f"{len(degenerate)} of {len(heatmaps)} image(s) (positions {degenerate[:10]}"
                f"{'...' if len(degenerate) > 10 else ''}); no heatmap is drawn for them",
                DegenerateHeatmapWarning,
                stacklevel=2,
            )
        return Explanation(
            heatmaps,
            np.concatenate(used) if used else np.zeros(0, np.int32),
            np.concatenate(logits) if logits else np.zeros((0, self.n_classes), np.float32),
        )


def _normalised(cam: np.ndarray) -> np.ndarray | None:
    """`cam` scaled to a maximum of 1, or None when it is all zero or not finite."""
    peak = float(cam.max())
    if not np.isfinite(cam).all() or peak <= 0.0:
        return None
    return np.clip(cam / peak, 0.0, 1.0).astype(np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA,
            colormap: str = COLORMAP) -> np.ndarray:
    """The heatmap in colour, blended on the (H, W, 3) uint8 image; uint8 out."""
    if heatmap.shape != image.shape[:2]:
        raise ValueError(f"heatmap {heatmap.shape} does not match image {image.shape[:2]}")
    colours = matplotlib.colormaps[colormap](heatmap)[..., :3]
    blended = (1.0 - alpha) * (image.astype(np.float32) / 255.0) + alpha * colours
    return np.clip(np.round(blended * 255.0), 0, 255).astype(np.uint8)

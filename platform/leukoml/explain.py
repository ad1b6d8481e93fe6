"""Grad-CAM heatmaps of a trained classifier: which pixels drove its decision.

`build_classifier` makes one flat functional graph, so a second model from the
same input to (feature map, logits) is always connected, whatever the
backbone family. Gradients are taken of the logits, not the softmax, which
saturates for confident predictions and then yields near-zero gradients.

A heatmap that is all zero or not finite carries no information; it is
reported with a `DegenerateHeatmapWarning` and returned as None, never drawn.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import keras
import matplotlib
import mlflow
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

from leukoml import names
from leukoml.backbones.classifier import HEAD_PREFIX, LOGITS_LAYER, preprocess_fn
from leukoml.data import IMAGE_SUFFIXES, ImageError, PreparedData, decode_image
from leukoml.errors import LeukomlError

log = logging.getLogger(__name__)

TARGETS = ("predicted", "true")
COLORMAP = "jet"
OVERLAY_ALPHA = 0.45
# Grid panels: 1.4 in at 100 dpi = 140 px, about the decoded image size; five
# classes with per_class=3 come to about 1.4 MB of PNG (measured at 100 px).
PANEL_INCHES = 1.4
FIGURE_DPI = 100
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
    logits: np.ndarray = field(repr=False)  # (N, K) float32, the model's `head_logits`

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the logits: the model's output."""
        shifted = np.exp(self.logits - self.logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)


class GradCam:
    """Grad-CAM for one classifier: the gradient model is built once, images go in batches.

    Takes raw uint8 RGB images and applies the backbone's preprocessing itself,
    as training did; the overlays are drawn on the raw images.
    """

    def __init__(self, model: keras.Model, backbone: str, layer_name: str | None = None):
        self.layer_name = layer_name or find_target_layer(model)
        self.image_size = tuple(model.input_shape[1:3])
        self.n_classes = int(model.get_layer(LOGITS_LAYER).output.shape[-1])
        self._preprocess = preprocess_fn(backbone)
        self._gradient_model = keras.Model(
            model.inputs,
            [model.get_layer(self.layer_name).output, model.get_layer(LOGITS_LAYER).output],
        )
        self._traced_maps = None

    def _maps(self, images: tf.Tensor, classes: tf.Tensor):
        x = self._preprocess(tf.cast(images, tf.float32))
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


# --- figures ------------------------------------------------------------------


class Example(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8, as decoded
    heatmap: np.ndarray | None
    caption: str


def _draw_pair(figure: Figure, rows: int, columns: int, slot: int, example: Example) -> None:
    """Original and overlay side by side, the caption above the original."""
    original = figure.add_subplot(rows, columns, slot)
    original.imshow(example.image)
    original.set_title(example.caption, fontsize=7, loc="left")
    heat = figure.add_subplot(rows, columns, slot + 1)
    if example.heatmap is None:
        heat.imshow(np.full_like(example.image, 255))
        heat.text(0.5, 0.5, "no Grad-CAM\nsignal", ha="center", va="center", fontsize=7,
                  transform=heat.transAxes)
    else:
        heat.imshow(overlay(example.image, example.heatmap))
    for axes in (original, heat):
        axes.set_axis_off()


def _figure(rows: Sequence[Sequence[Example]], title: str) -> Figure:
    columns = 2 * max(len(row) for row in rows)
    figure = Figure(figsize=(PANEL_INCHES * columns, PANEL_INCHES * 1.3 * len(rows) + 0.4),
                    dpi=FIGURE_DPI, layout="constrained")
    figure.suptitle(title, fontsize=8)
    for r, row in enumerate(rows):
        for e, example in enumerate(row):
            _draw_pair(figure, len(rows), columns, r * columns + 2 * e + 1, example)
    return figure


def _caption(true: str | None, predicted: str, probability: float) -> str:
    lines = [f"true: {true}"] if true is not None else []
    return "\n".join([*lines, f"pred: {predicted} ({probability:.2f})"])


# --- a trained model on its test split ----------------------------------------


class GradcamArtifacts(NamedTuple):
    layer: str  # the Grad-CAM target layer, also tagged on the run
    paths: list[str]  # artifact paths of the per-class grids, under names.GRADCAM_DIR


def _file_stem(index: int, class_name: str) -> str:
    """`03_band_cell`: unique per class and safe as a file name."""
    return f"{index:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', class_name).strip('_.') or 'class'}"


def _pick(positions: np.ndarray, confidence: np.ndarray, count: int) -> np.ndarray:
    """The `count` most confident of `positions`: the clearest cases of each kind."""
    return positions[np.argsort(-confidence[positions], kind="stable")[:count]]


def log_gradcam(
    model: keras.Model,
    data: PreparedData,
    probabilities: np.ndarray,
    backbone: str,
    per_class: int = 3,
    target: str = "predicted",
) -> GradcamArtifacts:
    """Log one Grad-CAM grid per class of the test split to the active MLflow run.

    Each grid shows the `per_class` most confidently correct test images of
    the class and, where there are any, its `per_class` most confidently
    misclassified ones: the original, the overlay and true/predicted label
    with the predicted probability. `probabilities` are the model's softmax
    outputs on `data.splits["test"]`, in that order (`TrainResult.test_probabilities`).
    `target` picks the class the heatmap explains: "predicted" or "true".
    """
    if target not in TARGETS:
        raise LeukomlError(f"gradcam target {target!r} is not one of {', '.join(TARGETS)}")
    if per_class < 1:
        raise LeukomlError(f"gradcam per_class must be at least 1, got {per_class}")
    test = np.asarray(data.splits["test"])
    n_classes = len(data.class_names)
    probabilities = np.asarray(probabilities)
    if probabilities.shape != (len(test), n_classes):
        raise ValueError(
            f"probabilities of shape {probabilities.shape} do not match the test split "
            f"({len(test)} images, {n_classes} classes)"
        )
    explainer = GradCam(model, backbone)
    if explainer.image_size != (data.image_size, data.image_size):
        raise LeukomlError(
            f"the model takes {explainer.image_size} px images, the data is decoded at "
            f"{data.image_size} px"
        )
    true = data.labels[test]
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    picks = {
        c: (_pick(np.flatnonzero((true == c) & (predicted == c)), confidence, per_class),
            _pick(np.flatnonzero((true == c) & (predicted != c)), confidence, per_class))
        for c in range(n_classes)
    }
    chosen = np.unique(np.concatenate([np.concatenate(pair) for pair in picks.values()]))
    explanation = explainer.explain(
        np.asarray(data.images[test[chosen]]),
        classes=(predicted if target == "predicted" else true)[chosen],
    )
    heatmap_of = dict(zip(chosen.tolist(), explanation.heatmaps))

    def example(position: int) -> Example:
        caption = _caption(data.class_names[true[position]],
                           data.class_names[predicted[position]], confidence[position])
        return Example(np.asarray(data.images[test[position]]), heatmap_of[position], caption)

    mlflow.set_tag(names.TAG_GRADCAM_LAYER, explainer.layer_name)
    paths = []
    for c, class_name in enumerate(data.class_names):
        rows = [[example(p) for p in kind] for kind in picks[c] if len(kind)]
        if not rows:
            log.info("Grad-CAM: no test image of class %s, no grid", class_name)
            continue
        figure = _figure(rows, f"{class_name}: Grad-CAM of the {target} class "
                               f"at layer {explainer.layer_name}")
        path = f"{names.GRADCAM_DIR}/{_file_stem(c, class_name)}.png"
        mlflow.log_figure(figure, path)
        paths.append(path)
    return GradcamArtifacts(explainer.layer_name, paths)


# --- image files --------------------------------------------------------------


def _image_files(source: Path) -> list[tuple[Path, Path]]:
    """(file, path relative to `source`) for one image or a folder's images, recursively."""
    if source.is_file():
        return [(source, Path(source.name))]
    if not source.is_dir():
        raise LeukomlError(f"images: {str(source)!r} is neither an image file nor a folder")
    files = sorted(
        p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise LeukomlError(
            f"images: no {'/'.join(sorted(IMAGE_SUFFIXES))} file in folder {str(source)!r}"
        )
    return [(p, p.relative_to(source)) for p in files]


def explain_images(
    model: keras.Model,
    backbone: str,
    class_names: Sequence[str],
    image_size: int,
    images: str | Path,
    output_dir: str | Path,
    batch_size: int = 16,
) -> list[Path]:
    """Grad-CAM of the predicted class for image files; writes one PNG per image.

    `images` is a file or a folder (searched recursively). Files are decoded as
    for training (`decode_image`, squashed to `image_size`); unreadable ones
    are skipped with a warning. Each PNG, `<output_dir>/<relative path>.gradcam.png`,
    shows the image, the overlay and the predicted class with its probability.
    """
    explainer = GradCam(model, backbone)
    if explainer.n_classes != len(class_names):
        raise LeukomlError(f"{len(class_names)} class names given for a model with "
                           f"{explainer.n_classes} outputs")
    if explainer.image_size != (image_size, image_size):
        raise LeukomlError(f"image_size {image_size} does not match the model's input "
                           f"{explainer.image_size}")
    files = _image_files(Path(images).expanduser())
    output_dir = Path(output_dir)
    # Decoded a chunk at a time: memory stays bounded, and a large folder
    # still reaches the traced step.
    chunk = 2 * TRACE_FROM_BATCHES * batch_size
    written = []
    for start in range(0, len(files), chunk):
        decoded, kept = [], []
        for path, relative in files[start:start + chunk]:
            try:
                decoded.append(decode_image(path.read_bytes(), image_size))
            except ImageError as exc:
                warnings.warn(f"skipping {path}: {exc}", stacklevel=2)
                continue
            kept.append(relative)
        if not decoded:
            continue
        explanation = explainer.explain(np.stack(decoded), batch_size=batch_size)
        for relative, image, heatmap, predicted, probabilities in zip(
            kept, decoded, explanation.heatmaps, explanation.classes, explanation.probabilities
        ):
            caption = _caption(None, class_names[predicted], float(probabilities[predicted]))
            figure = _figure([[Example(image, heatmap, caption)]], str(relative))
            destination = output_dir / relative.parent / f"{relative.name}.gradcam.png"
            destination.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(destination)
            written.append(destination)
    if not written:
        raise LeukomlError(f"images: none of the files under {str(images)!r} could be decoded")
    return written

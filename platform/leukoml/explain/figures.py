"""Grad-CAM figures: per-class grids of a trained model's test split, and one overlay per
image file for `-e explain`."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import keras
import mlflow
import numpy as np
from matplotlib.figure import Figure

from leukoml import names
from leukoml.data import IMAGE_SUFFIXES, PreparedData
from leukoml.errors import LeukomlError
from leukoml.explain.core import TRACE_FROM_BATCHES, GradCam, overlay
from leukoml.progress import progress

log = logging.getLogger(__name__)

TARGETS = ("predicted", "true")
# Grid panels: 1.4 in at 100 dpi = 140 px, about the decoded image size; five
# classes with per_class=3 come to about 1.4 MB of PNG (measured at 100 px).
PANEL_INCHES = 1.4
FIGURE_DPI = 100


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
    per_class: int = 3,
    target: str = "predicted",
    served_as: str = "",
) -> GradcamArtifacts:
    """Log one Grad-CAM grid per class of the test split to the active MLflow run.

    Each grid shows the `per_class` most confidently correct test images of
    the class and, where there are any, its `per_class` most confidently
    misclassified ones: the original, the overlay and true/predicted label
    with the predicted probability. `probabilities` are the model's softmax
    outputs on `data.splits["test"]`, in that order (`TrainResult.test_probabilities`).
    `target` picks the class the heatmap explains: "predicted" or "true". `served_as` says
    how the probabilities were made (`ServingConfig.describe`); the heat maps are of the
    original view.
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
    explainer = GradCam(model)
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
        figure = _figure(rows, f"{class_name}: Grad-CAM of the {target} class at layer "
                               f"{explainer.layer_name}, original view\nprobabilities as served"
                               + (f" ({served_as})" if served_as else ""))
        path = f"{names.GRADCAM_DIR}/{_file_stem(c, class_name)}.png"
        mlflow.log_figure(figure, path)
        paths.append(path)
    return GradcamArtifacts(explainer.layer_name, paths)


def gallery_figure(model: keras.Model, images: np.ndarray, classes: Sequence[int],
                   captions: Sequence[str], title: str, per_row: int = 4) -> Figure:
    """Images (decoded as the model reads them) beside the Grad-CAM of `classes` (the served
    predictions) on that original view, a caption each: the misclassified gallery of
    `-e evaluate`."""
    explanation = GradCam(model).explain(np.asarray(images), classes=classes)
    examples = [Example(image, heatmap, caption) for image, heatmap, caption in
                zip(images, explanation.heatmaps, captions)]
    rows = [examples[i:i + per_row] for i in range(0, len(examples), per_row)]
    return _figure(rows, title)


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


class ExplainedImage(NamedTuple):
    """One file of `explain_images`: the served prediction its overlay is captioned with."""

    file: Path  # relative to the images given
    png: Path  # the overlay written
    label: str  # what the served model answers
    probability: float  # its calibrated probability, over every test-time view
    caption: str


def explain_images(served, images: str | Path, output_dir: str | Path,
                   batch_size: int = 16) -> list[ExplainedImage]:
    """Grad-CAM of the served prediction for image files; writes one PNG per image.

    `served` is a loaded leukoml pyfunc (`leukoml.serving.load_served_model`); its `read`
    is the one prediction path of serving and `-e evaluate` (decode, crop, test-time
    views, temperature), so the caption's label and probability are what the served model
    answers. The heat map is Grad-CAM of that label on one view, the original (unflipped)
    image as the (first) member network reads it, and the caption says so. `images` is a
    file or a folder (searched recursively); unreadable files are skipped with a warning.
    Each PNG is `<output_dir>/<relative path>.gradcam.png`.
    """
    explainer = GradCam(served.keras_model)
    members = served.config.members
    view = "original view" + (f" by {members[0].backbone}" if len(members) > 1 else "")
    served_as = served.config.describe()
    files = _image_files(Path(images).expanduser())
    output_dir = Path(output_dir)
    # Read a chunk at a time: memory stays bounded, and a large folder still reaches the
    # traced step.
    chunk = 2 * TRACE_FROM_BATCHES * batch_size
    explained = []
    starts = range(0, len(files), chunk)
    for start in progress(starts, len(starts), f"Grad-CAM ({len(files)} images)", unit="chunk"):
        part = files[start:start + chunk]
        answer = served.read([path.read_bytes() for path, _ in part], skip_unreadable=True)
        for row, reason in answer.unreadable.items():
            warnings.warn(f"skipping {part[row][0]}: {reason}", stacklevel=2)
        if not len(answer.rows):
            continue
        pixels = answer.pixels[0]
        heatmaps = explainer.explain(pixels, classes=answer.labels,
                                     batch_size=batch_size).heatmaps
        for row, image, heatmap, label, probability in zip(
                answer.rows, pixels, heatmaps, answer.labels, answer.confidence):
            relative = part[row][1]
            name = served.class_names[label]
            caption = f"{name} {probability:.2f}\nserved: {served_as}\nheat map: {view}"
            figure = _figure([[Example(image, heatmap, caption)]], str(relative))
            destination = output_dir / relative.parent / f"{relative.name}.gradcam.png"
            destination.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(destination)
            explained.append(ExplainedImage(relative, destination, name, float(probability),
                                            caption))
    if not explained:
        raise LeukomlError(f"images: none of the files under {str(images)!r} could be decoded")
    return explained

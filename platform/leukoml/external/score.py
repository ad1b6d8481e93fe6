"""Score a served model on a lab's labelled images and log what a lab needs to decide.

The images are read exactly as the served model reads them (its decoding,
crop, test-time views and temperature). Scores come from the same evaluation
room as training, with intervals that resample sibling groups (augmented
copies of one field count once). Images of classes the model does not know
are reported apart; a second model is compared on the same images, paired.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from leukoml import names
from leukoml.data import sibling_ids
from leukoml.data.tracking import log_dataset_input
from leukoml.errors import LeukomlError
from leukoml.evaluation import (
    Evaluation,
    calibration_metrics,
    evaluate_predictions,
    paired_difference,
    plot_confusion,
)
from leukoml.evaluation.calibration import reliability_figure
from leukoml.external.plan import EvaluationPlan, ModelRef
from leukoml.progress import progress
from leukoml.serving import load_served_model
from leukoml.tracking import log_params

log = logging.getLogger(__name__)

_CHUNK = 64  # files per prediction call
HOLDS_UP = 0.02  # an external accuracy this close to the model's own test score holds up


@dataclass
class Predictions:
    """One model's answers on the readable images: calibrated probabilities, in file order."""

    files: list[str]
    probabilities: np.ndarray
    unreadable: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ExternalResult:
    evaluation: Evaluation | None  # on the images of known classes
    calibration: dict[str, float]
    table: pd.DataFrame  # one row per readable image
    true: np.ndarray  # per row: the model's class index, -1 for a class it does not know
    verdict: str
    comparison: dict = field(default_factory=dict)

    @property
    def known(self) -> np.ndarray:
        """Rows of images whose class the model knows: the ones that are scored."""
        return np.flatnonzero(self.true >= 0)

    def summary(self) -> dict:
        return {"metrics": self.evaluation.metrics if self.evaluation else {},
                "calibration": self.calibration, "verdict": self.verdict,
                "comparison": self.comparison}


def _served(ref: ModelRef, tta: str):
    model = load_served_model(ref.uri)
    if tta != "model":  # the views averaged, as asked; the temperature stays the model's
        model.config = replace(model.config, members=tuple(
            replace(m, tta=tta) for m in model.config.members))
    return model


def predict_files(model, root: Path, files: list[str]) -> Predictions:
    """Calibrated probabilities of `files` as served (`LeukocyteClassifier.read`), a chunk at
    a time; unreadable ones set aside."""
    kept, parts, unreadable = [], [], []
    chunks = [files[i:i + _CHUNK] for i in range(0, len(files), _CHUNK)]
    for chunk in progress(chunks, len(chunks), "scoring", unit="batch"):
        answer = model.read([(root / f).read_bytes() for f in chunk], skip_unreadable=True)
        parts.append(answer.probabilities)
        kept += [chunk[r] for r in answer.rows]
        unreadable += [(chunk[r], reason) for r, reason in answer.unreadable.items()]
    probabilities = np.concatenate(parts) if parts else np.zeros((0, len(model.class_names)))
    return Predictions(kept, probabilities, unreadable)


def _table(plan: EvaluationPlan, predictions: Predictions,
           model) -> tuple[pd.DataFrame, np.ndarray]:
    """The per-image table, and each image's model class index (-1: unknown to it)."""
    label_of = dict(zip(plan.images.files, plan.images.labels))
    classes = model.class_names
    probabilities = predictions.probabilities
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
    mapped = (plan.mapping.to_model[label_of[f]] for f in predictions.files)
    true = np.array([-1 if t is None else t for t in mapped], dtype=np.int64)
    return pd.DataFrame({
        "file": predictions.files,
        "folder_class": [label_of[f] for f in predictions.files],
        "true": [classes[t] if t >= 0 else "" for t in true],
        "predicted": [classes[p] for p in predicted],
        "confidence": confidence,
        "low_confidence": confidence < model.config.min_confidence,
        "correct": [bool(t == p) if t >= 0 else None for t, p in zip(true, predicted)],
    }), true


def verdict(evaluation: Evaluation | None, own: float | None, plan: EvaluationPlan,
            table: pd.DataFrame) -> str:
    """One paragraph: how the external score compares with the model's own test score."""
    if evaluation is None:
        return "No image of a class the model knows could be read: nothing was scored."
    ext, ci = evaluation.value("accuracy"), evaluation.interval("accuracy")
    n = int((table["true"] != "").sum())
    said = f"External accuracy {ext:.3f} (95% CI {ci}, {n} images)"
    if own is None:
        lines = [f"{said}; the model records no test score of its own to compare with."]
    elif ci.contains(own) or own - ext <= HOLDS_UP:
        lines = [f"{said} is in line with the model's own test accuracy {own:.3f}: "
                 "it holds up on these images."]
    else:
        lines = [f"{said} drops by {own - ext:.2f} from the model's own test accuracy "
                 f"{own:.3f}, outside the interval: validate before use."]
    unknown = table[table["true"] == ""]
    if len(unknown):
        flagged = float(unknown["low_confidence"].mean())
        lines.append(f"{len(unknown)} image(s) of class(es) the model does not know "
                     f"({', '.join(plan.mapping.unknown)}) were labelled anyway; "
                     f"{flagged:.0%} of them carry the low-confidence flag.")
    if plan.mapping.missing:
        lines.append(f"The folder has no image of {', '.join(plan.mapping.missing)}: "
                     "recall there is not measured.")
    aside = sum(plan.images.set_aside.values())
    if aside:
        lines.append(f"{aside} row(s)/file(s) set aside: "
                     + "; ".join(f"{k} {v}" for k, v in plan.images.set_aside.items()) + ".")
    return " ".join(lines)


def _mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test on the images one model gets right and the other wrong."""
    from scipy.stats import binomtest

    only_a = int((correct_a & ~correct_b).sum())
    only_b = int((~correct_a & correct_b).sum())
    p = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only_first_correct": only_a, "only_second_correct": only_b,
            "mcnemar_p_value": float(p)}


def compare(plan: EvaluationPlan, result: ExternalResult, mine: Predictions,
            groups: np.ndarray, other: Predictions) -> dict:
    """Paired comparison with `plan.other` on the known-class images both could read."""
    theirs = dict(zip(other.files, other.probabilities.argmax(axis=1)))
    rows = [r for r in result.known if mine.files[r] in theirs]
    if not rows:
        return {}
    y = result.true[rows]
    a = mine.probabilities[rows].argmax(axis=1)
    b = np.array([theirs[mine.files[r]] for r in rows])
    out = {"compared_to": plan.other.uri, "images": len(rows), **_mcnemar(a == y, b == y)}
    for metric in ("accuracy", "macro_f1"):
        d = paired_difference(y, a, b, groups[rows], len(plan.model.config.class_names),
                              metric=metric)
        out[metric] = {"first": d.a, "second": d.b, "difference": d.value,
                       "ci_low": d.interval.low, "ci_high": d.interval.high,
                       "distinguishable": d.distinguishable}
    d = out["accuracy"]
    out["summary"] = (
        f"{plan.model.uri} {d['first']:.3f} vs {plan.other.uri} {d['second']:.3f}: difference "
        f"{d['difference']:+.3f} (95% CI [{d['ci_low']:.3f}, {d['ci_high']:.3f}], McNemar "
        f"p = {out['mcnemar_p_value']:.3g}): "
        + ("a real difference" if d["distinguishable"] else "not distinguishable"))
    return out


def score(plan: EvaluationPlan) -> tuple[ExternalResult, object, Predictions]:
    """Predict, score, compare: (result, the loaded model, its predictions)."""
    root, files = plan.images.root, plan.images.files
    model = _served(plan.model, plan.request.tta)
    predictions = predict_files(model, root, files)
    if not predictions.files:
        raise LeukomlError(f"data: none of the {len(files)} images under {root} could be read")
    table, true = _table(plan, predictions, model)
    groups = sibling_ids(root, predictions.files)
    result = ExternalResult(None, {}, table, true, "")
    known, classes = result.known, list(model.class_names)
    if len(known):
        y, probabilities = true[known], predictions.probabilities[known]
        result.evaluation = evaluate_predictions(y, probabilities.argmax(axis=1), classes,
                                                 groups=groups[known], prefix=names.EXTERNAL)
        result.calibration = calibration_metrics(probabilities, y, classes, groups[known],
                                                 names.EXTERNAL)
    own = model.config.test_scores.get(names.TEST_ACCURACY)
    result.verdict = verdict(result.evaluation, own, plan, table)
    if plan.other is not None:
        other = predict_files(_served(plan.other, plan.request.tta), root, predictions.files)
        result.comparison = compare(plan, result, predictions, groups, other)
    return result, model, predictions


def _gallery(model, plan: EvaluationPlan, result: ExternalResult) -> None:
    wrong = result.table[result.table["correct"] == False]  # noqa: E712 (None = unknown)
    wrong = wrong.sort_values("confidence", ascending=False).head(plan.request.gallery)
    if wrong.empty or len(model.config.members) != 1:
        return  # an ensemble has no one network to explain
    from leukoml.explain import gallery_figure
    from leukoml.serving.runtime import decode_files

    pixels = decode_files([(plan.images.root / f).read_bytes() for f in wrong["file"]],
                          model.config.members[0], model.limits)
    classes = [model.class_names.index(p) for p in wrong["predicted"]]
    captions = [f"{Path(f).name}\ntrue: {t}\npred: {p} ({c:.2f})" for f, t, p, c in
                zip(wrong["file"], wrong["true"], wrong["predicted"], wrong["confidence"])]
    try:
        figure = gallery_figure(model.keras_model, pixels, classes, captions,
                                f"misclassified, most confident first ({len(wrong)}); "
                                f"served: {model.config.describe()}; heat map: original view")
    except Exception as exc:  # a diagnostic must not cost the evaluation
        log.warning("Grad-CAM gallery failed: %s", exc)
        return
    mlflow.log_figure(figure, names.EXTERNAL_GALLERY_PNG)


def log_result(plan: EvaluationPlan, result: ExternalResult, model,
               predictions: Predictions) -> None:
    """Everything to the active run; the metrics also on the evaluated logged model."""
    images = plan.images
    mlflow.set_tags({names.TAG_ROLE: names.Role.EVALUATE, names.TAG_EVALUATED_MODEL: plan.model.uri,
                     names.TAG_RUN_NAME: f"evaluate-{images.root.name}",
                     names.TAG_VERDICT: result.verdict[:500],
                     **({names.TAG_EVALUATED_VERSION: plan.model.version}
                        if plan.model.version else {}),
                     **({names.TAG_COMPARED_MODEL: plan.other.uri} if plan.other else {})})
    table = result.table
    log_params({  # skips what `mlflow run` logged from the entry point's parameters
        **asdict(plan.request),
        "labels_source": images.source, "n_images": len(images.files),
        "n_scored": len(result.known), "n_unknown_class": len(table) - len(result.known),
        "n_set_aside": sum(images.set_aside.values()) + len(predictions.unreadable)})
    dataset = log_dataset_input(pd.DataFrame({"file": images.files, "class": images.labels}),
                                images.root, f"{images.root.name}-external", "evaluation")
    metrics = {**(result.evaluation.metrics if result.evaluation else {}), **result.calibration}
    if metrics:
        mlflow.log_metrics(metrics, dataset=dataset)
        if plan.model.model_id:  # shown on the model's page and by search_logged_models
            try:
                mlflow.log_metrics(metrics, model_id=plan.model.model_id, dataset=dataset)
            except Exception as exc:  # e.g. a logged model in another tracking store
                log.warning("metrics not attached to model %s: %s", plan.model.model_id, exc)
    summary = {**result.summary(), "set_aside": dict(images.set_aside),
               "set_aside_examples": images.examples,
               "unreadable": predictions.unreadable, "class_mapping": plan.mapping.to_model,
               "missing_classes": plan.mapping.missing}
    mlflow.log_dict(json.loads(json.dumps(summary, default=str)), names.EXTERNAL_SUMMARY)
    mlflow.log_text(result.verdict + "\n", names.EXTERNAL_VERDICT)
    mlflow.log_table(table.astype({"correct": "string"}), names.EXTERNAL_PREDICTIONS)
    unknown = table[table["true"] == ""]
    if len(unknown):
        mlflow.log_text(unknown.groupby(["folder_class", "predicted"]).size()
                        .rename("images").reset_index().to_csv(index=False),
                        names.EXTERNAL_UNKNOWN_CSV)
    if result.evaluation is not None:
        known = result.known
        mlflow.log_figure(plot_confusion(result.evaluation.confusion,
                                         f"{images.root.name}: {len(known)} images"),
                          names.EXTERNAL_CONFUSION_PNG)
        mlflow.log_figure(reliability_figure(
            predictions.probabilities[known], None, result.true[known],
            model.config.members[0].temperature, title=f"reliability on {images.root.name}"),
            names.EXTERNAL_RELIABILITY_PNG)
    _gallery(model, plan, result)

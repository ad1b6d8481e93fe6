"""Everything `-e evaluate` checks before a model is loaded: model URIs, folder, class map.

A bad URI fails in seconds with the URI named (MLflow's registry and the
model's MLmodel metadata are read, not its weights), and a folder whose
classes do not meet the model's stops before anything is scored or logged.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from leukoml.config import EVALUATE_TTA
from leukoml.errors import LeukomlError
from leukoml.external.labelled import (
    ClassMapping,
    LabelledImages,
    map_classes,
    read_class_map,
    read_labelled,
)
from leukoml.serving import ServingConfig, serving_config


@dataclass(frozen=True)
class EvaluateRequest:
    """What the user asked for, as given on the command line."""

    model_uri: str
    data: str
    labels: str = ""
    class_map: str = ""
    tta: str = "model"  # as the model was registered, or none / flips / dihedral
    compare_to: str = ""
    gallery: int = 16  # misclassified images shown with Grad-CAM


@dataclass(frozen=True)
class ModelRef:
    """A model URI resolved: its serving config and, when registered, name/version/id."""

    uri: str
    config: ServingConfig
    version: str = ""  # "wbc-classifier/3" for a registered version
    model_id: str = ""  # the MLflow 3 logged model its metrics attach to


@dataclass
class EvaluationPlan:
    request: EvaluateRequest
    model: ModelRef
    images: LabelledImages
    mapping: ClassMapping
    other: ModelRef | None = None


def resolve_model(uri: str, field: str = "model_uri") -> ModelRef:
    """The serving config and registry identity of `uri` (given as `field`); a `LeukomlError`
    naming both."""
    if not uri:
        raise LeukomlError(f"{field}: empty; e.g. models:/wbc-classifier@champion")
    config = serving_config(uri, field)  # reads MLmodel metadata only: no TensorFlow
    version, model_id = "", ""
    if uri.startswith("models:/"):
        ref = uri.removeprefix("models:/").strip("/")
        client = MlflowClient()
        try:
            if "@" in ref:
                name, alias = ref.split("@", 1)
                found = client.get_model_version_by_alias(name, alias)
            elif "/" in ref:
                name, number = ref.split("/", 1)
                found = client.get_model_version(name, number)
            else:  # models:/<model_id> of a logged model
                found, model_id = None, ref
        except Exception as exc:
            raise LeukomlError(f"{field}: cannot resolve {uri}: {str(exc)[:300]}") from None
        if found is not None:
            version, model_id = f"{found.name}/{found.version}", found.model_id or ""
            source = found.source or ""
            if not model_id and source.startswith("models:/m-"):  # the logged model it holds
                model_id = source.removeprefix("models:/").strip("/")
    return ModelRef(uri, config, version, model_id)


def plan_evaluation(request: EvaluateRequest) -> EvaluationPlan:
    """Check every input; return what scoring needs. Raises one `LeukomlError`."""
    if request.tta not in EVALUATE_TTA:
        raise LeukomlError(f"tta: {request.tta!r}; use one of {', '.join(EVALUATE_TTA)}")
    if request.gallery < 0:
        raise LeukomlError(f"gallery: {request.gallery}; use 0 (none) or more")
    model = resolve_model(request.model_uri)
    other = resolve_model(request.compare_to, "compare_to") if request.compare_to else None
    if other is not None and list(other.config.class_names) != list(model.config.class_names):
        raise LeukomlError(
            f"compare_to: {other.uri} knows the classes {', '.join(other.config.class_names)}, "
            f"{model.uri} knows {', '.join(model.config.class_names)}: a paired comparison "
            "needs the same classes")
    explicit = read_class_map(request.class_map)
    images = read_labelled(request.data, request.labels)
    mapping = map_classes(images.labels, list(model.config.class_names), explicit)
    return EvaluationPlan(request, model, images, mapping, other)

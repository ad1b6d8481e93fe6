"""The backbone registry and the classifier builder."""

from leukoml.backbones._classifier import (
    LOGITS_LAYER,
    PROBABILITIES_LAYER,
    build_classifier,
    check_image_size,
    check_weights,
    preprocess_fn,
)
from leukoml.backbones._registry import (
    BACKBONES,
    TIERS,
    Backbone,
    get_backbone,
    list_backbones,
)

__all__ = [
    "BACKBONES",
    "LOGITS_LAYER",
    "PROBABILITIES_LAYER",
    "TIERS",
    "Backbone",
    "build_classifier",
    "check_image_size",
    "check_weights",
    "get_backbone",
    "list_backbones",
    "preprocess_fn",
]

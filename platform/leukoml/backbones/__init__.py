"""The backbone registry (light: no TensorFlow import). May import only errors; data,
training, explain, serving and study look backbones up here.

The Keras side, `build_classifier` and `preprocess_fn`, lives in
`leukoml.backbones.classifier`.
"""

from leukoml.backbones._registry import (
    BACKBONES,
    TIERS,
    Backbone,
    check_image_size,
    check_weights,
    get_backbone,
    list_backbones,
)

__all__ = [
    "BACKBONES",
    "TIERS",
    "Backbone",
    "check_image_size",
    "check_weights",
    "get_backbone",
    "list_backbones",
]

"""The explain room: Grad-CAM heatmaps (`core`) and their figures (`figures`).

May import backbones (the head layer names), data (decoding), names and errors.
"""

from leukoml.explain.core import (
    DegenerateHeatmapWarning,
    Explanation,
    GradCam,
    find_target_layer,
    overlay,
)
from leukoml.explain.figures import GradcamArtifacts, explain_images, gallery_figure, log_gradcam

__all__ = [
    "DegenerateHeatmapWarning",
    "Explanation",
    "GradCam",
    "GradcamArtifacts",
    "explain_images",
    "gallery_figure",
    "find_target_layer",
    "log_gradcam",
    "overlay",
]

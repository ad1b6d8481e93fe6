"""leukoml: compare CNN backbones on white-blood-cell images, tracked in MLflow."""

__version__ = "0.1.0"

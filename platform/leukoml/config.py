"""Run configuration: what one training run takes, validated in one place.

Every error names the field, and is raised before any data is read or any
model is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from leukoml import names
from leukoml.backbones import check_image_size, check_weights, get_backbone
from leukoml.errors import LeukomlError

CLASS_WEIGHTS = ("none", "balanced")


@dataclass
class TrainConfig:
    """One training run; every field is logged as an MLflow param of the same name."""

    data: str = "synthetic"
    backbone: str = "Asghar2022CNN"
    learning_rate: float = 1e-3
    batch_size: int = 32
    patience: int = 5
    max_epochs: int = 30
    image_size: int = 64
    weights: str = "none"
    seed: int = 0
    freeze_base: bool = False
    augment: bool = True
    monitor: str = "val_loss"
    class_weight: str = "none"
    mixed_precision: bool = False

    def validated(self) -> "TrainConfig":
        """A checked copy, or a `LeukomlError` naming the field, before any work starts."""
        entry = get_backbone(self.backbone)
        check_image_size(entry, self.image_size)
        checks = {
            "learning_rate": 0 < self.learning_rate < 10,
            "batch_size": self.batch_size >= 1,
            "patience": self.patience >= 0,
            "max_epochs": self.max_epochs >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise LeukomlError(f"{key}: {getattr(self, key)!r} is out of range")
        if self.class_weight not in CLASS_WEIGHTS:
            raise LeukomlError(f"class_weight: {self.class_weight!r}; use one of {CLASS_WEIGHTS}")
        monitors = {names.val(m) for m in names.EPOCH_METRICS}
        if self.monitor not in monitors:
            raise LeukomlError(f"monitor: {self.monitor!r}; use one of {sorted(monitors)}")
        return TrainConfig(**{**asdict(self), "weights": check_weights(self.weights)})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

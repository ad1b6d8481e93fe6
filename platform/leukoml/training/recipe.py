"""The training recipe of a `TrainConfig`: optimiser, learning-rate schedule, loss.

Adam or AdamW (decoupled weight decay); a constant rate, a cosine decay after
a linear warm-up, or reduce-on-plateau of the monitored metric; cross-entropy
with optional label smoothing (labels are fed one-hot for it). The peak
rate defaults to the backbone family's safe value (`Backbone.learning_rate`).
"""

from __future__ import annotations

import keras

from leukoml import names
from leukoml.config import TrainConfig

PLATEAU_FACTOR = 0.3
WARMUP_START = 0.01  # the warm-up starts at this share of the peak rate
COSINE_FLOOR = 0.01  # and the cosine ends at this share


def learning_rate(config: TrainConfig, steps_per_epoch: int):
    """A float, or a Keras schedule stepping once per batch."""
    peak = config.peak_learning_rate()
    if config.schedule != "cosine":
        return peak
    warmup = min(config.warmup_epochs, max(config.max_epochs - 1, 0)) * steps_per_epoch
    decay = max(1, config.max_epochs * steps_per_epoch - warmup)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak * WARMUP_START if warmup else peak,
        decay_steps=decay, alpha=COSINE_FLOOR,
        warmup_target=peak if warmup else None, warmup_steps=warmup)


def optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = learning_rate(config, steps_per_epoch)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(rate)


def loss(config: TrainConfig) -> keras.losses.Loss:
    """Cross-entropy on one-hot labels (see `make_dataset(one_hot=...)`)."""
    return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)


def schedule_callbacks(config: TrainConfig) -> list[keras.callbacks.Callback]:
    if config.schedule != "plateau":
        return []
    return [keras.callbacks.ReduceLROnPlateau(
        monitor=config.monitor, mode=names.direction(config.monitor), factor=PLATEAU_FACTOR,
        patience=max(1, config.patience // 3), min_lr=config.peak_learning_rate() * 1e-3)]

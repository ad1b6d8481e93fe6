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


@keras.saving.register_keras_serializable("leukoml")
class ResizableCosine(keras.optimizers.schedules.CosineDecay):
    """Keras' cosine decay after a linear warm-up, whose length a running fit may shorten
    (`fit_into`): the decay steps are a variable the compiled train step reads, so a trial
    that has less time than planned still ends its schedule at the floor."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decay_steps = keras.Variable(float(self.decay_steps), trainable=False,
                                          name="cosine_decay_steps")

    def fit_into(self, total_steps: int) -> None:
        """End the decay after `total_steps` optimizer steps in all (warm-up included)."""
        self.decay_steps.assign(float(max(1, total_steps - self.warmup_steps)))

    def get_config(self):
        return {**super().get_config(), "decay_steps": float(self.decay_steps.numpy())}


def learning_rate(config: TrainConfig, steps_per_epoch: int):
    """A float, or a Keras schedule stepping once per batch."""
    peak = config.peak_learning_rate()
    if config.schedule != "cosine":
        return peak
    warmup = min(config.warmup_epochs, max(config.max_epochs - 1, 0)) * steps_per_epoch
    decay = max(1, config.max_epochs * steps_per_epoch - warmup)
    return ResizableCosine(
        initial_learning_rate=peak * WARMUP_START if warmup else peak,
        decay_steps=decay, alpha=COSINE_FLOOR,
        warmup_target=peak if warmup else None, warmup_steps=warmup)


def fit_schedule(model: keras.Model, total_steps: int) -> None:
    """Shorten a running fit's cosine schedule to end after `total_steps` (other schedules
    do not depend on the number of epochs)."""
    schedule = getattr(model.optimizer, "_learning_rate", None)  # Keras keeps it there
    if isinstance(schedule, ResizableCosine):
        schedule.fit_into(total_steps)


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

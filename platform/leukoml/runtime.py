"""Devices and numeric policy for one process: GPU if TensorFlow sees one."""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


class _DropRetracingWarnings(logging.Filter):
    """A study builds a new model per trial, so each trial's `predict` is a new
    tf.function and TensorFlow warns of "retracing" that is expected and harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


tf.get_logger().addFilter(_DropRetracingWarnings())


def configure_devices(mixed_precision: bool = False) -> str:
    """Turn on GPU memory growth (so workers can share a card); return a device label.

    Mixed precision (float16 compute, float32 weights) is used only on a GPU;
    on a CPU it is slower than float32, so the request is logged and ignored.
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: growth was set then
            pass
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        device = f"GPU:0 {details.get('device_name', '')}".strip()
        if len(gpus) > 1:
            device += f" (+{len(gpus) - 1} more visible)"
    else:
        device = "CPU"
    policy = "float32"
    if mixed_precision:
        if gpus:
            policy = "mixed_float16"
        else:
            log.warning("mixed_precision requested but no GPU is visible; training in float32")
    keras.mixed_precision.set_global_policy(policy)
    log.info("training on %s with %s", device, policy)
    return device

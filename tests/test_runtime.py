"""Process set-up: device choice and the TensorFlow log noise a study must not show."""

from __future__ import annotations

import logging

import tensorflow as tf

from leukoml.runtime import configure_devices


def test_cpu_device_and_float32_policy_when_no_gpu_is_visible():
    import keras

    device = configure_devices(mixed_precision=True)  # ignored without a GPU
    assert device == "CPU" or device.startswith("GPU:0")
    if device == "CPU":
        assert keras.mixed_precision.global_policy().name == "float32"


def test_expected_retracing_warnings_are_dropped_and_other_warnings_kept(caplog):
    logger = tf.get_logger()
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("5 out of the last 9 calls to <function f> triggered tf.function "
                       "retracing. Tracing is expensive")
        logger.warning("something else went wrong")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["something else went wrong"]

"""Process set-up: device choice and the TensorFlow log noise a study must not show."""

from __future__ import annotations

import logging

import keras
import pytest
import tensorflow as tf

from leukoml.runtime import configure_devices


@pytest.fixture(autouse=True)
def restore_policy():
    """configure_devices sets Keras' global policy: later tests get theirs back."""
    before = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(before)


@pytest.fixture
def visible_gpus(monkeypatch):
    """Which GPUs TensorFlow reports, set by the test (the machine's own are ignored):
    the hardware boundary, so both branches run on any machine."""
    grown = []

    def set_gpus(*names: str):
        gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU")
                for i in range(len(names))]
        monkeypatch.setattr(tf.config, "list_physical_devices",
                            lambda kind=None: gpus if kind == "GPU" else [])
        monkeypatch.setattr(tf.config.experimental, "set_memory_growth",
                            lambda gpu, on: grown.append((gpu.name, on)))
        monkeypatch.setattr(tf.config.experimental, "get_device_details",
                            lambda gpu: {"device_name": names[int(gpu.name[-1])]})
        return grown

    return set_gpus


def test_without_a_gpu_mixed_precision_is_ignored_and_said_so(visible_gpus, caplog):
    visible_gpus()
    with caplog.at_level(logging.WARNING, logger="leukoml.runtime"):
        assert configure_devices(mixed_precision=True) == "CPU"
    assert keras.mixed_precision.global_policy().name == "float32"
    assert "no GPU is visible; training in float32" in caplog.text


def test_on_gpus_memory_grows_and_mixed_precision_is_used(visible_gpus):
    grown = visible_gpus("Tesla T4", "Tesla T4")
    assert configure_devices(mixed_precision=True) == "GPU:0 Tesla T4 (+1 more visible)"
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    assert grown == [("/physical_device:GPU:0", True), ("/physical_device:GPU:1", True)]
    assert configure_devices(mixed_precision=False) == "GPU:0 Tesla T4 (+1 more visible)"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_expected_retracing_warnings_are_dropped_and_other_warnings_kept(caplog):
    logger = tf.get_logger()
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("5 out of the last 9 calls to <function f> triggered tf.function "
                       "retracing. Tracing is expensive")
        logger.warning("something else went wrong")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["something else went wrong"]

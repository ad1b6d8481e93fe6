"""Feed decoded images to Keras with tf.data: shuffle, batch, augment, prefetch.

Batches are gathered from the memory-mapped decode cache by index, so no
image is decoded again and no split is copied whole into a graph constant.
Preprocessing and augmentation run as TensorFlow ops on whole batches.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf


def _augment(x: tf.Tensor, seed: int) -> tf.Tensor:
    """The 8 flips/rotations of a square image, drawn per image: cells have no up."""
    n = tf.shape(x)[0]
    flip_lr = tf.random.uniform([n, 1, 1, 1], seed=seed) < 0.5
    flip_ud = tf.random.uniform([n, 1, 1, 1], seed=seed + 1) < 0.5
    transpose = tf.random.uniform([n, 1, 1, 1], seed=seed + 2) < 0.5
    x = tf.where(flip_lr, tf.reverse(x, axis=[2]), x)
    x = tf.where(flip_ud, tf.reverse(x, axis=[1]), x)
    return tf.where(transpose, tf.transpose(x, [0, 2, 1, 3]), x)


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    batch_size: int,
    preprocess: Callable,
    *,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of (preprocessed float32 images, int labels) for `indices`."""
    size = images.shape[1]
    indices = np.asarray(indices, dtype=np.int64)

    def gather(batch_idx: np.ndarray):
        return np.asarray(images[batch_idx]), labels[batch_idx].astype(np.int32)

    ds = tf.data.Dataset.from_tensor_slices(indices)
    if shuffle:
        ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def load(batch_idx):
        x, y = tf.numpy_function(gather, [batch_idx], [tf.uint8, tf.int32])
        x = tf.ensure_shape(x, [None, size, size, 3])
        y = tf.ensure_shape(y, [None])
        x = tf.cast(x, tf.float32)
        if augment:
            x = _augment(x, seed)
        return preprocess(x), y

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)

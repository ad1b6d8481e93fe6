"""Feed decoded images to Keras with tf.data: shuffle, batch, augment, prefetch.

Batches are gathered from the memory-mapped decode cache by index, so no
image is decoded again and no split is copied whole into a graph constant.
Augmentation runs as TensorFlow ops on whole batches; the models scale their
own input (`leukoml.backbones.classifier`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: str = "none",
    seed: int = 0,
    one_hot: int = 0,
) -> tf.data.Dataset:
    """Batches of (float32 RGB images in [0, 255], labels) for `indices`.

    Labels are ints, or one-hot rows of `one_hot` classes (for label smoothing).
    `augment` is an `Augmenter` kind (none, flips, cell), drawn anew every epoch.
    """
    from leukoml.data.augment import Augmenter

    augmenter = Augmenter(augment, seed)
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
        x = augmenter(tf.cast(x, tf.float32))
        if one_hot:
            y = tf.one_hot(y, one_hot)
        return x, y

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)

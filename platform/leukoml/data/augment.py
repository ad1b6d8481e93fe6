"""Cell-aware augmentation, on the fly, as TensorFlow ops on whole batches in `tf.data`.

Blood cells have no up: `flips` draws one of the 8 flips / right-angle turns
per image. `cell` adds what smears and scanners vary: any-angle rotation and
zoom (Keras preprocessing layers, reflected borders), brightness / contrast /
saturation / hue jitter, and a stain jitter in haematoxylin-eosin-DAB optical
density space (Ruifrok & Johnston's matrix, the perturbation of Tellez et al.
2018). Images stay float32 RGB in [0, 255]; the model scales its own input.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

AUGMENTATIONS = ("none", "flips", "cell")
# RGB optical density of haematoxylin, eosin and DAB (rows), as in scikit-image's rgb2hed
_HED_FROM_RGB = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = _HED_FROM_RGB / np.linalg.norm(_HED_FROM_RGB, axis=1, keepdims=True)
STAIN_SCALE = 0.05  # per image and stain: density x U(1 - s, 1 + s) + U(-s, s) / 2
ROTATION = 0.5  # of a full turn, both ways: any angle
ZOOM = 0.15


def dihedral(x: tf.Tensor, seed: int) -> tf.Tensor:
    """One of the 8 flips/right-angle rotations of each square image."""
    n = tf.shape(x)[0]
    flip_lr = tf.random.uniform([n, 1, 1, 1], seed=seed) < 0.5
    flip_ud = tf.random.uniform([n, 1, 1, 1], seed=seed + 1) < 0.5
    transpose = tf.random.uniform([n, 1, 1, 1], seed=seed + 2) < 0.5
    x = tf.where(flip_lr, tf.reverse(x, axis=[2]), x)
    x = tf.where(flip_ud, tf.reverse(x, axis=[1]), x)
    return tf.where(transpose, tf.transpose(x, [0, 2, 1, 3]), x)


def stain_jitter(x: tf.Tensor, seed: int, scale: float = STAIN_SCALE) -> tf.Tensor:
    """Scale and shift each stain's optical density, per image."""
    to_hed = tf.constant(np.linalg.inv(_HED_FROM_RGB), tf.float32)
    from_hed = tf.constant(_HED_FROM_RGB, tf.float32)
    n = tf.shape(x)[0]
    density = -tf.math.log((x + 1.0) / 256.0)
    hed = tf.einsum("nhwc,cd->nhwd", density, to_hed)
    alpha = tf.random.uniform([n, 1, 1, 3], 1 - scale, 1 + scale, seed=seed)
    beta = tf.random.uniform([n, 1, 1, 3], -scale / 2, scale / 2, seed=seed + 1)
    density = tf.einsum("nhwd,dc->nhwc", hed * alpha + beta, from_hed)
    return tf.clip_by_value(256.0 * tf.exp(-density) - 1.0, 0.0, 255.0)


class Augmenter:
    """A batch augmentation for `tf.data`: `augmenter(images)`; layers built once."""

    def __init__(self, kind: str, seed: int = 0):
        if kind not in AUGMENTATIONS:
            raise ValueError(f"augment: {kind!r}; use one of {AUGMENTATIONS}")
        import keras

        self.kind, self.seed = kind, seed
        self.layers = []
        if kind == "cell":
            self.layers = [
                keras.layers.RandomRotation(ROTATION, fill_mode="reflect", seed=seed),
                keras.layers.RandomZoom(ZOOM, fill_mode="reflect", seed=seed + 1),
                keras.layers.RandomColorJitter(value_range=(0, 255), brightness_factor=0.1,
                                               contrast_factor=0.15, saturation_factor=(0.4, 0.6),
                                               hue_factor=0.02, seed=seed + 2),
            ]

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        if self.kind == "none":
            return x
        x = dihedral(x, self.seed)
        for layer in self.layers:
            x = layer(x, training=True)
        if self.kind == "cell":
            x = stain_jitter(x, self.seed + 3)
        return tf.clip_by_value(x, 0.0, 255.0)


TTA_VIEWS = {"none": 1, "flips": 4, "dihedral": 8}


def dihedral_view(x: tf.Tensor, k: int) -> tf.Tensor:
    """The k-th of the 8 flips/turns of a batch of square images (k = 0 is the identity):
    bit 0 flips left-right, bit 1 up-down, bit 2 transposes. Views 0-3 are the flips."""
    if k & 1:
        x = tf.reverse(x, axis=[2])
    if k & 2:
        x = tf.reverse(x, axis=[1])
    if k & 4:
        x = tf.transpose(x, [0, 2, 1, 3])
    return x

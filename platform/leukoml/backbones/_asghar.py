"""The proposed CNN of Asghar et al. (2022), Section 2.3.

Three 3x3 ReLU convolutions (32, 64 with stride 2, 64 filters), each followed
by 2x2 max pooling with stride 1; the head (dropout 0.2, dense 64, softmax) is
added by the classifier builder. At 100x100 px this is the paper's 7.9 M
parameter model.
"""

from __future__ import annotations

import keras


def asghar2022_features(inputs):
    x = inputs
    for i, (filters, stride) in enumerate(((32, 1), (64, 2), (64, 1)), start=1):
        x = keras.layers.Conv2D(filters, 3, strides=stride, activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(pool_size=2, strides=1, name=f"pool{i}")(x)
    return x

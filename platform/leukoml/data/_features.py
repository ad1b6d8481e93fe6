"""Local features of every image for the sibling search, streamed to disk.

One SIFT pass per image at FEATURE_SIDE px (grey): keypoints, RootSIFT
descriptors and a half-scale thumbnail for the correlation check. The mirror
image's descriptors are not computed again: a horizontal flip maps each
keypoint to its mirror position and permutes its descriptor (rows of the 4x4
grid reversed, orientation bins negated), `MIRROR` below, checked against a
second SIFT pass by `tests/test_data_siblings.py`.

Rows live in fixed-size slots of three flat files (`FeatureStore`), written
as they arrive from the worker processes and read back by position, so the
parent's memory does not grow with the number of images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukoml.data._decode import ImageError, decode_gray

FEATURE_SIDE = 160  # px, longest side for SIFT; measured against 320 by benchmarks/siblings.py
MAX_KEYPOINTS = 128  # strongest by response
THUMB = FEATURE_SIDE // 2  # thumbnails at half the feature scale, zero-padded to THUMB x THUMB
DESCRIPTOR = 128
# A horizontal flip reverses the rows of SIFT's 4x4 spatial grid and negates its 8 bins.
MIRROR = np.arange(DESCRIPTOR).reshape(4, 4, 8)[::-1][:, :, (-np.arange(8)) % 8].reshape(-1)

_LAYOUT = {  # file -> (dtype, shape of one row)
    "descriptors": (np.uint8, (MAX_KEYPOINTS, DESCRIPTOR)),
    "points": (np.float32, (MAX_KEYPOINTS, 2)),
    "thumbs": (np.uint8, (THUMB, THUMB)),
}


@dataclass
class ImageFeatures:
    """One image's keypoints (plain and mirrored), RootSIFT x 512 descriptors and thumbnail."""

    points: tuple[np.ndarray, np.ndarray]  # (n, 2) float32: plain, mirrored
    descriptors: tuple[np.ndarray, np.ndarray]  # (n, 128) uint8: plain, mirrored
    thumb: np.ndarray  # (h/2, w/2) grey

    @classmethod
    def from_plain(cls, points: np.ndarray, descriptors: np.ndarray, thumb: np.ndarray,
                   width: int) -> "ImageFeatures":
        mirrored = points.copy()
        mirrored[:, 0] = width - 0.5 - mirrored[:, 0]  # OpenCV SIFT's pixel-centre convention
        return cls((points, mirrored), (descriptors, descriptors[:, MIRROR]), thumb)


def sift_features(grey: np.ndarray, sift=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points, RootSIFT x 512 uint8 descriptors, half-scale thumbnail) of a grey image."""
    import cv2

    sift = sift or cv2.SIFT_create(nfeatures=MAX_KEYPOINTS)
    keypoints, desc = sift.detectAndCompute(grey, None)
    height, width = grey.shape
    thumb = cv2.resize(grey, (max(1, width // 2), max(1, height // 2)),
                       interpolation=cv2.INTER_AREA)
    if desc is None or not len(keypoints):
        return np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR), np.uint8), thumb
    desc = np.sqrt(desc / (desc.sum(axis=1, keepdims=True) + 1e-7))  # RootSIFT (Hellinger)
    points = np.array([k.pt for k in keypoints], np.float32)
    order = np.argsort([-k.response for k in keypoints], kind="stable")[:MAX_KEYPOINTS]
    return points[order], np.clip(desc[order] * 512, 0, 255).astype(np.uint8), thumb


def feature_row(path: str, side: int = FEATURE_SIDE) -> tuple | None:
    """What a worker sends back for one file: (count, width, points, descriptors, thumb);
    None if it cannot be decoded."""
    import cv2

    cv2.setNumThreads(1)  # one process per core already: OpenCV's own threads only contend
    try:
        grey = decode_gray(Path(path).read_bytes(), side)
    except (OSError, ImageError):
        return None
    points, desc, thumb = sift_features(grey)
    return len(points), grey.shape[1], points, desc, thumb


def image_features(path: str, side: int = FEATURE_SIDE) -> ImageFeatures | None:
    """Features of an image file at `side` px; None if it cannot be decoded."""
    row = feature_row(path, side)
    if row is None:
        return None
    _, width, points, desc, thumb = row
    return ImageFeatures.from_plain(points, desc, thumb, width)


def _row_bytes(name: str) -> int:
    dtype, shape = _LAYOUT[name]
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


class FeatureStore:
    """Fixed-size rows of features in flat files under `folder`, by image position."""

    def __init__(self, folder: Path, n: int):
        self.folder, self.n = Path(folder), n
        self.count = np.zeros(n, np.int16)  # keypoints per image (0: unreadable or blank)
        self.width = np.zeros(n, np.int16)  # of the feature image (mirrors keypoints)
        self.thumb_shape = np.zeros((n, 2), np.int16)
        self._files: dict[str, int] = {}
        self._sealed = False  # reopened read-only

    def _fd(self, name: str, write: bool = False) -> int:
        if name not in self._files:
            flags = os.O_RDWR | os.O_CREAT if write else os.O_RDONLY
            self._files[name] = os.open(self.folder / f"{name}.bin", flags, 0o600)
            if write:  # every slot exists (sparse, zero) even if its image is never written
                os.ftruncate(self._files[name], self.n * _row_bytes(name))
        return self._files[name]

    def write(self, i: int, row: tuple | None) -> None:
        if row is None:
            return
        count, width, points, desc, thumb = row
        self.count[i], self.width[i] = count, width
        self.thumb_shape[i] = thumb.shape
        for name, value in (("descriptors", desc), ("points", points), ("thumbs", thumb)):
            dtype, shape = _LAYOUT[name]
            slot = np.zeros(shape, dtype)
            slot[tuple(slice(0, s) for s in value.shape)] = value
            os.pwrite(self._fd(name, write=True), slot.tobytes(), i * slot.nbytes)

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one file (padded slots)."""
        dtype, shape = _LAYOUT[name]
        size = _row_bytes(name)
        data = os.pread(self._fd(name, write=not self._sealed), size * (stop - start),
                        size * start)
        return np.frombuffer(data, dtype).reshape(stop - start, *shape)

    def descriptors(self, start: int, stop: int) -> list[np.ndarray]:
        block = self.rows("descriptors", start, stop)
        return [block[k, :self.count[i]] for k, i in enumerate(range(start, stop))]

    def features(self, i: int) -> ImageFeatures:
        n, (h, w) = self.count[i], self.thumb_shape[i]
        return ImageFeatures.from_plain(self.rows("points", i, i + 1)[0, :n].copy(),
                                        self.rows("descriptors", i, i + 1)[0, :n],
                                        self.rows("thumbs", i, i + 1)[0, :h, :w].copy(),
                                        int(self.width[i]))

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def seal(self) -> str:
        """Write the per-image sizes beside the rows; returns what `reopen` takes."""
        np.savez(self.folder / "index.npz", count=self.count, width=self.width,
                 thumb_shape=self.thumb_shape)
        return str(self.folder)

    @classmethod
    def reopen(cls, folder: str) -> "FeatureStore":
        """A sealed store, read-only (in a verification worker)."""
        with np.load(Path(folder) / "index.npz") as index:
            store = cls(Path(folder), len(index["count"]))
            store.count, store.width = index["count"], index["width"]
            store.thumb_shape = index["thumb_shape"]
        store._sealed = True
        return store

"""Siblings: images of one field or cell under rotation, flips, shifts, shear, zoom or light.

Many public WBC sets were built augment-first, split-later: the Kaggle
blood-cell TRAIN folder holds ~35 geometric copies of each of ~270 smears. A
split that puts siblings on both sides scores memory, not generalisation, and
pixel hashes (`_leakage`) miss them. This module groups them with OpenCV,
scikit-learn and SciPy; nothing here is a hand-written detector:

1. features   SIFT keypoints with RootSIFT descriptors of each image in grey
              (longest side <= FEATURE_SIDE px), and of its mirror image: SIFT
              is rotation- and scale-invariant but not mirror-invariant.
2. shortlist  a bag of visual words (MiniBatchKMeans), tf-idf weighted; the
              cosine nearest neighbours of each image among all images and,
              separately, among all mirror images (so a mirrored sibling is
              never crowded out by unmirrored ones).
3. verify     ratio-test matches, a RANSAC affine transform with at least
              MIN_INLIERS inliers, and the candidate warped onto the image
              correlating (NCC) at least MIN_CORRELATION over at least
              MIN_OVERLAP of it. On Kaggle, chance matches between different
              fields reach 9 inliers but correlate <= 0.43; siblings >= 0.76; on the
              synthetic renders (one round cell each) distinct images reach 11
              inliers and 0.79.
4. group      union-find over verified pairs. A candidate already in the
              image's group is not verified again, so the cost grows with the
              number of images, not with their pairs.

Measured against the un-augmented originals by `benchmarks/siblings.py`.
Results are cached per dataset fingerprint, like the decode cache.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukoml.data._decode import ImageError, decode_gray
from leukoml.data._parallel import parallel_map
from leukoml.progress import progress

log = logging.getLogger(__name__)

FEATURE_SIDE = 320  # px, longest side for SIFT: the Kaggle fields' own size
MAX_KEYPOINTS = 400
RATIO = 0.8  # Lowe's ratio test
RANSAC_PIXELS = 4.0
MIN_INLIERS = 12
MIN_CORRELATION = 0.75
MIN_OVERLAP = 0.1  # share of the image the warped candidate must cover
DARK = 8  # grey level under which a pixel counts as fill (rotation corners, borders)
NEIGHBOURS = 30  # shortlist per image, from each of the plain and mirror databases
TRIES = 6  # verifications per image, of candidates not already in its group
VOCABULARY = 256
_FORMAT = 1


@dataclass
class ImageFeatures:
    points: tuple[np.ndarray, np.ndarray]  # (n, 2) float32 keypoints: plain, mirrored
    descriptors: tuple[np.ndarray, np.ndarray]  # (n, 128) uint8 RootSIFT x 512: plain, mirrored
    thumb: np.ndarray  # grey image at half the feature scale, for the correlation check


def _sift(grey: np.ndarray, sift) -> tuple[np.ndarray, np.ndarray]:
    keypoints, desc = sift.detectAndCompute(grey, None)
    if desc is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8)
    desc = np.sqrt(desc / (desc.sum(axis=1, keepdims=True) + 1e-7))  # RootSIFT (Hellinger)
    points = np.array([k.pt for k in keypoints], np.float32)
    return points, np.clip(desc * 512, 0, 255).astype(np.uint8)


def image_features(path: str) -> ImageFeatures | None:
    """SIFT of an image file and of its mirror image; None if it cannot be decoded."""
    import cv2

    cv2.setNumThreads(1)  # one process per core already: OpenCV's own threads only contend
    try:
        grey = decode_gray(Path(path).read_bytes(), FEATURE_SIDE)
    except (OSError, ImageError):
        return None
    sift = cv2.SIFT_create(nfeatures=MAX_KEYPOINTS)
    plain, mirror = _sift(grey, sift), _sift(cv2.flip(grey, 1), sift)
    height, width = grey.shape
    thumb = cv2.resize(grey, (max(1, width // 2), max(1, height // 2)),
                       interpolation=cv2.INTER_AREA)
    return ImageFeatures((plain[0], mirror[0]), (plain[1], mirror[1]), thumb)


def correlation(a: np.ndarray, b: np.ndarray, transform: np.ndarray) -> float:
    """NCC of grey image `a` with `b` warped onto it (`transform` maps a's pixels to b's)."""
    import cv2

    height, width = a.shape
    warped = cv2.warpAffine(b, transform, (width, height),
                            flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR, borderValue=0)
    valid = (warped > DARK) & (a > DARK)
    if valid.mean() < MIN_OVERLAP:
        return 0.0
    x, y = a[valid].astype(np.float32), warped[valid].astype(np.float32)
    x -= x.mean()
    y -= y.mean()
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / denominator if denominator > 0 else 0.0


def verify(a: ImageFeatures, b: ImageFeatures, mirrored: bool, matcher) -> tuple[int, float]:
    """(RANSAC affine inliers, correlation) of `a` against `b` (or `b`'s mirror image)."""
    import cv2

    side = int(mirrored)
    da, db = a.descriptors[0], b.descriptors[side]
    if len(da) < MIN_INLIERS or len(db) < MIN_INLIERS:
        return 0, 0.0
    pairs = matcher.knnMatch(da.astype(np.float32), db.astype(np.float32), k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < MIN_INLIERS:
        return 0, 0.0
    src = a.points[0][[m.queryIdx for m in good]]
    dst = b.points[side][[m.trainIdx for m in good]]
    transform, inliers = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC,
                                              ransacReprojThreshold=RANSAC_PIXELS)
    count = 0 if inliers is None else int(inliers.sum())
    if transform is None or count < MIN_INLIERS:
        return count, 0.0
    thumb_transform = transform.copy()
    thumb_transform[:, 2] /= 2  # the thumbnails are at half the feature scale
    other = cv2.flip(b.thumb, 1) if mirrored else b.thumb
    return count, correlation(a.thumb, other, thumb_transform)


def is_sibling(inliers: int, ncc: float) -> bool:
    return inliers >= MIN_INLIERS and ncc >= MIN_CORRELATION


def shortlist(features: list[ImageFeatures | None], neighbours: int = NEIGHBOURS, seed: int = 0):
    """Per image, candidate (image, mirrored) pairs, nearest first, by bag-of-words cosine."""
    import scipy.sparse as sp
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.neighbors import NearestNeighbors

    n = len(features)
    usable = [i for i, f in enumerate(features) if f is not None
              and len(f.descriptors[0]) >= MIN_INLIERS]
    if len(usable) < 2:
        return [[] for _ in range(n)]
    rng = np.random.default_rng(seed)
    pool = np.concatenate([features[i].descriptors[0] for i in usable]).astype(np.float32)
    sample = pool[rng.choice(len(pool), min(len(pool), 100_000), replace=False)]
    words = max(8, min(VOCABULARY, len(sample) // 20))
    kmeans = MiniBatchKMeans(words, random_state=seed, n_init=1, batch_size=4096).fit(sample)

    def histograms(side: int):
        rows, cols = [], []
        for row, i in enumerate(usable):
            desc = features[i].descriptors[side]
            if len(desc):
                cols.append(kmeans.predict(desc.astype(np.float32)))
                rows.append(np.full(len(desc), row))
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(usable), words))

    plain, mirror = histograms(0), histograms(1)
    tfidf = TfidfTransformer(sublinear_tf=True).fit(sp.vstack([plain, mirror]))
    plain, mirror = tfidf.transform(plain), tfidf.transform(mirror)
    k = min(neighbours, len(usable) - 1)
    found = []
    for side, base in ((0, plain), (1, mirror)):
        index = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(base)
        distance, position = index.kneighbors(plain)
        found.append((distance, position, side))
    candidates: list[list[tuple[int, bool]]] = [[] for _ in range(n)]
    for row, i in enumerate(usable):
        ranked = sorted((d, usable[p], side) for distance, position, side in found
                        for d, p in zip(distance[row], position[row]) if usable[p] != i)
        candidates[i] = [(j, bool(side)) for _, j, side in ranked]
    return candidates


@dataclass
class Siblings:
    """Sibling groups of a dataset's files, in listing order."""

    group: np.ndarray  # (N,) int: images of one field share an id; an image alone has its own
    first: np.ndarray  # verified sibling pairs (positions in the listing)
    second: np.ndarray
    inliers: np.ndarray
    correlation: np.ndarray
    verified: int  # candidate pairs checked
    seconds: float
    cache_hit: bool = False

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.group)

    @property
    def n_groups(self) -> int:
        """Groups of two or more images."""
        return int((self.sizes > 1).sum())

    @property
    def n_with_sibling(self) -> int:
        sizes = self.sizes
        return int(sizes[sizes > 1].sum())

    def summary(self) -> str:
        if not self.n_groups:
            return f"no siblings among {len(self.group):,} images"
        sizes = self.sizes[self.sizes > 1]
        return (f"{self.n_with_sibling:,} of {len(self.group):,} images have a sibling "
                f"(rotated/flipped/shifted copy of one field): {self.n_groups:,} groups of "
                f"{sizes.min()}-{sizes.max()}")


def find_siblings(paths: list[str], workers: int | None = None) -> Siblings:
    """Group the image files `paths` by field; see the module docstring."""
    import cv2

    start = time.perf_counter()
    n = len(paths)
    features = list(progress(parallel_map(image_features, paths, workers, chunksize=32), n,
                             "sibling search: features"))
    candidates = shortlist(features)
    parent = np.arange(n)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    matcher = cv2.BFMatcher(cv2.NORM_L2)
    edges, verified = [], 0
    for i in progress(range(n), n, "sibling search: verifying"):
        tries = 0
        for j, mirrored in candidates[i]:
            if tries >= TRIES:
                break
            if root(i) == root(j):
                continue
            tries += 1
            verified += 1
            inliers, ncc = verify(features[i], features[j], mirrored, matcher)
            if is_sibling(inliers, ncc):
                parent[root(i)] = root(j)
                edges.append((min(i, j), max(i, j), inliers, ncc))
    group = np.unique([root(i) for i in range(n)], return_inverse=True)[1].reshape(-1)
    pairs = np.array(edges, dtype=np.float64).reshape(-1, 4)
    return Siblings(group.astype(np.int64), pairs[:, 0].astype(np.int64),
                    pairs[:, 1].astype(np.int64), pairs[:, 2].astype(np.int64),
                    pairs[:, 3].astype(np.float32), verified, time.perf_counter() - start)


def cached_siblings(root: Path, files: list[str], fingerprint: str, cache: Path) -> Siblings:
    """`find_siblings` of `root/files`, stored under `cache/siblings/` by the list's fingerprint."""
    start = time.perf_counter()
    path = cache / "siblings" / f"{fingerprint}-v{_FORMAT}.npz"
    keys = ("group", "first", "second", "inliers", "correlation")
    if path.is_file():
        with np.load(path) as stored:
            arrays = {k: stored[k] for k in keys}
            verified = int(stored["verified"])
        return Siblings(**arrays, verified=verified, seconds=time.perf_counter() - start,
                        cache_hit=True)
    found = find_siblings([str(root / f) for f in files])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as out:
            np.savez(out, verified=found.verified, **{k: getattr(found, k) for k in keys})
        os.replace(tmp, path)  # atomic: concurrent workers never read half a file
    except OSError as exc:
        log.warning("could not cache the sibling search in %s: %s", path.parent, exc)
    return found

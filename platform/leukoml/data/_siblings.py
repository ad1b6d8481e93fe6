"""Siblings: images of one field or cell under rotation, flips, shifts, shear, zoom or light.

Many public WBC sets were built augment-first, split-later: the Kaggle
blood-cell TRAIN folder holds ~35 geometric copies of each of ~270 smears. A
split that puts siblings on both sides scores memory, not generalisation, and
pixel hashes (`_leakage`) miss them. This module groups them with OpenCV,
scikit-learn, FAISS and SciPy; nothing here is a hand-written detector:

1. features   SIFT keypoints with RootSIFT descriptors of each image in grey
              (`_features`: one pass, streamed to disk; the mirror image's
              descriptors are a permutation of the image's own).
2. shortlist  one mirror-invariant VLAD vector per image and its nearest
              neighbours in a FAISS HNSW graph (`_shortlist`); a neighbour is
              a candidate only if its cosine is at least SHORTLIST_MIN (below
              it no sibling was seen on Kaggle) and among the first TRIES.
3. verify     in worker processes: ratio-test matches (against the plain or
              the mirrored candidate, whichever matches more), a RANSAC affine
              transform with at least MIN_INLIERS inliers, and the candidate
              warped onto the image correlating (NCC) at least
              MIN_CORRELATION over at least MIN_OVERLAP of it.
4. group      connected components of the verified pairs.

The cost follows the images (one SIFT pass each, N log N neighbours) and the
candidates that pass the cut, not the pairs; memory holds a vector per image.
Measured against the un-augmented Kaggle originals, and for time and memory
at up to 100,000 images, by `benchmarks/siblings.py`. Results are cached per
dataset fingerprint, like the decode cache.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukoml.data._features import FeatureStore, ImageFeatures, feature_row
from leukoml.data._parallel import parallel_map
from leukoml.progress import progress

log = logging.getLogger(__name__)

RATIO = 0.8  # Lowe's ratio test
RANSAC_PIXELS = 2.0  # at FEATURE_SIDE px
MIN_INLIERS = 12
MIN_CORRELATION = 0.75
MIN_OVERLAP = 0.1  # share of the image the warped candidate must cover
DARK = 8  # grey level under which a pixel counts as fill (rotation corners, borders)
TRIES = 6  # candidates verified per image, nearest first
SHORTLIST_MIN = 0.0  # cosine of the global vectors under which a pair is not verified
PAIRS_PER_JOB = 256
_FORMAT = 2
_OPEN: dict = {}  # a verification worker's feature store


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


def _ratio_matches(da: np.ndarray, db: np.ndarray, matcher) -> list:
    pairs = matcher.knnMatch(da.astype(np.float32), db.astype(np.float32), k=2)
    return [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]


def verify(a: ImageFeatures, b: ImageFeatures, mirrored: bool | None, matcher,
           ransac_pixels: float = RANSAC_PIXELS) -> tuple[int, float]:
    """(RANSAC affine inliers, correlation) of `a` against `b` or `b`'s mirror image;
    `mirrored=None` takes whichever of the two gives more ratio-test matches."""
    import cv2

    da = a.descriptors[0]
    if len(da) < MIN_INLIERS or len(b.descriptors[0]) < MIN_INLIERS:
        return 0, 0.0
    sides = (0, 1) if mirrored is None else (int(mirrored),)
    side, good = max(((s, _ratio_matches(da, b.descriptors[s], matcher)) for s in sides),
                     key=lambda found: len(found[1]))
    if len(good) < MIN_INLIERS:
        return 0, 0.0
    src = a.points[0][[m.queryIdx for m in good]]
    dst = b.points[side][[m.trainIdx for m in good]]
    transform, inliers = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC,
                                              ransacReprojThreshold=ransac_pixels)
    count = 0 if inliers is None else int(inliers.sum())
    if transform is None or count < MIN_INLIERS:
        return count, 0.0
    thumb_transform = transform.copy()
    thumb_transform[:, 2] /= 2  # the thumbnails are at half the feature scale
    other = cv2.flip(b.thumb, 1) if side else b.thumb
    return count, correlation(a.thumb, other, thumb_transform)


def is_sibling(inliers: int, ncc: float) -> bool:
    return inliers >= MIN_INLIERS and ncc >= MIN_CORRELATION


def _verify_pairs(job: tuple) -> np.ndarray:
    """Worker: (inliers, correlation) of each (i, j) pair of a reopened feature store."""
    import cv2

    cv2.setNumThreads(1)
    folder, pairs = job
    if _OPEN.get("folder") != folder:  # one store per search; a worker keeps it open
        if "store" in _OPEN:
            _OPEN["store"].close()
        _OPEN.update(folder=folder, store=FeatureStore.reopen(folder))
    store, matcher = _OPEN["store"], cv2.BFMatcher(cv2.NORM_L2)
    return np.array([verify(store.features(i), store.features(j), None, matcher)
                     for i, j in pairs], np.float64).reshape(-1, 2)


def candidate_pairs(ids: np.ndarray, similarity: np.ndarray,
                    position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique (i, j) pairs of `ids`, i < j, of each image's first TRIES neighbours (positions
    in `ids`, -1 for none) at or above SHORTLIST_MIN, with their cosine; most similar first."""
    take = min(TRIES, position.shape[1])
    rows = np.repeat(ids, take)
    position, similarity = position[:, :take].reshape(-1), similarity[:, :take].reshape(-1)
    cols, sims = np.where(position >= 0, ids[np.maximum(position, 0)], -1), similarity
    keep = (cols >= 0) & (sims >= SHORTLIST_MIN)
    pairs = np.sort(np.stack([rows[keep], cols[keep]], 1), axis=1)
    pairs, first = np.unique(pairs, axis=0, return_index=True)
    sims = sims[keep][first]
    order = np.argsort(-sims, kind="stable")
    return pairs[order], sims[order]


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
    phases: dict | None = None  # seconds of features, shortlist and verification
    candidates: dict | None = None  # every verified pair and its scores (not cached; benchmarks)

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


def find_siblings(paths: list[str], workers: int | None = None,
                  scratch: Path | None = None) -> Siblings:
    """Group the image files `paths` by field; see the module docstring. Features are
    kept in a temporary folder under `scratch` (the system's by default) while it runs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from leukoml.data._shortlist import global_vectors, nearest

    start = time.perf_counter()
    n = len(paths)
    with tempfile.TemporaryDirectory(prefix="leukoml-features-", dir=scratch) as folder:
        store = FeatureStore(Path(folder), n)
        rows = parallel_map(feature_row, paths, workers, chunksize=32)
        for i, row in enumerate(progress(rows, n, "sibling search: features")):
            store.write(i, row)
        phases = {"features": time.perf_counter() - start}
        usable = np.flatnonzero(store.count >= MIN_INLIERS)
        pairs, sims = np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
        if len(usable) >= 2:
            vectors = global_vectors(store, usable)
            similarity, position = nearest(vectors[usable], TRIES)
            pairs, sims = candidate_pairs(usable, similarity, position)
        phases["shortlist"] = time.perf_counter() - start - sum(phases.values())
        sealed = store.seal()
        jobs = [(sealed, pairs[s:s + PAIRS_PER_JOB])
                for s in range(0, len(pairs), PAIRS_PER_JOB)]
        scores = list(progress(parallel_map(_verify_pairs, jobs, workers, chunksize=1,
                                            serial_below=2),
                               len(jobs), "sibling search: verifying", unit="job"))
        store.close()
    phases["verify"] = time.perf_counter() - start - sum(phases.values())
    scores = np.concatenate(scores) if scores else np.zeros((0, 2))
    found = np.array([is_sibling(int(a), b) for a, b in scores], bool)
    edges = pairs[found]
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    group = connected_components(graph, directed=False)[1]
    log.info("sibling search: %d images, %d candidate pairs verified, %d siblings, %.1f s "
             "(%s)", n, len(pairs), len(edges), time.perf_counter() - start,
             ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
    return Siblings(group.astype(np.int64), edges[:, 0].astype(np.int64),
                    edges[:, 1].astype(np.int64), scores[found, 0].astype(np.int64),
                    scores[found, 1].astype(np.float32), len(pairs),
                    time.perf_counter() - start, phases={k: round(v, 2) for k, v in phases.items()},
                    candidates={"pairs": pairs, "cosine": sims, "inliers": scores[:, 0],
                                "correlation": scores[:, 1]})


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

"""Siblings: images of one field or cell under rotation, flips, shifts, shear, zoom or light.

Many public WBC sets were built augment-first, split-later: the Kaggle
blood-cell TRAIN folder holds ~35 geometric copies of each of ~270 smears. A
split that puts siblings on both sides scores memory, not generalisation, and
pixel hashes (`_leakage`) miss them. This module groups them with OpenCV,
scikit-learn, FAISS and SciPy; nothing here is a hand-written detector:

1. features   SIFT keypoints with RootSIFT descriptors of each image in grey
              (`_features`: one pass, streamed to disk; the mirror image's
              descriptors are a permutation of the image's own).
2. shortlist  one mirror-invariant VLAD vector per image and its NEIGHBOURS
              nearest in a FAISS HNSW graph (`_shortlist`).
3. verify     in rounds, each in worker processes. Round one: each image's
              first TRIES neighbours with a cosine of at least SHORTLIST_MIN.
              Later rounds go deeper in the lists, but only for pairs that
              would join two groups not yet joined, one of them with siblings
              already, one pair per two groups: an augment-first set connects
              the fragments of a field without verifying every pair, and a
              set without siblings pays nothing past round one.
              A pair is checked by ratio-test matches (against the plain or
              the mirrored candidate, whichever matches more), a RANSAC affine
              transform with at least MIN_INLIERS inliers, and the candidate
              warped onto the image correlating (NCC) at least
              MIN_CORRELATION over at least MIN_OVERLAP of it.
4. group      connected components of the verified pairs.

SHORTLIST_MIN is calibrated by `benchmarks/siblings.py` on
Kaggle (the cosine of pairs of one source against pairs of two) and on fields
without siblings (`benchmarks/siblings_scale.py`).

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
NEIGHBOURS = 30  # shortlist per image
TRIES = 6  # round one: candidates verified per image, nearest first
SHORTLIST_MIN = 0.3  # cosine under which a pair is not verified
ROUNDS = 8
PAIRS_PER_JOB = 256
_FORMAT = 2
_EDGE = np.ones((3, 3), np.uint8)  # pixels of the fill's edge left out of the correlation
_OPEN: dict = {}  # a verification worker's feature store


def correlation(a: np.ndarray, b: np.ndarray, transform: np.ndarray) -> float:
    """NCC of grey image `a` with `b` warped onto it (`transform` maps a's pixels to b's)."""
    import cv2

    height, width = a.shape
    warped = cv2.warpAffine(b, transform, (width, height),
                            flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR, borderValue=0)
    # the fill's edge, blended into the image by the thumbnail's resize, is not the field
    valid = cv2.erode(((warped > DARK) & (a > DARK)).astype(np.uint8), _EDGE).astype(bool)
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
                    position: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (i, j) pairs of `ids`, i < j, from each image's neighbours (positions in `ids`,
    -1 for none; nearest first) at or above SHORTLIST_MIN: (pairs, cosine, rank), most
    similar first; rank is the pair's better place in the two lists."""
    n, k = position.shape
    rows, rank = np.repeat(ids, k), np.tile(np.arange(k), n)
    position, sims = position.reshape(-1), similarity.reshape(-1)
    cols = np.where(position >= 0, ids[np.maximum(position, 0)], -1)
    keep = (cols >= 0) & (sims >= SHORTLIST_MIN)
    pairs = np.sort(np.stack([rows[keep], cols[keep]], 1), axis=1)
    sims, rank = sims[keep], rank[keep]
    order = np.lexsort((rank, pairs[:, 1], pairs[:, 0]))  # per pair, its better rank first
    pairs, sims, rank = pairs[order], sims[order], rank[order]
    first = np.ones(len(pairs), bool)
    first[1:] = (pairs[1:] != pairs[:-1]).any(axis=1)
    pairs, sims, rank = pairs[first], sims[first], rank[first]
    order = np.argsort(-sims, kind="stable")
    return pairs[order], sims[order], rank[order]


def next_round(pairs: np.ndarray, tried: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Untried pairs that join two groups, one of them with two images or more: the first
    pair of each two groups (pairs are sorted most alike first)."""
    todo = np.flatnonzero(~tried)
    a, b = group[pairs[todo, 0]], group[pairs[todo, 1]]
    sizes = np.bincount(group)
    keep = (a != b) & ((sizes[a] > 1) | (sizes[b] > 1))
    todo, a, b = todo[keep], a[keep], b[keep]
    _, first = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], 1), axis=0,
                         return_index=True)
    return todo[np.sort(first)]


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
        log.info("sibling search: features of %d images in %.0f s; shortlisting", n,
                 phases["features"])
        usable = np.flatnonzero(store.count >= MIN_INLIERS)
        pairs, sims, rank = np.zeros((0, 2), np.int64), np.zeros(0, np.float32), np.zeros(0)
        if len(usable) >= 2:
            vectors = global_vectors(store, usable)
            similarity, position = nearest(vectors[usable], NEIGHBOURS)
            pairs, sims, rank = candidate_pairs(usable, similarity, position)
        phases["shortlist"] = time.perf_counter() - start - sum(phases.values())
        log.info("sibling search: %d candidate pairs in %.0f s; verifying", len(pairs),
                 phases["shortlist"])
        scores = np.full((len(pairs), 2), np.nan)
        group = np.arange(n)
        todo = np.flatnonzero(rank < TRIES)
        sealed = store.seal()
        for round_ in range(1, ROUNDS + 1):
            if not len(todo):
                break
            scores[todo] = _verify_all(sealed, pairs[todo], workers, round_)
            found = _found(scores)
            graph = coo_matrix((np.ones(found.sum()), (pairs[found, 0], pairs[found, 1])),
                               shape=(n, n))
            group = connected_components(graph, directed=False)[1]
            todo = next_round(pairs, ~np.isnan(scores[:, 0]), group)
        store.close()
    phases["verify"] = time.perf_counter() - start - sum(phases.values())
    tried, found = ~np.isnan(scores[:, 0]), _found(scores)
    log.info("sibling search: %d images, %d candidate pairs verified in %d round(s), %d "
             "siblings, %.1f s (%s)", n, tried.sum(), round_ if len(pairs) else 0, found.sum(),
             time.perf_counter() - start, ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
    return Siblings(group.astype(np.int64), pairs[found, 0].astype(np.int64),
                    pairs[found, 1].astype(np.int64), scores[found, 0].astype(np.int64),
                    scores[found, 1].astype(np.float32), int(tried.sum()),
                    time.perf_counter() - start, phases={k: round(v, 2) for k, v in phases.items()},
                    candidates={"pairs": pairs[tried], "cosine": sims[tried],
                                "inliers": scores[tried, 0], "correlation": scores[tried, 1]})


def _found(scores: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # untried pairs are NaN: not siblings
        return (scores[:, 0] >= MIN_INLIERS) & (scores[:, 1] >= MIN_CORRELATION)


def _verify_all(sealed: str, pairs: np.ndarray, workers: int | None, round_: int) -> np.ndarray:
    """(inliers, correlation) of each pair, over the worker processes."""
    jobs = [(sealed, pairs[s:s + PAIRS_PER_JOB]) for s in range(0, len(pairs), PAIRS_PER_JOB)]
    done = parallel_map(_verify_pairs, jobs, workers, chunksize=1, serial_below=2)
    return np.concatenate(list(progress(done, len(jobs),
                                        f"sibling search: verifying (round {round_})",
                                        unit="job")))


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

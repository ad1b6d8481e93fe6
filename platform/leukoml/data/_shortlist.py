"""Which pairs of images may be siblings: a global descriptor and approximate neighbours.

Each image becomes one short vector: VLAD (residuals of its RootSIFT
descriptors to a small k-means vocabulary, the classic aggregate for
near-duplicate image retrieval), taken over its descriptors and their mirror
permutations together, so an image and its mirror image get the same vector;
then PCA to DIMENSIONS and L2-normalised, so the inner product is a cosine.
Neighbours come from a FAISS HNSW graph (logarithmic search per image), so
the shortlist grows with N log N, not with N squared; rows are read from the
feature store in chunks, so memory holds the vectors (N x DIMENSIONS floats),
not the descriptors.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from leukoml.data._features import MIRROR, FeatureStore
from leukoml.progress import progress

log = logging.getLogger(__name__)

WORDS = 32  # VLAD vocabulary
DIMENSIONS = 128  # after PCA
SAMPLE_IMAGES = 1000  # fit the vocabulary and the PCA on at most this many images
CHUNK = 512  # images per block read from the store
HNSW_LINKS = 32
HNSW_SEARCH = 128


def _faiss():
    """FAISS on all cores, without its loader's lines about CPU extensions it tried."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return faiss


def _as_float(desc: np.ndarray) -> np.ndarray:
    """uint8 RootSIFT x 512 -> float32 with both the plain and the mirrored descriptors."""
    x = desc.astype(np.float32) / 512
    return np.concatenate([x, x[:, MIRROR]])


def vlad(blocks: list[np.ndarray], centres: np.ndarray) -> np.ndarray:
    """(len(blocks), WORDS * 128) VLAD of each image's descriptors, power- and L2-normalised."""
    from scipy.sparse import csr_matrix

    words, dim = centres.shape
    sizes = [len(b) for b in blocks]
    if not sum(sizes):
        return np.zeros((len(blocks), words * dim), np.float32)
    x = np.concatenate([_as_float(b) for b in blocks if len(b)])
    owner = np.repeat(np.arange(len(blocks)), [2 * s for s in sizes])
    nearest = ((x @ centres.T) * -2 + (centres * centres).sum(1)).argmin(1)
    cell = owner * words + nearest  # (image, word) of each descriptor
    assign = csr_matrix((np.ones(len(x), np.float32), (cell, np.arange(len(x)))),
                        shape=(len(blocks) * words, len(x)))
    counts = np.bincount(cell, minlength=len(blocks) * words).astype(np.float32)
    out = (assign @ x - counts[:, None] * np.tile(centres, (len(blocks), 1)))
    out = out.reshape(len(blocks), words, dim)
    norms = np.linalg.norm(out, axis=2, keepdims=True)
    out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0).reshape(len(blocks), -1)
    out = np.sign(out) * np.sqrt(np.abs(out))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


def global_vectors(store: FeatureStore, usable: np.ndarray, seed: int = 0) -> np.ndarray:
    """(store.n, DIMENSIONS) unit vectors; rows of images not in `usable` are zero."""
    from sklearn.decomposition import PCA

    faiss = _faiss()
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(usable, min(len(usable), SAMPLE_IMAGES), replace=False))
    desc = [store.descriptors(i, i + 1)[0] for i in sample]
    pool = np.concatenate([_as_float(d) for d in desc])
    pool = pool[rng.choice(len(pool), min(len(pool), 25_000), replace=False)]
    words = max(4, min(WORDS, len(pool) // 40))
    kmeans = faiss.Kmeans(pool.shape[1], words, niter=20, seed=seed)
    kmeans.train(np.ascontiguousarray(pool))
    centres = kmeans.centroids.astype(np.float32)
    dims = min(DIMENSIONS, len(sample), words * 128)
    pca = PCA(dims, svd_solver="randomized", iterated_power=3, random_state=seed).fit(
        vlad(desc, centres))
    vectors = np.zeros((store.n, dims), np.float32)
    keep = np.zeros(store.n, bool)
    keep[usable] = True
    starts = range(0, store.n, CHUNK)
    for start in progress(starts, len(starts), "sibling search: shortlist", unit="chunk"):
        stop = min(start + CHUNK, store.n)
        vectors[start:stop] = pca.transform(vlad(store.descriptors(start, stop), centres))
    vectors[~keep] = 0
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def nearest(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, position) of each vector's k nearest others (itself excluded), best first."""
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 64
    blocks = range(0, len(vectors), CHUNK * 16)  # in blocks: a batch log hears from each
    for start in progress(blocks, len(blocks), "sibling search: neighbour graph", unit="block"):
        index.add(vectors[start:start + CHUNK * 16])
    index.hnsw.efSearch = max(HNSW_SEARCH, k + 1)
    found = [index.search(vectors[start:start + CHUNK * 16], min(k + 1, len(vectors)))
             for start in progress(blocks, len(blocks), "sibling search: neighbours",
                                   unit="block")]
    similarity = np.concatenate([f[0] for f in found])
    position = np.concatenate([f[1] for f in found])
    mine = position == np.arange(len(vectors))[:, None]
    similarity, position = similarity.copy(), position.copy()
    similarity[mine], position[mine] = -np.inf, -1  # an image is not its own candidate
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(similarity, order, 1), np.take_along_axis(position, order, 1)

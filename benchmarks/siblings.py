"""The sibling detector against ground truth: the Kaggle set's un-augmented originals.

Issue 14. Every Kaggle TRAIN/TEST image is a rotated / flipped / shifted /
sheared copy of one of the 367 originals in `kaggle-blood-cells-originals`
(640x480, downscaled to the Kaggle 320x240 before augmenting). This script

1. finds each image's original: FLANN votes of its SIFT descriptors (plain and
   mirrored) over all originals' descriptors, then the top candidates verified
   with the detector's own check (RANSAC affine + correlation) at TRUTH_SIDE px,
   twice the detector's; "clear" when the best verified original has at least
   twice the inliers of the best original of another source (cached by the
   listing's fingerprint: it costs more than the detector);
2. merges originals that show the same field (the set holds a few cells
   photographed twice, shifted): the "source" of an image is that group;
3. runs leukoml's detector (`find_siblings`, no originals) on TRAIN + TEST, as
   a run of `prepare_dataset` does, timed;
4. scores it pairwise: precision = detected sibling pairs that share a source,
   recall = same-source pairs the detector groups, over images with a clear
   original; also against the original itself (twins counted as different);
   and the shortlist's cosine of the candidate pairs that share a source and of
   those that do not (what `SHORTLIST_MIN` is calibrated on);
5. splits as leukoml does (validation carved from TRAIN, grouped by the
   detected siblings; and at random, for contrast) and counts validation
   images whose source also sits in train; likewise official TEST vs TRAIN.

    python benchmarks/siblings.py

Writes benchmarks/results/siblings.json.
"""

from __future__ import annotations

import argparse
import functools
import re
import time
from collections import Counter

import numpy as np
from _common import KAGGLE, machine, write_result

from leukoml.data._cache import cache_root
from leukoml.data._discover import scan_dataset
from leukoml.data._features import image_features
from leukoml.data._parallel import parallel_map
from leukoml.data._siblings import find_siblings, is_sibling
from leukoml.data._siblings import verify as _verify
from leukoml.data._split import assign_splits

ORIGINALS = KAGGLE.parent / "kaggle-blood-cells-originals" / "Original_Images"
CANDIDATES = 4
TRUTH_SIDE = 320  # px: the Kaggle fields' own size
truth_features = functools.partial(image_features, side=TRUTH_SIDE)
verify = functools.partial(_verify, ransac_pixels=4.0)  # at TRUTH_SIDE px


def pairs_within(labels: np.ndarray) -> int:
    return int(sum(c * (c - 1) // 2 for c in Counter(labels.tolist()).values()))


def pairwise(detected: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    both = pairs_within(detected * (truth.max() + 1) + truth)
    return {"precision": round(both / max(pairs_within(detected), 1), 4),
            "recall": round(both / max(pairs_within(truth), 1), 4),
            "true_pairs": pairs_within(truth), "detected_pairs": pairs_within(detected)}


def original_sources(originals, matcher) -> tuple[np.ndarray, list]:
    """Source id per original: originals showing one field (verified pair) share one."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n, edges, twins = len(originals), [], []
    for i in range(n):
        for j in range(i + 1, n):
            for mirrored in (False, True):
                inliers, ncc = verify(originals[i], originals[j], mirrored, matcher)
                if is_sibling(inliers, ncc):
                    edges.append((i, j))
                    twins.append((i, j, inliers, round(ncc, 3)))
                    break
    a = np.array(edges, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(a)), (a[:, 0], a[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1], twins


def match_originals(images, originals, source, matcher) -> tuple[np.ndarray, np.ndarray]:
    """(original, clear) per image."""
    import cv2

    descriptors = np.concatenate([o.descriptors[0] for o in originals]).astype(np.float32)
    owner = np.concatenate([np.full(len(o.descriptors[0]), i) for i, o in enumerate(originals)])
    flann = cv2.FlannBasedMatcher({"algorithm": 1, "trees": 4}, {"checks": 64})
    flann.add([descriptors])
    flann.train()
    best = np.full(len(images), -1)
    clear = np.zeros(len(images), bool)
    for n, image in enumerate(images):
        if image is None:
            continue
        votes = Counter()
        for side in (0, 1):
            if len(image.descriptors[side]) < 2:
                continue
            for match in flann.knnMatch(image.descriptors[side].astype(np.float32), k=2):
                if len(match) == 2 and match[0].distance < 0.8 * match[1].distance:
                    votes[owner[match[0].trainIdx]] += 1
        scored = []
        for candidate, _ in votes.most_common(CANDIDATES):
            # the original is the image before augmentation: verify image -> original
            inliers, ncc = max(verify(image, originals[candidate], mirrored, matcher)
                               for mirrored in (False, True))
            scored.append((inliers if is_sibling(inliers, ncc) else 0, candidate))
        scored.sort(reverse=True)
        if not scored or scored[0][0] == 0:
            continue
        top, original = scored[0]
        rival = max([s for s, c in scored[1:] if source[c] != source[original]], default=0)
        best[n], clear[n] = original, top >= 2 * rival
    return best, clear


def ground_truth(listing, paths, original_files, matcher) -> tuple:
    """(original, clear, source, twins, seconds) of every image; cached by the listing."""
    path = cache_root() / "benchmark-truth" / f"{listing.fingerprint}-{TRUTH_SIDE}.npz"
    if path.is_file():
        with np.load(path) as stored:
            twins = [(int(i), int(j), int(k), c) for i, j, k, c in stored["twins"].tolist()]
            return (stored["original"], stored["clear"], stored["source"], twins,
                    float(stored["seconds"]))
    started = time.perf_counter()
    originals = list(parallel_map(truth_features, [str(p) for p in original_files]))
    images = list(parallel_map(truth_features, paths, chunksize=32))
    source, twins = original_sources(originals, matcher)
    original, clear = match_originals(images, originals, source, matcher)
    seconds = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, original=original, clear=clear, source=source, twins=np.array(twins),
             seconds=seconds)
    return original, clear, source, twins, seconds


def calibration(candidates: dict, truth: np.ndarray) -> dict:
    """Cosine percentiles of candidate pairs with one source, and with two (known images)."""
    a, b = candidates["pairs"].T
    known = (truth[a] >= 0) & (truth[b] >= 0)
    same = known & (truth[a] == truth[b])
    cosine = candidates["cosine"]
    verified = (candidates["inliers"] >= 12) & (candidates["correlation"] >= 0.75)

    def spread(mask):
        return ({f"p{q}": round(float(np.percentile(cosine[mask], q)), 3)
                 for q in (0, 1, 5, 50, 95, 99, 100)} | {"pairs": int(mask.sum())}
                if mask.any() else {"pairs": 0})

    return {"same_source": spread(same), "different_sources": spread(known & ~same),
            "same_source_verified": spread(same & verified),
            "different_sources_verified": int((known & ~same & verified).sum())}


def main() -> None:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(KAGGLE))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    info = machine()
    listing = scan_dataset(args.data)
    paths = [str(listing.root / f) for f in listing.files]
    original_files = sorted(ORIGINALS.glob("*.jpg"))
    matcher = cv2.BFMatcher(cv2.NORM_L2)

    started = time.perf_counter()
    siblings = find_siblings(paths)
    detector_seconds = time.perf_counter() - started
    print(f"detector: {siblings.summary()} in {detector_seconds:.0f} s "
          f"({siblings.verified:,} pairs verified)")

    original, clear, source, twins, truth_seconds = ground_truth(
        listing, paths, original_files, matcher)
    number = [int(re.search(r"(\d+)", p.stem).group(1)) for p in original_files]
    print(f"ground truth: {clear.sum():,} of {len(paths):,} images matched clearly to an "
          f"original ({truth_seconds:.0f} s); {len(twins)} pairs of originals show one field")

    known = np.flatnonzero(clear)
    shortlist = calibration(siblings.candidates, np.where(clear, source[original], -1))
    print(f"shortlist cosine: {shortlist}")
    by_source = pairwise(siblings.group[known], source[original[known]])
    by_original = pairwise(siblings.group[known], original[known])
    print(f"pairwise by source: precision {by_source['precision']}, recall {by_source['recall']}"
          f"; by original: precision {by_original['precision']}, recall {by_original['recall']}")

    labels = np.asarray(listing.labels)
    folders = listing.folder_splits
    truth_source = np.where(clear, source[np.maximum(original, 0)], -1)
    leftovers = {}
    for label, groups in (("grouped by detected siblings", siblings.group), ("random", None)):
        splits, how = assign_splits(labels, folders, listing.class_names, args.seed,
                                    groups=groups)
        train_sources = set(truth_source[splits["train"]].tolist()) - {-1}
        row = {"split": how, "sizes": {k: int(len(v)) for k, v in splits.items()}}
        for name in ("val", "test"):
            idx = [i for i in splits[name] if truth_source[i] >= 0]
            shared = sum(truth_source[i] in train_sources for i in idx)
            row[f"{name}_with_train_sibling"] = round(shared / max(len(idx), 1), 4)
            row[f"{name}_images_checked"] = len(idx)
        leftovers[label] = row
        print(f"{label}: {row}")

    result = {
        "machine": info,
        "data": args.data, "images": len(paths),
        "detector": {"seconds": round(detector_seconds, 1), "phases": siblings.phases,
                     "pairs_verified": siblings.verified, "shortlist_cosine": shortlist,
                     "groups": siblings.n_groups, "images_with_sibling": siblings.n_with_sibling,
                     "summary": siblings.summary()},
        "ground_truth": {
            "originals": len(original_files), "images_matched_clearly": int(clear.sum()),
            "seconds": round(truth_seconds, 1),
            "twin_originals": [{"a": number[i], "b": number[j], "inliers": k, "ncc": c}
                               for i, j, k, c in twins],
            "sources": int(len(set(source[original[known]].tolist()))),
        },
        "pairwise_by_source": by_source,
        "pairwise_by_original": by_original,
        "targets": {"precision": 0.98, "recall": 0.95, "val_with_train_sibling": 0.02},
        "leftover_siblings": leftovers,
    }
    print(f"wrote {write_result('siblings', result)}")


if __name__ == "__main__":
    main()

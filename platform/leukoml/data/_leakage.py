"""Images that appear twice: exact copies (same bytes) and near copies (re-encoded, resized).

A copy on both sides of a split tests a model on what it trained on; one
image under two classes is a label conflict. Copies are found once per
decode-cache entry and cached beside it (they depend on the file list and the
size, both in the entry's name, and on the thresholds, in the file's name);
the report for any split is then a few array operations.

Thresholds, measured on the 12,444 Kaggle blood-cell images decoded at 64 px:
- re-encoded (JPEG quality 10-90) and resized (1/8x to 3x) copies lie within
  4 bits of their original's 64-bit pHash, and their 16x16 thumbnails within
  2.93 grey levels (mean absolute difference);
- distinct cells collide on pHash (of the pairs from two different classes,
  24 lie within 2 bits, 621 within 4): the black corners left by the
  rotation augmentation dominate its low frequencies. Their thumbnails,
  though, differ by 11.5 levels or more (all 29,349 such pairs within 8 bits).
So pHash alone cannot tell them apart. A pair is a near copy when its pHash
is within HAMMING_BITS (twice the worst copy) and its thumbnails within
THUMBNAIL_LEVELS (twice the worst copy, half the closest distinct pair).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leukoml.names import SPLITS

log = logging.getLogger(__name__)

HAMMING_BITS = 8
THUMBNAIL_LEVELS = 6.0
THUMBNAIL = 16
MAX_EXAMPLES = 20
_FORMAT = 1
_BLOCK = 4_000_000  # hash comparisons per chunk: ~35 MB of temporaries
_PAIR_KEYS = {(a, b): SPLITS[a] if a == b else f"{SPLITS[a]}/{SPLITS[b]}"
              for a in range(3) for b in range(a, 3)}
_CROSS = ("train/val", "train/test", "val/test")


@dataclass
class CopyPairs:
    """Pairs (first < second) of positions in the decoded images that are copies."""

    first: np.ndarray
    second: np.ndarray
    exact: np.ndarray  # same file bytes
    bits: np.ndarray  # pHash Hamming distance
    levels: np.ndarray  # mean absolute difference of the 16x16 thumbnails, grey levels
    seconds: float = 0.0
    cache_hit: bool = False


def find_copies(images: np.ndarray, sha256: list[str], phash: list[str]) -> CopyPairs:
    """All exact and near copies among `images` (N, S, S, 3), given their hashes."""
    start = time.perf_counter()
    hashes = np.array([int(h, 16) for h in phash], dtype=np.uint64)
    first, second, bits = _close_hashes(hashes, HAMMING_BITS)
    content = np.unique(np.asarray(sha256), return_inverse=True)[1].reshape(-1)
    exact = content[first] == content[second]
    levels = np.zeros(len(first), dtype=np.float32)
    near = np.flatnonzero(~exact)
    if len(near):
        used, where = np.unique(np.concatenate([first[near], second[near]]), return_inverse=True)
        thumbs = _thumbnails(images, used)
        a, b = where[: len(near)], where[len(near):]
        for s in range(0, len(near), 65536):
            diff = np.abs(thumbs[a[s: s + 65536]] - thumbs[b[s: s + 65536]])
            levels[near[s: s + 65536]] = diff.mean(axis=(1, 2, 3))
    keep = exact | (levels <= THUMBNAIL_LEVELS)
    return CopyPairs(first[keep], second[keep], exact[keep], bits[keep], levels[keep],
                     seconds=time.perf_counter() - start)


def cached_copies(
    images: np.ndarray, sha256: list[str], phash: list[str], entry: Path
) -> CopyPairs:
    """`find_copies`, stored in the decode-cache folder `entry` (or recomputed if unwritable)."""
    start = time.perf_counter()
    path = entry / f"copies-h{HAMMING_BITS}-t{THUMBNAIL_LEVELS:g}-v{_FORMAT}.npz"
    if path.is_file():
        with np.load(path) as stored:
            arrays = {k: stored[k] for k in ("first", "second", "exact", "bits", "levels")}
        return CopyPairs(**arrays, seconds=time.perf_counter() - start, cache_hit=True)
    copies = find_copies(images, sha256, phash)
    try:
        handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=entry)
        with os.fdopen(handle, "wb") as out:
            np.savez(out, first=copies.first, second=copies.second, exact=copies.exact,
                     bits=copies.bits, levels=copies.levels)
        os.replace(tmp, path)  # atomic: concurrent workers never read half a file
    except OSError as exc:
        log.warning("could not cache the copy search in %s: %s", entry, exc)
    return copies


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    table = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def _close_hashes(hashes: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs i < j whose hashes differ in at most `bits` bits, by blocks of rows."""
    n = len(hashes)
    rows = max(1, _BLOCK // max(n, 1))
    found = []
    for start in range(0, n, rows):
        distance = _popcount(hashes[start: start + rows, None] ^ hashes[None, start:])
        i, j = np.nonzero(distance <= bits)
        upper = j > i  # column j is image start + j, row i is image start + i
        found.append((i[upper] + start, j[upper] + start, distance[i[upper], j[upper]]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    return tuple(np.concatenate(parts) for parts in zip(*found))


def _thumbnails(images: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Box-averaged 16x16 thumbnails (float32) of `images[idx]`, `idx` sorted."""
    size = images.shape[1]
    side = min(THUMBNAIL, size)
    edges = np.arange(side) * size // side
    counts = np.diff(np.append(edges, size))
    area = (counts[:, None] * counts[None, :])[..., None].astype(np.float32)
    out = np.empty((len(idx), side, side, 3), dtype=np.float32)
    for s in range(0, len(idx), 256):
        batch = np.asarray(images[idx[s: s + 256]])
        rows = np.add.reduceat(batch, edges, axis=1, dtype=np.uint32)
        sums = np.add.reduceat(rows, edges, axis=2)
        out[s: s + 256] = sums / area
    return out


@dataclass
class LeakageReport:
    """Copies within and across the splits, and label conflicts, for one split assignment."""

    image_size: int
    split_sizes: dict[str, int]
    # "duplicates" / "label_conflicts" -> "exact" / "near" -> "train", "train/val", ... -> pairs
    pairs: dict[str, dict[str, dict[str, int]]]
    # split -> other split -> images of `split` with a copy in `other`
    images_with_copy_in: dict[str, dict[str, int]]
    examples: list[dict]
    dropped: dict[str, int] | None = None
    before_drop: "LeakageReport | None" = field(default=None, repr=False)
    # how siblings (same field, augmented) were searched and how many cross the splits
    siblings: dict | None = None

    def shared_pairs(self, a: str, b: str) -> int:
        """Copy pairs (of any kind, same class or not) between splits `a` and `b`."""
        key = f"{a}/{b}" if SPLITS.index(a) < SPLITS.index(b) else f"{b}/{a}"
        return sum(kinds[kind].get(key, 0) for kinds in self.pairs.values() for kind in kinds)

    def with_train_sibling(self, split: str) -> int:
        """Images of `split` whose field (a sibling) also sits in train."""
        crossings = (self.siblings or {}).get("images_with_sibling_in", {})
        return int(crossings.get(split, {}).get("train", 0))

    @property
    def train_shares_images(self) -> bool:
        """Whether train holds a copy or sibling of a val or test image: those scores are then
        optimistic."""
        return bool(self.shared_pairs("train", "test") or self.shared_pairs("train", "val")
                    or self.with_train_sibling("val") or self.with_train_sibling("test"))

    def to_dict(self) -> dict:
        def shape(counts: dict[str, int]) -> dict[str, dict[str, int]]:
            return {
                "within_split": {s: counts.get(s, 0) for s in SPLITS},
                "cross_split": {k: counts.get(k, 0) for k in _CROSS},
            }

        out = {
            "format": _FORMAT,
            "method": {
                "exact": "identical file bytes (sha256)",
                "near": (f"pHash within {HAMMING_BITS} bits and {THUMBNAIL}x{THUMBNAIL} thumbnails "
                         f"within {THUMBNAIL_LEVELS:g} grey levels (mean absolute difference) "
                         f"of the images decoded at {self.image_size} px"),
                "label_conflict": "a copy pair whose two images are in different classes",
            },
            "images": dict(self.split_sizes),
            **{category: {kind: shape(counts) for kind, counts in kinds.items()}
               for category, kinds in self.pairs.items()},
            "images_with_copy_in": self.images_with_copy_in,
            "train_shares_images_with": {
                other: bool(self.shared_pairs("train", other)) for other in ("val", "test")
            },
            "examples": self.examples,
            "dropped": self.dropped,
            "siblings": self.siblings,
        }
        if self.before_drop is not None:
            out["before_drop"] = self.before_drop.to_dict()
        return out

    def summary_text(self) -> str:
        sizes = ", ".join(f"{s} {n:,}" for s, n in self.split_sizes.items())
        lines = [
            f"Copies among {sum(self.split_sizes.values()):,} images ({sizes}); exact = same "
            f"bytes, near = pHash <= {HAMMING_BITS} bits and thumbnails <= "
            f"{THUMBNAIL_LEVELS:g} grey levels apart.",
            "Across splits: " + "; ".join(
                f"{key} {self._describe(key)}" for key in _CROSS),
            "Within splits: " + "; ".join(f"{s} {self._describe(s)}" for s in SPLITS),
        ]
        conflicts = sum(sum(c.values()) for c in self.pairs["label_conflicts"].values())
        lines.append("Of these, label conflicts (one image under two classes): "
                     + (f"{conflicts} pair(s)" if conflicts else "none"))
        if self.siblings is not None:
            lines.append(f"Siblings (same field rotated/flipped/shifted): {self.siblings['summary']}"
                         f"; {self.siblings['split']}.")
        for other, what in (("test", "test"), ("val", "validation")):
            shared = self.shared_pairs("train", other)
            if shared:
                lines.append(f"WARNING: train shares {shared} copy pair(s) with {other}; "
                             f"{what} scores are optimistic.")
            siblings = self.with_train_sibling(other)
            if siblings:
                lines.append(f"WARNING: {siblings} {other} image(s) of {self.split_sizes[other]} "
                             f"have a sibling in train; {what} scores are optimistic.")
        if self.dropped is not None:
            before = self.before_drop
            lines.append(
                f"Dropped before training: {self.dropped['train']} train and {self.dropped['val']} "
                "val image(s) copying a test (or, for train, a val) image; before that, train/test "
                f"had {before.shared_pairs('train', 'test')}, train/val "
                f"{before.shared_pairs('train', 'val')}, val/test "
                f"{before.shared_pairs('val', 'test')} copy pair(s)."
            )
        return "\n".join(lines)

    def _describe(self, key: str) -> str:
        exact = sum(kinds["exact"].get(key, 0) for kinds in self.pairs.values())
        near = sum(kinds["near"].get(key, 0) for kinds in self.pairs.values())
        return f"{exact} exact + {near} near" if exact or near else "none"


def leakage_report(
    copies: CopyPairs,
    files: list[str],
    labels: np.ndarray,
    class_names: list[str],
    splits: dict[str, np.ndarray],
    image_size: int,
) -> LeakageReport:
    """Count the copy pairs of `copies` by kind and split pair, for the images in `splits`."""
    split_of = _split_of(len(labels), splits)
    sa, sb = split_of[copies.first], split_of[copies.second]
    inside = (sa >= 0) & (sb >= 0)
    a, b, sa, sb = copies.first[inside], copies.second[inside], sa[inside], sb[inside]
    exact, bits, levels = copies.exact[inside], copies.bits[inside], copies.levels[inside]
    lo, hi = np.minimum(sa, sb), np.maximum(sa, sb)
    conflict = labels[a] != labels[b]
    pairs = {}
    for category, cmask in (("duplicates", ~conflict), ("label_conflicts", conflict)):
        pairs[category] = {}
        for kind, kmask in (("exact", exact), ("near", ~exact)):
            code = (lo * 3 + hi)[cmask & kmask]
            counts = np.bincount(code, minlength=9)
            pairs[category][kind] = {
                key: int(counts[x * 3 + y]) for (x, y), key in _PAIR_KEYS.items()
            }
    with_copy = {}
    for x, name in enumerate(SPLITS):
        with_copy[name] = {}
        for y, other in enumerate(SPLITS):
            if x != y:
                mine = np.concatenate([a[(sa == x) & (sb == y)], b[(sb == x) & (sa == y)]])
                with_copy[name][other] = int(len(np.unique(mine)))
    # label conflicts first, then copies across splits, exact before near
    order = np.lexsort((b, a, ~exact, lo == hi, ~conflict))[:MAX_EXAMPLES]

    def side(i: int, s: int) -> dict:
        return {"file": files[i], "split": SPLITS[s], "class": class_names[int(labels[i])]}

    examples = [
        {"kind": "exact" if exact[k] else "near", "label_conflict": bool(conflict[k]),
         "hamming_bits": int(bits[k]), "thumbnail_levels": round(float(levels[k]), 2),
         "a": side(int(a[k]), int(sa[k])), "b": side(int(b[k]), int(sb[k]))}
        for k in order
    ]
    return LeakageReport(
        image_size=image_size,
        split_sizes={s: int(len(splits[s])) for s in SPLITS},
        pairs=pairs,
        images_with_copy_in=with_copy,
        examples=examples,
    )


def drop_cross_split_copies(
    copies: CopyPairs, splits: dict[str, np.ndarray], n_images: int
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Splits without the train/val images that copy a test image, then the train images
    that copy a (remaining) val image; test stays whole, so its scores stay comparable."""
    split_of = _split_of(n_images, splits)
    dropped = {"train": 0, "val": 0}
    for target, victims in (("test", ("train", "val")), ("val", ("train",))):
        t = SPLITS.index(target)
        sa, sb = split_of[copies.first], split_of[copies.second]
        hit = np.concatenate([copies.second[sa == t], copies.first[sb == t]])
        for victim in victims:
            v = SPLITS.index(victim)
            gone = np.unique(hit[split_of[hit] == v])
            dropped[victim] += len(gone)
            split_of[gone] = -1
    kept = {}
    for k, name in enumerate(SPLITS):
        idx = np.asarray(splits[name])
        kept[name] = idx[split_of[idx] == k]
    return kept, dropped


def _split_of(n: int, splits: dict[str, np.ndarray]) -> np.ndarray:
    """Per image: 0 train, 1 val, 2 test, -1 in no split."""
    split_of = np.full(n, -1, dtype=np.int64)
    for k, name in enumerate(SPLITS):
        split_of[np.asarray(splits[name], dtype=np.int64)] = k
    return split_of


def sibling_crossings(groups: np.ndarray, splits: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per split, how many of its images have a group-mate in each earlier split."""
    out: dict[str, dict[str, int]] = {}
    for later in range(1, len(SPLITS)):
        mine = groups[np.asarray(splits[SPLITS[later]], dtype=np.int64)]
        out[SPLITS[later]] = {
            SPLITS[earlier]: int(np.isin(mine, groups[splits[SPLITS[earlier]]]).sum())
            for earlier in range(later)
        }
    return out

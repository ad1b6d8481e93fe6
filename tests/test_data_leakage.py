"""The leakage report: planted copies are found, each once, and nothing else is."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoml.data import DataSpec, decode_image, prepare_dataset, render_cell
from leukoml.data import _leakage as leakage
from leukoml.data._leakage import cached_copies, find_copies

KINDS = {"a": "lymphocyte", "b": "neutrophil"}


def write_cell(path: Path, kind: str, seed: tuple) -> Path:
    """A distinct blood-smear-like image: similar fields, so pHash alone would collide."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_cell(kind, 96, seed)).save(path)
    return path


def reencode(source: Path, target: Path, quality: int) -> None:
    Image.open(source).convert("RGB").save(target, "JPEG", quality=quality)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """train/val/test of two classes of distinct cells, nine planted copies, one near miss."""
    root = tmp_path_factory.mktemp("planted")
    for s, (split, n) in enumerate((("train", 10), ("val", 5), ("test", 5))):
        for c, (name, kind) in enumerate(KINDS.items()):
            for i in range(n):
                write_cell(root / split / name / f"{name}{i}.png", kind, (11, s, c, i))
    train, val, test = root / "train", root / "val", root / "test"
    shutil.copy(train / "a" / "a0.png", test / "a" / "exact-of-train.png")
    reencode(train / "a" / "a1.png", val / "a" / "jpeg-of-train.jpg", 75)
    Image.open(train / "b" / "b0.png").resize((48, 48)).save(test / "b" / "half-size-of-train.png")
    shutil.copy(train / "a" / "a2.png", train / "b" / "conflict-exact.png")
    shutil.copy(val / "b" / "b0.png", test / "b" / "exact-of-val.png")
    reencode(test / "a" / "a0.png", test / "a" / "jpeg-within-test.jpg", 90)
    reencode(train / "b" / "b1.png", val / "a" / "conflict-jpeg.jpg", 80)
    # a chain: each link 4 grey levels darker, so test~val and val~train, but not test~train
    z = render_cell("monocyte", 96, (30, 0)).astype(int)
    for split, name, darker in (("test", "z", 0), ("val", "y", 4), ("train", "x", 8)):
        link = Image.fromarray((z - darker).clip(0, 255).astype(np.uint8))
        link.save(root / split / "a" / f"chain-{name}.png")
    # two distinct cells whose pHashes are 6 bits apart: a copy only to a pHash-only check
    write_cell(train / "a" / "near-miss-1.png", "basophil", (7, 0, 6))
    write_cell(test / "b" / "near-miss-2.png", "lymphocyte", (7, 2, 21))
    return root


EXPECTED_PAIRS = {  # (file, file) -> (kind, label conflict)
    ("train/a/a0.png", "test/a/exact-of-train.png"): ("exact", False),
    ("train/a/a1.png", "val/a/jpeg-of-train.jpg"): ("near", False),
    ("train/b/b0.png", "test/b/half-size-of-train.png"): ("near", False),
    ("train/a/a2.png", "train/b/conflict-exact.png"): ("exact", True),
    ("val/b/b0.png", "test/b/exact-of-val.png"): ("exact", False),
    ("test/a/a0.png", "test/a/jpeg-within-test.jpg"): ("near", False),
    ("train/b/b1.png", "val/a/conflict-jpeg.jpg"): ("near", True),
    ("test/a/chain-z.png", "val/a/chain-y.png"): ("near", False),
    ("train/a/chain-x.png", "val/a/chain-y.png"): ("near", False),
}


def zero_counts() -> dict:
    return {"within_split": {"train": 0, "val": 0, "test": 0},
            "cross_split": {"train/val": 0, "train/test": 0, "val/test": 0}}


def test_every_planted_copy_is_found_once_and_nothing_else(planted):
    data = prepare_dataset(DataSpec(str(planted), 64))
    miss = [int(data.decoded.phash[data.files.index(f)], 16)
            for f in ("train/a/near-miss-1.png", "test/b/near-miss-2.png")]
    assert bin(miss[0] ^ miss[1]).count("1") <= 8  # a candidate, rejected by the pixel check
    report = data.leakage.to_dict()
    found = {tuple(sorted((e["a"]["file"], e["b"]["file"]))): (e["kind"], e["label_conflict"])
             for e in report["examples"]}
    assert found == {tuple(sorted(k)): v for k, v in EXPECTED_PAIRS.items()}
    expected = {c: {k: zero_counts() for k in ("exact", "near")}
                for c in ("duplicates", "label_conflicts")}
    expected["duplicates"]["exact"]["cross_split"]["train/test"] = 1
    expected["duplicates"]["exact"]["cross_split"]["val/test"] = 1
    expected["duplicates"]["near"]["cross_split"]["train/val"] = 2
    expected["duplicates"]["near"]["cross_split"]["train/test"] = 1
    expected["duplicates"]["near"]["cross_split"]["val/test"] = 1
    expected["duplicates"]["near"]["within_split"]["test"] = 1
    expected["label_conflicts"]["exact"]["within_split"]["train"] = 1
    expected["label_conflicts"]["near"]["cross_split"]["train/val"] = 1
    assert {c: report[c] for c in expected} == expected
    assert report["images_with_copy_in"] == {
        "train": {"val": 3, "test": 2},
        "val": {"train": 3, "test": 2},
        "test": {"train": 2, "val": 2},
    }
    assert report["train_shares_images_with"] == {"val": True, "test": True}
    # label conflicts come first among the examples, then copies across splits
    assert [e["label_conflict"] for e in report["examples"][:2]] == [True, True]
    json.dumps(report)  # JSON-able as it is


def test_distinct_cells_close_in_phash_are_not_called_copies():
    # 200 distinct synthetic cells: their pHashes collide (as real fields do), their pixels do not
    images, digests, hashes = [], [], []
    import hashlib

    import imagehash

    for k, kind in enumerate(("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")):
        for i in range(40):
            buffer = io.BytesIO()
            Image.fromarray(render_cell(kind, 96, (7, k, i))).save(buffer, "PNG")
            pixels = decode_image(buffer.getvalue(), 64)
            images.append(pixels)
            digests.append(hashlib.sha256(buffer.getvalue()).hexdigest())
            hashes.append(str(imagehash.phash(Image.fromarray(pixels))))
    values = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    close_pairs = leakage._close_hashes(values, leakage.HAMMING_BITS)[0]
    assert len(close_pairs) >= 1  # the pixel check has something to reject
    assert len(find_copies(np.stack(images), digests, hashes).first) == 0


def test_dropping_keeps_test_whole_and_removes_every_cross_split_copy(planted):
    kept = prepare_dataset(DataSpec(str(planted), 64))
    data = prepare_dataset(DataSpec(str(planted), 64, drop_cross_split_duplicates=True))
    report = data.leakage
    assert report.dropped == {"train": 4, "val": 2}
    assert np.array_equal(data.splits["test"], kept.splits["test"])
    assert len(data.splits["train"]) == len(kept.splits["train"]) - 4
    assert len(data.splits["val"]) == len(kept.splits["val"]) - 2
    gone = {data.files[i] for s in ("train", "val")
            for i in set(kept.splits[s]) - set(data.splits[s])}
    # chain-x stays: its only copy, chain-y, left val with the first step (it copies test)
    assert gone == {"train/a/a0.png", "train/b/b0.png", "val/b/b0.png", "val/a/chain-y.png",
                    "train/a/a1.png", "train/b/b1.png"}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert report.shared_pairs(a, b) == 0
    # chain-x (train) is chain-z (test) 8 grey levels darker: no pHash copy, but a sibling
    assert report.with_train_sibling("test") == 1 and report.with_train_sibling("val") == 0
    assert report.train_shares_images
    assert report.pairs["label_conflicts"]["exact"]["train"] == 1  # within train: kept
    as_dict = report.to_dict()
    assert as_dict["before_drop"]["duplicates"]["exact"]["cross_split"]["train/test"] == 1
    assert as_dict["dropped"] == {"train": 4, "val": 2}
    text = report.summary_text()
    assert "Dropped before training: 4 train and 2 val" in text
    warnings = [line for line in text.splitlines() if line.startswith("WARNING")]
    assert warnings == ["WARNING: 1 test image(s) of 16 have a sibling in train; test scores "
                        "are optimistic."]


def test_summary_warns_when_train_shares_images(planted):
    report = prepare_dataset(DataSpec(str(planted), 64)).leakage
    assert report.train_shares_images
    text = report.summary_text()
    assert "WARNING: train shares 2 copy pair(s) with test" in text
    assert "WARNING: train shares 3 copy pair(s) with val" in text
    assert "label conflicts (one image under two classes): 2 pair(s)" in text
    # siblings include the copies, plus chain-z ~ chain-x that no pixel hash links
    assert "WARNING: 3 val image(s) of 13 have a sibling in train" in text
    assert "WARNING: 3 test image(s) of 16 have a sibling in train" in text
    assert len(text.splitlines()) <= 9


def test_copy_search_is_cached_beside_the_decode_cache(planted):
    data = prepare_dataset(DataSpec(str(planted), 64))
    stored = list(data.decoded.path.glob("copies-*.npz"))
    assert len(stored) == 1 and f"h{leakage.HAMMING_BITS}" in stored[0].name
    again = cached_copies(data.images, data.decoded.sha256, data.decoded.phash, data.decoded.path)
    fresh = find_copies(data.images, data.decoded.sha256, data.decoded.phash)
    assert again.cache_hit and not fresh.cache_hit
    for name in ("first", "second", "exact", "bits", "levels"):
        assert np.array_equal(getattr(again, name), getattr(fresh, name))


def test_vectorised_hash_search_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**63, 120, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    near = base[:40] ^ (np.uint64(1) << rng.integers(0, 64, 40).astype(np.uint64))
    far = base[40:60] ^ np.uint64(0xFFFF)  # 16 bits away: beyond the threshold
    hashes = np.concatenate([base, near, far])
    monkeypatch.setattr(leakage, "_BLOCK", 50 * len(hashes))  # several row blocks
    first, second, bits = leakage._close_hashes(hashes, 8)
    got = set(zip(first.tolist(), second.tolist(), bits.tolist()))
    expected = {
        (i, j, bin(int(hashes[i]) ^ int(hashes[j])).count("1"))
        for i in range(len(hashes)) for j in range(i + 1, len(hashes))
        if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 8
    }
    assert got == expected and len(expected) >= 40


def test_popcount_without_numpy_bitwise_count(monkeypatch):
    values = np.array([0, 1, 2**64 - 1, 0xF0F0, 2**63], dtype=np.uint64)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert leakage._popcount(values).tolist() == [0, 1, 64, 8, 1]


def test_hash_search_over_17000_images_takes_seconds_not_minutes():
    hashes = np.random.default_rng(0).integers(0, 2**63, 17_000, dtype=np.uint64)
    start = time.perf_counter()
    leakage._close_hashes(hashes, leakage.HAMMING_BITS)
    assert time.perf_counter() - start < 10  # ~0.5 s on one core; generous for a shared box

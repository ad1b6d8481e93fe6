"""The data layer: layouts, stratified reproducible splits, the decode cache, synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_image

from leukoml.data import (
    SYNTHETIC_CLASSES,
    DataSpec,
    parse_synthetic,
    prepare_dataset,
    render_cell,
    resolve_data,
    scan_dataset,
)
from leukoml.errors import LeukomlError


def test_random_split_is_stratified_70_20_10_and_reproducible(make_dataset_folder):
    root = make_dataset_folder({"a": 40, "b": 20, "c": 10})
    first = prepare_dataset(DataSpec(str(root), 32, seed=3))
    again = prepare_dataset(DataSpec(str(root), 32, seed=3))
    other = prepare_dataset(DataSpec(str(root), 32, seed=4))
    assert first.split_sizes() == {"train": 49, "val": 14, "test": 7}
    for name in ("train", "val", "test"):
        assert np.array_equal(first.splits[name], again.splits[name])
    assert not np.array_equal(first.splits["test"], other.splits["test"])
    counts = first.class_counts()
    # every class keeps its 4:2:1 share in every split (within rounding)
    assert counts["test"] == {"a": 4, "b": 2, "c": 1}
    assert counts["val"]["a"] == 8 and counts["val"]["c"] in (2, 3)
    everything = np.concatenate(list(first.splits.values()))
    assert sorted(everything.tolist()) == list(range(70))  # a partition, no overlap


def test_split_folders_are_case_insensitive_and_others_ignored(make_dataset_folder):
    root = make_dataset_folder({"EOS": 12, "LYM": 12}, split="TRAIN")
    make_dataset_folder({"EOS": 4, "LYM": 4}, split="TEST", root=root)
    make_dataset_folder({"EOS": 3, "LYM": 3}, split="TEST_SIMPLE", root=root)
    data = prepare_dataset(DataSpec(str(root), 32))
    assert data.class_names == ["EOS", "LYM"]
    assert data.split_sizes()["test"] == 8  # TEST only, not TEST_SIMPLE
    assert "val carved from train" in data.split_source
    assert data.split_sizes()["train"] + data.split_sizes()["val"] == 24
    test_files = {data.files[i] for i in data.splits["test"]}
    assert all(f.startswith("TEST/") for f in test_files)
    assert not any("TEST_SIMPLE" in f for f in data.files)


def test_split_folders_without_train_are_refused(make_dataset_folder):
    root = make_dataset_folder({"a": 3, "b": 3}, split="test")
    with pytest.raises(LeukomlError, match="no 'train' folder"):
        scan_dataset(root)


def test_fewer_than_two_classes_is_refused_naming_the_folder(make_dataset_folder):
    root = make_dataset_folder({"only": 5})
    with pytest.raises(LeukomlError, match=f"{root}.*at least 2 class"):
        prepare_dataset(DataSpec(str(root), 32))


def test_bad_files_are_skipped_and_listed(make_dataset_folder):
    root = make_dataset_folder({"a": 10, "b": 10})
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "notes.jpg").write_text("this is not a picture")
    (root / "b" / "readme.txt").write_text("hello")
    good = write_image(root / "b" / "cut.jpg", size=(64, 64), quality=95)
    good.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # truncated JPEG
    data = prepare_dataset(DataSpec(str(root), 32))
    reasons = dict(data.skipped)
    assert set(reasons) == {"a/empty.jpg", "a/notes.jpg", "b/readme.txt", "b/cut.jpg"}
    assert "empty" in reasons["a/empty.jpg"]
    assert "not an image" in reasons["a/notes.jpg"]
    assert "not an image file type" in reasons["b/readme.txt"]
    assert "truncated" in reasons["b/cut.jpg"]
    assert len(data.files) == 20 and data.images.shape == (20, 32, 32, 3)


def test_a_class_left_empty_after_skipping_stops_naming_the_folder(make_dataset_folder):
    root = make_dataset_folder({"a": 10})
    (root / "b").mkdir()
    (root / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(LeukomlError, match=f"{root / 'b'}.*no readable image"):
        prepare_dataset(DataSpec(str(root), 32))


def test_the_second_run_reuses_the_cache_and_decodes_nothing(make_dataset_folder, monkeypatch):
    import leukoml.data._cache as cache

    root = make_dataset_folder({"a": 6, "b": 6})
    first = prepare_dataset(DataSpec(str(root), 24))
    assert not first.decoded.cache_hit

    def no_decoding(*_):
        raise AssertionError("an image was decoded again")

    monkeypatch.setattr(cache, "_decode_one", no_decoding)
    second = prepare_dataset(DataSpec(str(root), 24))
    assert second.decoded.cache_hit
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))
    # a changed file changes the fingerprint, so the cache is not reused wrongly
    monkeypatch.undo()
    write_image(root / "a" / "a_000.png", size=(50, 50))
    third = prepare_dataset(DataSpec(str(root), 24))
    assert not third.decoded.cache_hit and third.fingerprint != first.fingerprint


def test_a_copy_with_new_mtimes_reuses_the_cache_and_the_bytes_are_read_once(
        make_dataset_folder, tmp_path, monkeypatch):
    import os
    import shutil
    from pathlib import Path

    root = make_dataset_folder({"a": 6, "b": 6})
    first = prepare_dataset(DataSpec(str(root), 24))
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copyfile)  # new mtimes, same bytes
    for path in copy.rglob("*.png"):
        os.utime(path, ns=(1, 1))
    second = prepare_dataset(DataSpec(str(copy), 24))
    assert second.decoded.cache_hit and second.fingerprint == first.fingerprint

    def no_reading(_):
        raise AssertionError("the files were read again for the same state")

    monkeypatch.setattr(Path, "read_bytes", no_reading)
    assert scan_dataset(copy).fingerprint == first.fingerprint


def test_the_sibling_ids_of_a_copy_come_from_the_cache(make_dataset_folder, tmp_path,
                                                         monkeypatch):
    import shutil

    import leukoml.data._siblings as siblings
    from leukoml.data._prepare import sibling_ids

    root = make_dataset_folder({"a": 4, "b": 4})
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    first = sibling_ids(root, files)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copyfile)  # new mtimes, same bytes

    def no_search(_):
        raise AssertionError("the siblings of the same bytes were searched again")

    monkeypatch.setattr(siblings, "find_siblings", no_search)
    assert np.array_equal(sibling_ids(copy, files), first)


def test_the_cache_is_per_image_size(make_dataset_folder):
    root = make_dataset_folder({"a": 10, "b": 10})
    assert prepare_dataset(DataSpec(str(root), 24)).images.shape[1:] == (24, 24, 3)
    assert prepare_dataset(DataSpec(str(root), 40)).images.shape[1:] == (40, 40, 3)


def test_synthetic_images_are_deterministic_and_differ_by_class():
    a = render_cell("neutrophil", 64, seed=(1, 2))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_cell("neutrophil", 64, seed=(1, 2)))
    assert not np.array_equal(a, render_cell("neutrophil", 64, seed=(1, 3)))
    # the stained cell is darker than the pale background, in every class
    for kind in SYNTHETIC_CLASSES:
        pixels = render_cell(kind, 64, seed=0).astype(float)
        assert pixels.min() < 140 < np.median(pixels), kind


def test_synthetic_dataset_options_and_layout():
    assert parse_synthetic("synthetic") == {"per_class": 200, "seed": 0, "size": 96}
    assert parse_synthetic("Synthetic:per_class=12,seed=5")["seed"] == 5
    assert parse_synthetic("/data/wbc") is None
    with pytest.raises(LeukomlError, match="bad synthetic option"):
        parse_synthetic("synthetic:colour=red")
    folder = resolve_data("synthetic:per_class=12,seed=5,size=32")
    assert sorted(p.name for p in folder.iterdir()) == sorted(SYNTHETIC_CLASSES)
    assert len(list((folder / "monocyte").glob("*.png"))) == 12
    data = prepare_dataset(DataSpec("synthetic:per_class=12,seed=5,size=32", 32))
    assert data.class_names == sorted(SYNTHETIC_CLASSES)
    assert data.split_sizes() == {"train": 42, "val": 12, "test": 6}

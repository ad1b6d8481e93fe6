"""Group-aware splits: a source's images never straddle train/val/test."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from helpers import write_image
from hypothesis import given, settings
from hypothesis import strategies as st

from leukoml.data import DataSpec, prepare_dataset
from leukoml.data._groups import GroupBy
from leukoml.data._split import assign_splits
from leukoml.errors import LeukomlError

CLASSES = ["a", "b", "c"]


def split_of_each(splits: dict[str, np.ndarray], n: int) -> np.ndarray:
    """The split of every image; fails if an image is in two splits or in none."""
    where = np.full(n, -1)
    for k, idx in enumerate(splits.values()):
        assert (where[idx] == -1).all(), "an image is in two splits"
        where[idx] = k
    assert (where >= 0).all(), "an image is in no split"
    return where


def assert_groups_whole(splits, groups) -> None:
    where = split_of_each(splits, len(groups))
    for g in np.unique(groups):
        assert len(set(where[groups == g].tolist())) == 1, f"group {g} is split"


@st.composite
def grouped_labels(draw):
    """Per-class groups of 1-40 images (like augmented cells), 10-60 groups in all."""
    n_groups = draw(st.integers(10, 90))
    sizes = draw(st.lists(st.integers(1, 40), min_size=n_groups, max_size=n_groups))
    classes = draw(st.lists(st.integers(0, 2), min_size=n_groups, max_size=n_groups)
                   .filter(lambda c: len(set(c)) == 3))
    groups = np.repeat(np.arange(n_groups), sizes)
    labels = np.repeat(np.array(classes), sizes)
    order = np.random.default_rng(draw(st.integers(0, 2**16))).permutation(len(groups))
    return labels[order], groups[order]


# With this many groups in every class a grouped split must succeed: refusing it is a bug.
ENOUGH_GROUPS = 15
REFUSALS = ("a grouped split deals", "came out empty", "the grouped split leaves no")


def split_or_refuse(labels, folders, seed, groups):
    """The splits (every class in every split), or None when a class has too few groups
    to reach every split, said clearly; refusing an input with enough groups fails."""
    fewest = min(len(np.unique(groups[labels == c])) for c in range(len(CLASSES)))
    try:
        splits, source = assign_splits(labels, folders, CLASSES, seed, groups=groups)
    except LeukomlError as exc:
        assert fewest < ENOUGH_GROUPS, f"refused with {fewest} groups per class: {exc}"
        assert any(reason in str(exc) for reason in REFUSALS), str(exc)
        return None
    for name, idx in splits.items():
        assert set(labels[idx].tolist()) == set(range(len(CLASSES))), f"{name} lacks a class"
    return splits, source


@settings(max_examples=60, deadline=None)
@given(data=grouped_labels(), seed=st.integers(0, 10_000))
def test_random_grouped_split_never_splits_a_group(data, seed):
    labels, groups = data
    result = split_or_refuse(labels, [None] * len(labels), seed, groups)
    if result is not None:
        splits, source = result
        assert_groups_whole(splits, groups)
        assert all(len(idx) for idx in splits.values())
        assert "grouped" in source


@settings(max_examples=40, deadline=None)
@given(data=grouped_labels(), seed=st.integers(0, 10_000))
def test_carving_val_and_test_from_a_train_folder_never_splits_a_group(data, seed):
    labels, groups = data
    result = split_or_refuse(labels, ["train"] * len(labels), seed, groups)
    if result is not None:
        splits, source = result
        assert_groups_whole(splits, groups)
        assert source.startswith("folders (test and val carved from train, stratified, grouped")


def test_typical_grouped_inputs_are_split_not_refused():
    rng = np.random.default_rng(0)
    for trial in range(15):
        n_groups = int(rng.integers(30, 80))
        groups = np.repeat(np.arange(n_groups), rng.integers(1, 40, n_groups))
        labels = groups % 3
        for folders in ([None] * len(labels), ["train"] * len(labels)):
            splits, _ = assign_splits(labels, folders, CLASSES, trial, groups=groups)
            assert_groups_whole(splits, groups)


def test_grouped_split_is_seeded_reproducible_and_near_70_20_10():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(300), rng.integers(5, 15, 300))
    labels = (groups % 3).astype(int)
    first, _ = assign_splits(labels, [None] * len(labels), CLASSES, 7, groups=groups)
    again, _ = assign_splits(labels, [None] * len(labels), CLASSES, 7, groups=groups)
    other, _ = assign_splits(labels, [None] * len(labels), CLASSES, 8, groups=groups)
    assert all(np.array_equal(first[s], again[s]) for s in first)
    assert not np.array_equal(first["test"], other["test"])
    shares = {s: len(idx) / len(labels) for s, idx in first.items()}
    assert shares["train"] == pytest.approx(0.7, abs=0.02)
    assert shares["val"] == pytest.approx(0.2, abs=0.02)
    assert shares["test"] == pytest.approx(0.1, abs=0.02)
    for idx in first.values():  # stratified: each class about a third of each split
        shares = np.bincount(labels[idx], minlength=3) / len(idx)
        assert shares == pytest.approx([1 / 3] * 3, abs=0.05)


def test_ungrouped_random_split_of_70_is_exactly_49_14_7():
    labels = np.repeat(np.arange(2), 35)
    splits, source = assign_splits(labels, [None] * 70, CLASSES[:2], 0)
    assert {s: len(i) for s, i in splits.items()} == {"train": 49, "val": 14, "test": 7}
    assert source == "random 70/20/10 (stratified)"


def test_too_few_groups_is_refused_naming_the_count():
    labels = np.repeat([0, 1], 20)
    groups = np.repeat(np.arange(4), 10)
    with pytest.raises(LeukomlError, match="only 4 group.* needs at least 10"):
        assign_splits(labels, [None] * 40, CLASSES[:2], 0, groups=groups)


# --- group_by from file names and CSV files ---------------------------------------------------


@pytest.fixture
def augmented_dataset(tmp_path):
    """Kaggle-style names `_<cell>_<n>.png`: 12 cells per class, 6 augmented copies each."""
    root = tmp_path / "aug"
    for name in CLASSES:
        for cell in range(12):
            for copy in range(6):
                write_image(root / name / f"_{cell}_{copy * 97 + cell}.png", size=(24, 24))
    return root


def test_group_by_regex_keeps_every_cell_in_one_split(augmented_dataset):
    data = prepare_dataset(DataSpec(str(augmented_dataset), 24, seed=3, group_by=r"^_(\d+)_"))
    assert data.groups is not None and len(np.unique(data.groups)) == 36  # per class: 3 x 12
    assert_groups_whole(data.splits, data.groups)
    cell = [f"{f.split('/')[0]}/{f.split('/')[1].split('_')[1]}" for f in data.files]
    assert_groups_whole(data.splits, np.unique(cell, return_inverse=True)[1])
    assert data.split_source == (
        "random 70/20/10 (stratified, grouped by regex '^_(\\\\d+)_', 36 groups)"
    )


def test_files_the_regex_misses_become_their_own_group_with_a_warning(augmented_dataset, caplog):
    write_image(augmented_dataset / "a" / "odd-name.png", size=(24, 24))
    write_image(augmented_dataset / "b" / "other.png", size=(24, 24))
    with caplog.at_level(logging.WARNING):
        data = prepare_dataset(DataSpec(str(augmented_dataset), 24, group_by=r"^_(\d+)_"))
    assert len(np.unique(data.groups)) == 38
    assert "2 of 218 image(s) have no group" in caplog.text


def test_group_by_csv_groups_across_classes(augmented_dataset, tmp_path):
    # one "patient" per cell number, spanning the three classes
    rows = ["file,group"] + [
        f"{c}/_{cell}_{copy * 97 + cell}.png,patient-{cell}"
        for c in CLASSES for cell in range(12) for copy in range(6)
    ]
    (tmp_path / "groups.csv").write_text("\n".join(rows) + "\n")
    csv = str(tmp_path / "groups.csv")
    data = prepare_dataset(DataSpec(str(augmented_dataset), 24, seed=1, group_by=csv))
    assert len(np.unique(data.groups)) == 12
    assert_groups_whole(data.splits, data.groups)
    assert "grouped by groups.csv, 12 groups" in data.split_source


@pytest.mark.parametrize(
    "group_by, message",
    [
        (r"^_(\d+", "not a valid regular expression"),
        (r"^_\d+_", "has 0 capture groups; it needs exactly one"),
        (r"^_(\d+)_(\d+)", "has 2 capture groups"),
        ("missing/groups.csv", "CSV file 'missing/groups.csv' not found"),
    ],
)
def test_bad_group_by_is_refused_before_decoding(group_by, message, tmp_path):
    with pytest.raises(LeukomlError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GroupBy.parse(group_by, tmp_path)


def test_csv_without_the_columns_names_them(tmp_path):
    (tmp_path / "g.csv").write_text("path,patient\na/x.png,1\n")
    with pytest.raises(LeukomlError, match=r"columns file,group .* found path,patient"):
        GroupBy.parse(str(tmp_path / "g.csv"), tmp_path)


def test_csv_giving_a_file_two_groups_is_refused(tmp_path):
    (tmp_path / "g.csv").write_text("file,group\na/x.png,1\n./a/x.png,2\n")
    with pytest.raises(LeukomlError, match=r"line 3 gives 'a/x.png' a second group"):
        GroupBy.parse(str(tmp_path / "g.csv"), tmp_path)


def test_csv_inside_the_dataset_is_found_by_relative_name(augmented_dataset):
    (augmented_dataset / "groups.csv").write_text("file,group\na/_0_0.png,x\n")
    spec = GroupBy.parse("groups.csv", augmented_dataset)
    assert spec.mapping == {"a/_0_0.png": "x"}

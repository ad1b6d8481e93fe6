"""The sibling search: features and their mirror permutation, the store, the grouping."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from leukoml.data._features import MIRROR, FeatureStore, feature_row, sift_features
from leukoml.data._siblings import candidate_pairs, find_siblings, next_round
from leukoml.data._synthetic import SYNTHETIC_CLASSES, render_cell


def _field(seed: int, side: int = 240) -> np.ndarray:
    """A synthetic field (grey) with texture enough for SIFT."""
    return cv2.cvtColor(render_cell(SYNTHETIC_CLASSES[seed % 5], side, seed=(11, seed)),
                        cv2.COLOR_RGB2GRAY)


def _augment(image: np.ndarray, angle: float, flip: bool, shift: tuple[int, int],
             zoom: float = 1.0) -> np.ndarray:
    """What augment-first data sets do: rotate, zoom, shift (black fill), maybe mirror."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, zoom)
    matrix[:, 2] += shift
    out = cv2.warpAffine(image, matrix, (width, height), borderValue=0)
    return cv2.flip(out, 1) if flip else out


def test_the_mirror_permutation_matches_sift_of_the_mirror_image():
    noise = np.random.default_rng(0).uniform(0, 255, (120, 160)).astype(np.uint8)
    grey = cv2.GaussianBlur(noise, (0, 0), 2.0)  # no symmetry a descriptor could hide behind
    grey = cv2.normalize(grey, None, 0, 255, cv2.NORM_MINMAX)
    sift = cv2.SIFT_create()
    plain, mirror = sift.detectAndCompute(grey, None), sift.detectAndCompute(cv2.flip(grey, 1),
                                                                              None)
    width = grey.shape[1]
    points = np.array([k.pt for k in mirror[0]])
    errors = {"mirror": [], "identity": []}
    for keypoint, desc in zip(*plain):
        distance = np.hypot(*(points - (width - 0.5 - keypoint.pt[0], keypoint.pt[1])).T)
        j = int(distance.argmin())
        turn = abs((mirror[0][j].angle + keypoint.angle) % 360 - 180)  # mirrored: 180 - angle
        if distance[j] < 0.3 and abs(mirror[0][j].size - keypoint.size) < 0.1 and turn < 2:
            target = mirror[1][j].astype(float)
            for name, order in (("mirror", MIRROR), ("identity", np.arange(128))):
                errors[name].append(np.abs(desc[order] - target).sum() / target.sum())
    assert len(errors["mirror"]) >= 10  # keypoints found at mirrored positions
    assert np.median(errors["mirror"]) < 0.25
    assert np.median(errors["mirror"]) < np.median(errors["identity"]) / 3


def test_the_feature_store_gives_back_what_was_written(tmp_path):
    grey = _field(1, 160)
    points, desc, thumb = sift_features(grey)
    store = FeatureStore(tmp_path, 3)
    store.write(2, (len(points), grey.shape[1], points, desc, thumb))
    store.write(0, None)  # an unreadable file: no row
    folder = store.seal()
    store.close()
    again = FeatureStore.reopen(folder)
    got = again.features(2)
    assert np.array_equal(got.points[0], points) and np.array_equal(got.descriptors[0], desc)
    assert np.array_equal(got.thumb, thumb)
    assert np.array_equal(got.descriptors[1], desc[:, MIRROR])
    assert np.allclose(got.points[1][:, 0], grey.shape[1] - 0.5 - points[:, 0])
    assert list(again.count) == [0, 0, len(points)]
    again.close()


def test_candidate_pairs_are_unique_ordered_and_cut():
    ids = np.array([10, 20, 30])
    similarity = np.array([[0.9, 0.1], [0.9, 0.5], [0.5, -1.0]], np.float32)
    position = np.array([[1, 2], [0, 2], [1, -1]])
    pairs, sims, rank = candidate_pairs(ids, similarity, position)
    # (10, 20) seen twice, kept once; (10, 30) under SHORTLIST_MIN; (20, 30) is 30's first
    assert pairs.tolist() == [[10, 20], [20, 30]]
    assert sims.tolist() == pytest.approx([0.9, 0.5]) and rank.tolist() == [0, 0]


def test_later_rounds_try_one_pair_per_two_groups_not_yet_joined():
    pairs = np.array([[0, 1], [0, 2], [1, 2], [2, 3], [1, 3], [4, 5], [3, 4]])
    tried = np.array([True, False, False, False, False, False, False])
    group = np.array([0, 0, 1, 1, 2, 3])  # 0-1 joined, 2-3 joined, 4 and 5 alone
    todo = next_round(pairs, tried, group)
    # (0, 2) and (1, 2) join the same two groups: the more alike only; (2, 3) is inside a
    # group; (1, 3) joins the same two groups as (0, 2); (4, 5) joins two lone images, as
    # in a set without siblings: never past round one; (3, 4) joins a group to one
    assert todo.tolist() == [1, 6]


def test_siblings_are_grouped_and_distinct_fields_are_not(tmp_path):
    """Three fields each with rotated / mirrored / zoomed / shifted copies; nine alone.

    The three are textured classes (basophil, eosinophil, neutrophil granules): a smooth
    render has too few keypoints to verify, as a blank field would."""
    grouped = (0, 1, 4)
    truth, paths = [], []
    for seed in range(12):
        base = _field(seed)
        copies = [base]
        if seed in grouped:
            copies += [_augment(base, 37, False, (12, -8)), _augment(base, 200, True, (-10, 5)),
                       _augment(base, 95, False, (0, 0), zoom=1.15)]
        for k, image in enumerate(copies):
            path = tmp_path / f"field{seed}_{k}.png"
            cv2.imwrite(str(path), image)
            paths.append(str(path))
            truth.append(seed)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    paths.append(str(tmp_path / "broken.png"))
    truth.append(-1)
    found = find_siblings(paths, workers=1, scratch=tmp_path)
    truth = np.array(truth)
    for seed in grouped:  # every copy with its original
        assert len(set(found.group[truth == seed].tolist())) == 1, seed
    single = ~np.isin(truth, grouped)
    alone = found.group[single].tolist()
    assert len(set(alone)) == len(alone)  # distinct fields (and the broken file) stay apart
    assert len(set(found.group[~single].tolist()) & set(alone)) == 0
    assert found.n_groups == 3 and found.verified >= 3
    assert list(tmp_path.glob("leukoml-features-*")) == []  # the scratch store is gone


def test_feature_rows_of_an_unreadable_file_are_none(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert feature_row(str(path)) is None


def test_a_batch_log_hears_from_a_long_step(monkeypatch, caplog):
    import leukoml.progress as progress

    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="leukoml.progress"):
        assert list(progress.progress(range(3), 3, "sibling search: features")) == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "sibling search: features: 0/3 img"  # a line when the step starts,
    assert lines[-2].startswith("sibling search: features: 3/3 img (")  # as it goes,
    assert "s left" in lines[1]
    assert lines[-1].startswith("sibling search: features: 3 img in ")  # and when it ends


def test_a_blank_image_has_no_features_of_the_wrong_shape():
    points, desc, thumb = sift_features(np.full((120, 160), 200, np.uint8))
    assert points.shape == (0, 2) and desc.shape == (0, 128) and thumb.shape == (60, 80)

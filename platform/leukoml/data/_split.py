"""Seeded, stratified train / val / test splits, optionally at group boundaries.

Without split folders: 70 / 20 / 10, the source papers' protocol. Splits
the folders do not provide are carved from the train folder, stratified.
With groups (images of one source cell), a group never straddles two
splits: the pool is cut into 10 stratified group folds
(`StratifiedGroupKFold`) and whole folds are dealt to the splits, so the
fractions hold in fold units; which folds go where also follows the seed,
because the fold-building heuristic itself varies little with it.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from leukoml.errors import LeukomlError
from leukoml.names import SPLITS

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.2, "test": 0.1}


def _carve(
    indices: np.ndarray, labels: np.ndarray, fraction: float | int, seed: int, class_names,
    what: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` into (rest, carved): `fraction` of each class, or that many images."""
    y = labels[indices]
    counts = np.bincount(y, minlength=len(class_names))
    too_few = [class_names[c] for c in np.flatnonzero(counts) if counts[c] < 2]
    if too_few:
        raise LeukomlError(
            f"cannot carve a stratified {what} split: class(es) {', '.join(too_few)} have "
            "fewer than 2 images; add images or provide split folders"
        )
    try:
        rest, carved = train_test_split(indices, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as exc:  # e.g. test_size smaller than the number of classes
        raise LeukomlError(f"cannot carve a stratified {what} split of {len(indices)} images: {exc}")
    return np.sort(rest), np.sort(carved)


def _fold_count(shares: list[float]) -> int:
    """The fewest folds in which every share is a whole number of folds (0.1, 0.2 -> 10)."""
    for folds in range(2, 21):
        if all(abs(share * folds - round(share * folds)) < 1e-6 for share in shares):
            return folds
    raise ValueError(f"fractions {shares} are not multiples of 1/20")


def _carve_grouped(
    indices: np.ndarray, labels: np.ndarray, groups: np.ndarray, shares: dict[str, float],
    seed: int, what: str,
) -> dict[str, np.ndarray]:
    """Cut `indices` at group boundaries into the `shares` parts plus "rest", stratified."""
    folds = _fold_count(list(shares.values()))
    g = groups[indices]
    n_groups = len(np.unique(g))
    largest = int(np.bincount(labels[indices]).max())
    if n_groups < folds or largest < folds:
        raise LeukomlError(
            f"cannot carve a grouped {what} split: the {len(indices)} images form only "
            f"{n_groups} group(s) and the largest class has {largest} image(s); a grouped "
            f"split deals {folds} folds, so it needs at least {folds} of each; "
            "check group_by, or provide split folders"
        )
    fold_of = np.empty(len(indices), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class": checked per split afterwards
        warnings.simplefilter("ignore", UserWarning)
        try:
            for fold, (_, members) in enumerate(splitter.split(indices, labels[indices], g)):
                fold_of[members] = fold
        except ValueError as exc:
            raise LeukomlError(f"cannot carve a grouped {what} split: {exc}") from None
    order = np.random.default_rng(seed).permutation(folds)
    parts, start = {}, 0
    for name, share in shares.items():
        take = order[start: start + round(share * folds)]
        start += len(take)
        parts[name] = np.sort(indices[np.isin(fold_of, take)])
    parts["rest"] = np.sort(indices[np.isin(fold_of, order[start:])])
    empty = [name for name, part in parts.items() if len(part) == 0]
    if empty:
        raise LeukomlError(
            f"cannot carve a grouped {what} split: {' and '.join(empty)} came out empty "
            f"({n_groups} groups of very unequal size); check group_by"
        )
    return parts


def assign_splits(
    labels: np.ndarray,
    folder_splits: list[str | None],
    class_names: list[str],
    seed: int,
    fractions: dict[str, float] = DEFAULT_FRACTIONS,
    groups: np.ndarray | None = None,
    grouped_by: str = "",
) -> tuple[dict[str, np.ndarray], str]:
    """Indices of train/val/test and where they came from ("random ..." or "folders...").

    With `groups` (one id per image), images of one group always land in one
    split, except where split folders already put a group on two sides;
    `grouped_by` says how the groups were found, for the source string.
    """
    folder = np.array([s or "" for s in folder_splits])
    given = {s: np.flatnonzero(folder == s) for s in SPLITS if (folder == s).any()}
    how = "stratified"
    if groups is not None:
        how += ", grouped" + (f" by {grouped_by}" if grouped_by else "")
    if not given:
        pool = np.arange(len(labels))
        if groups is None:
            share = fractions["test"]
            pool, test = _carve(pool, labels, share, seed, class_names, "test")
            # a count, not 0.2 / 0.9: its float error would round 14.000000000000002 up to 15
            n_val = max(1, round(fractions["val"] * len(labels)))
            train, val = _carve(pool, labels, n_val, seed, class_names, "val")
        else:
            parts = _carve_grouped(
                pool, labels, groups, {"test": fractions["test"], "val": fractions["val"]}, seed,
                "train/val/test",
            )
            train, val, test = parts["rest"], parts["val"], parts["test"]
        splits = {"train": train, "val": val, "test": test}
        source = "random " + "/".join(f"{round(fractions[s] * 100)}" for s in SPLITS) + f" ({how})"
    else:
        train = given["train"]
        carved = []
        for name in ("test", "val"):
            if name in given:
                continue
            if groups is None:
                train, given[name] = _carve(train, labels, fractions[name], seed, class_names, name)
            else:
                parts = _carve_grouped(train, labels, groups, {name: fractions[name]}, seed, name)
                train, given[name] = parts["rest"], parts[name]
            carved.append(name)
        splits = {"train": train, "val": given["val"], "test": given["test"]}
        source = "folders"
        if carved:
            source += f" ({' and '.join(carved)} carved from train, {how})"
    if groups is not None:
        carved = list(SPLITS[1:]) if not given else carved
        _check_grouped(splits, labels, groups, class_names, carved, grouped_by)
    return splits, source


def _check_grouped(splits, labels, groups, class_names, carved, grouped_by) -> None:
    """Refuse a carved split that grouping left without a class; warn about groups that
    split folders put on two sides (not leukoml's doing)."""
    seen = [set(groups[idx].tolist()) for idx in splits.values()]
    shared = (seen[0] & seen[1]) | (seen[0] & seen[2]) | (seen[1] & seen[2])
    if shared:
        log.warning(
            "%d group(s) have images in more than one split folder; the split folders, "
            "not leukoml, put them there", len(shared),
        )
    pool = np.concatenate([splits["train"], *(splits[name] for name in carved)])
    for name in carved:
        missing = sorted(set(range(len(class_names))) - set(labels[splits[name]].tolist()))
        if missing:
            detail = "; ".join(
                f"{class_names[m]}: {int((labels[pool] == m).sum())} image(s) in "
                f"{len(np.unique(groups[pool][labels[pool] == m]))} group(s)" for m in missing)
            raise LeukomlError(
                f"data: the grouped split leaves no {name} image of class(es) "
                f"{', '.join(class_names[m] for m in missing)} ({detail}; grouped by "
                f"{grouped_by or 'group_by'}): a group never straddles two splits, so a class "
                f"needs at least as many groups as splits; add images of more cells, give a "
                f"{name} folder, or set group_by none (its {name} scores will leak)"
            )

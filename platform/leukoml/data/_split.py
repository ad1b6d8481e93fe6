"""Seeded, stratified train / val / test splits.

Without split folders: 70 / 20 / 10, the source papers' protocol. Splits
the folders do not provide are carved from the train folder, stratified.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from leukoml.errors import LeukomlError

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.2, "test": 0.1}


def _carve(
    indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int, class_names, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` into (rest, carved) with `fraction` of each class carved."""
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


def assign_splits(
    labels: np.ndarray,
    folder_splits: list[str | None],
    class_names: list[str],
    seed: int,
    fractions: dict[str, float] = DEFAULT_FRACTIONS,
) -> tuple[dict[str, np.ndarray], str]:
    """Indices of train/val/test and where they came from ("random" or "folders...")."""
    folder = np.array([s or "" for s in folder_splits])
    given = {s: np.flatnonzero(folder == s) for s in ("train", "val", "test") if (folder == s).any()}
    if not given:
        pool = np.arange(len(labels))
        share = fractions["test"]
        pool, test = _carve(pool, labels, share, seed, class_names, "test")
        train, val = _carve(pool, labels, fractions["val"] / (1 - share), seed, class_names, "val")
        return {"train": train, "val": val, "test": test}, "random 70/20/10 (stratified)"
    train = given["train"]
    carved = []
    if "test" not in given:
        train, given["test"] = _carve(train, labels, fractions["test"], seed, class_names, "test")
        carved.append("test")
    if "val" not in given:
        train, given["val"] = _carve(train, labels, fractions["val"], seed, class_names, "val")
        carved.append("val")
    source = "folders" + (f" ({' and '.join(carved)} carved from train, stratified)" if carved else "")
    return {"train": train, "val": given["val"], "test": given["test"]}, source

"""`prepare_dataset(spec)`: list, decode (cached), group and split one dataset.

What every job (train, search, promote, explain, evaluate) calls to turn a
`DataSpec` into decoded images with their splits, groups and leakage report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from leukoml.data._cache import DecodedImages, cache_root, load_or_decode
from leukoml.data._discover import Listing, content_fingerprint, printable
from leukoml.data._groups import GroupBy, Groups, sibling_groups
from leukoml.data._leakage import (
    LeakageReport,
    cached_copies,
    drop_cross_split_copies,
    leakage_report,
    sibling_crossings,
)
from leukoml.data._siblings import Siblings, cached_siblings
from leukoml.data._source import list_source
from leukoml.data._split import assign_splits
from leukoml.data.spec import NO_GROUPS, DataSpec
from leukoml.errors import LeukomlError

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Decoded images of one dataset at one size, with their splits."""

    spec: DataSpec
    root: Path
    class_names: list[str]
    files: list[str]  # relative paths of the decoded images
    labels: np.ndarray  # (N,) int
    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    splits: dict[str, np.ndarray]  # "train" / "val" / "test" -> indices into images
    split_source: str
    skipped: list[tuple[str, str]]  # (relative path, reason)
    fingerprint: str
    decoded: DecodedImages
    stat_fingerprint: str = ""  # of names, sizes and mtimes: what runs logged before bytes did
    groups: np.ndarray | None = None  # (N,) group id per image (siblings, or group_by)
    leakage: LeakageReport | None = None  # copies and siblings within/across the splits
    # seconds per preparation phase (listing, decode, copies, siblings, split); 0 when reused
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.spec.source

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def split_sizes(self) -> dict[str, int]:
        return {name: int(len(idx)) for name, idx in self.splits.items()}

    def class_counts(self) -> dict[str, dict[str, int]]:
        return {
            split: {
                name: int(n)
                for name, n in zip(
                    self.class_names, np.bincount(self.labels[idx], minlength=len(self.class_names))
                )
            }
            for split, idx in self.splits.items()
        }

    @property
    def cells_missed(self) -> int:
        """Images kept whole because `crop="cell"` found no leukocyte (0 without a crop)."""
        return len(self.decoded.cell_found) - int(sum(self.decoded.cell_found)) if (
            self.spec.crop == "cell") else 0

    def group_ids(self) -> np.ndarray:
        """A group per image: its siblings' (or group_by's), else one of its own."""
        return self.groups if self.groups is not None else np.arange(len(self.labels))

    def manifest(self) -> pd.DataFrame:
        """One row per image in a split: file, class, split, group. Rebuilds the split."""
        group = self.group_ids()
        frames = [pd.DataFrame({"file": [self.files[i] for i in idx],
                                "class": [self.class_names[c] for c in self.labels[idx]],
                                "split": name, "group": group[idx]})
                  for name, idx in self.splits.items()]
        return pd.concat(frames, ignore_index=True)


def _grouping(spec: DataSpec, root, listing: Listing, decoded: DecodedImages, files, labels,
              folder_splits, copies) -> tuple[Groups | None, Siblings | None]:
    """The groups a split must respect: detected siblings (default), group_by, or none."""
    if spec.grouping == "explicit":
        return GroupBy.parse(spec.group_by, root).groups(files, labels, folder_splits), None
    if spec.grouping == NO_GROUPS:
        return None, None
    siblings = cached_siblings(listing.root, listing.files, listing.fingerprint, cache_root())
    kept = np.asarray(decoded.kept, dtype=np.int64)
    return sibling_groups(siblings.group[kept], copies.first, copies.second), siblings


def _sibling_summary(spec: DataSpec, siblings: Siblings | None, groups: Groups | None,
                     splits, split_source: str) -> dict:
    if spec.grouping == NO_GROUPS:
        summary = "not searched (group_by none)"
    elif siblings is None:
        summary = f"not searched (grouped by {groups.description})"
    else:
        summary = siblings.summary() + (
            f" ({'reused' if siblings.cache_hit else 'found'} in {siblings.seconds:.1f} s)")
    crossings = sibling_crossings(groups.ids, splits) if groups is not None else {}
    return {"searched": siblings is not None, "summary": summary,
            "groups": None if groups is None else groups.count,
            "split": split_source, "images_with_sibling_in": crossings}


def sibling_ids(root: Path, files: list[str]) -> np.ndarray:
    """One group id per file of `root`: images of one field (rotated, flipped, shifted
    copies) share an id. Cached like a dataset's; what `-e evaluate`'s intervals resample."""
    stats = [(Path(root) / name).stat() for name in files]
    fingerprint = content_fingerprint(Path(root), files, [
        f"{name}\t{stat.st_size}" for name, stat in zip(files, stats)],
        [stat.st_mtime_ns for stat in stats])
    found = cached_siblings(Path(root), files, fingerprint, cache_root())
    log.info("siblings of %d images: %s", len(files), found.summary())
    return np.asarray(found.group, dtype=np.int64)


def prepare_dataset(spec: DataSpec) -> PreparedData:
    """List, decode (cached), group and split a dataset; check it for copies across splits.

    Bad files are skipped and listed. Images of one field (siblings, found by
    default) or one `group_by` group never straddle a carved split.
    `drop_cross_split_duplicates` removes from train and val the images that
    copy a test image, then from train those copying a val image.
    """
    start = time.perf_counter()
    spec, root, listing = list_source(spec)
    seconds = {"listing": time.perf_counter() - start}
    decoded = load_or_decode(listing, spec.image_size, spec.crop)
    seconds["decode"] = 0.0 if decoded.cache_hit else decoded.seconds
    labels = np.asarray(listing.labels)[decoded.kept]
    files = [listing.files[i] for i in decoded.kept]
    folder_splits = [listing.folder_splits[i] for i in decoded.kept]
    # reported, never opened again: shown printable (pandas, MLflow and logs reject surrogates)
    skipped = [(printable(f), printable(r)) for f, r in listing.skipped + decoded.skipped]
    if skipped:  # on the console too: a run that stops on its data logs nothing
        shown = "; ".join(f"{f}: {r}" for f, r in skipped[:5])
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        log.warning("skipped %d file(s) that are not usable images (listed in the run's "
                    "data/skipped_files.csv): %s%s", len(skipped), shown, more)
    try:
        return _split(spec, root, listing, decoded, labels, files, folder_splits, skipped,
                      seconds)
    except LeukomlError as exc:
        if not skipped:
            raise
        listed = _write_skipped(skipped, listing.fingerprint)
        raise LeukomlError(f"{exc} (the {len(skipped)} skipped file(s) are listed in "
                           f"{listed})") from None


def _write_skipped(skipped: list[tuple[str, str]], fingerprint: str) -> Path:
    """The skipped files of a dataset whose preparation stopped (no run to log them to)."""
    import csv

    path = cache_root() / "skipped" / f"{fingerprint}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([("file", "reason"), *skipped])
    return path


def _split(spec: DataSpec, root: Path, listing: Listing, decoded: DecodedImages, labels, files,
           folder_splits, skipped, seconds: dict[str, float]) -> PreparedData:
    """Group and split decoded images; check the split for copies and empty classes."""
    counts = np.bincount(labels, minlength=len(listing.class_names))
    for label, count in enumerate(counts):
        if count == 0:
            folder = printable(listing.class_folder(label))
            raise LeukomlError(
                f"data: class folder {folder} has no readable image left after skipping bad files"
            )
    copies = cached_copies(decoded.images, decoded.sha256, decoded.phash, decoded.path)
    log.info("%s the copy search (%d pairs) in %.2f s",
             "reused" if copies.cache_hit else "ran", len(copies.first), copies.seconds)
    seconds["copies"] = 0.0 if copies.cache_hit else copies.seconds
    groups, siblings = _grouping(spec, root, listing, decoded, files, labels, folder_splits,
                                 copies)
    seconds["siblings"] = 0.0 if siblings is None or siblings.cache_hit else siblings.seconds
    start = time.perf_counter()
    splits, split_source = assign_splits(
        labels, folder_splits, listing.class_names, spec.seed, fractions=spec.fractions,
        groups=groups.ids if groups else None,
        grouped_by=f"{groups.description}, {groups.count} groups" if groups else "",
    )
    leakage = leakage_report(copies, files, labels, listing.class_names, splits, spec.image_size)
    if spec.drop_cross_split_duplicates:
        before = leakage
        splits, dropped = drop_cross_split_copies(copies, splits, len(labels))
        leakage = leakage_report(copies, files, labels, listing.class_names, splits,
                                 spec.image_size)
        leakage.dropped, leakage.before_drop = dropped, before
        log.warning("dropped %d train and %d val image(s) that copy an image of a later split",
                    dropped["train"], dropped["val"])
        if not len(splits["val"]):
            raise LeukomlError(
                "data: every val image copies a test image; nothing is left to validate on"
            )
    leakage.siblings = _sibling_summary(spec, siblings, groups, splits, split_source)
    log.info("siblings: %s; split: %s", leakage.siblings["summary"], split_source)
    if spec.crop == "cell":
        missed = len(decoded.cell_found) - int(sum(decoded.cell_found))
        log.info("crop cell: the leukocyte was found in %d of %d images (the %d others are "
                 "kept whole)", len(decoded.cell_found) - missed, len(decoded.cell_found), missed)
    if leakage.train_shares_images:
        log.warning("train shares images with val or test:\n%s", leakage.summary_text())
    missing = set(range(len(listing.class_names))) - set(labels[splits["train"]].tolist())
    if missing:
        raise LeukomlError(
            "data: no training images for class(es) "
            + ", ".join(printable(listing.class_names[m]) for m in sorted(missing))
        )
    seconds["split"] = time.perf_counter() - start
    return PreparedData(
        seconds={k: round(v, 2) for k, v in seconds.items()},
        spec=spec,
        root=root,
        class_names=listing.class_names,
        files=files,
        labels=labels,
        images=decoded.images,
        splits=splits,
        split_source=split_source,
        skipped=skipped,
        fingerprint=listing.fingerprint,
        decoded=decoded,
        stat_fingerprint=listing.stat_fingerprint,
        groups=groups.ids if groups else None,
        leakage=leakage,
    )

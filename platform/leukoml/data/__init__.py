"""The data layer: folder -> listing -> decode cache -> splits.

`prepare_dataset` is the one entry point for training code. The tf.data
feed lives in `leukoml.data.tfdata`, kept out of this package's import so the
decode workers (spawned processes) never load TensorFlow.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukoml.data._cache import DecodedImages, cache_root, load_or_decode
from leukoml.data._decode import IMAGE_SUFFIXES, MAX_PIXELS, ImageError, decode_image
from leukoml.data._discover import Listing, printable, scan_dataset
from leukoml.data._groups import GroupBy
from leukoml.data._leakage import (
    LeakageReport,
    cached_copies,
    drop_cross_split_copies,
    leakage_report,
)
from leukoml.data._split import assign_splits
from leukoml.data._synthetic import CLASSES as SYNTHETIC_CLASSES
from leukoml.data._synthetic import GENERATOR_VERSION, render_cell, write_synthetic_dataset
from leukoml.errors import LeukomlError

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
_SYNTHETIC_DEFAULTS = {"per_class": 200, "seed": 0, "size": 96}


@dataclass
class PreparedData:
    """Decoded images of one dataset at one size, with their splits."""

    source: str  # what the user passed ("synthetic", a path)
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
    groups: np.ndarray | None = None  # (N,) source-group id per image, when grouped
    leakage: LeakageReport | None = None  # copies within/across the splits

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


def parse_synthetic(source: str) -> dict[str, int] | None:
    """`synthetic` or `synthetic:per_class=300,seed=1,size=128` -> options; else None."""
    head, _, tail = source.partition(":")
    if head.strip().lower() != SYNTHETIC:
        return None
    options = dict(_SYNTHETIC_DEFAULTS)
    for item in filter(None, (part.strip() for part in tail.split(","))):
        key, _, value = item.partition("=")
        if key not in options or not value.strip().isdigit():
            raise LeukomlError(
                f"data: bad synthetic option {item!r}; use synthetic:"
                + ",".join(f"{k}=<int>" for k in options)
            )
        options[key] = int(value)
    if options["per_class"] < 10 or options["size"] < 32:
        raise LeukomlError("data: synthetic needs per_class >= 10 and size >= 32")
    return options


def resolve_data(source: str) -> Path:
    """The dataset folder for `source`, rendering the synthetic set on first use."""
    options = parse_synthetic(str(source))
    if options is None:
        return Path(source).expanduser()
    folder = cache_root() / "synthetic" / (
        f"v{GENERATOR_VERSION}-n{options['per_class']}-seed{options['seed']}-{options['size']}px"
    )
    if not folder.is_dir():
        log.info("rendering the synthetic dataset into %s", folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
        try:
            write_synthetic_dataset(tmp, options["per_class"], options["seed"], options["size"])
            os.rename(tmp, folder)  # atomic: concurrent workers never see half a dataset
        except OSError:
            if not folder.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def prepare_dataset(
    source: str,
    image_size: int,
    seed: int = 0,
    group_by: str | None = None,
    drop_cross_split_duplicates: bool = False,
) -> PreparedData:
    """List, decode (cached), split and check a dataset for copies across the splits.

    Bad files are skipped and listed. `group_by` (a regex with one capture
    group over file names, or a `file,group` CSV) keeps each source's images
    in one split. `drop_cross_split_duplicates` removes from train and val the
    images that copy a test image, then from train those copying a val image.
    """
    root = resolve_data(source)
    spec = GroupBy.parse(group_by, root) if group_by else None  # fail before decoding
    listing = scan_dataset(root)
    decoded = load_or_decode(listing, image_size)
    labels = np.asarray(listing.labels)[decoded.kept]
    files = [listing.files[i] for i in decoded.kept]
    folder_splits = [listing.folder_splits[i] for i in decoded.kept]
    # reported, never opened again: shown printable (pandas, MLflow and logs reject surrogates)
    skipped = [(printable(f), printable(r)) for f, r in listing.skipped + decoded.skipped]
    if skipped:
        log.warning("skipped %d file(s) that are not usable images (listed in the run)", len(skipped))
    counts = np.bincount(labels, minlength=len(listing.class_names))
    for label, count in enumerate(counts):
        if count == 0:
            folder = printable(listing.class_folder(label))
            raise LeukomlError(
                f"data: class folder {folder} has no readable image left after skipping bad files"
            )
    groups = spec.groups(files, labels, folder_splits) if spec else None
    splits, split_source = assign_splits(
        labels, folder_splits, listing.class_names, seed,
        groups=groups.ids if groups else None,
        grouped_by=f"{groups.description}, {groups.count} groups" if groups else "",
    )
    copies = cached_copies(decoded.images, decoded.sha256, decoded.phash, decoded.path)
    leakage = leakage_report(copies, files, labels, listing.class_names, splits, image_size)
    log.info("%s the copy search (%d pairs) in %.2f s",
             "reused" if copies.cache_hit else "ran", len(copies.first), copies.seconds)
    if drop_cross_split_duplicates:
        before = leakage
        splits, dropped = drop_cross_split_copies(copies, splits, len(labels))
        leakage = leakage_report(copies, files, labels, listing.class_names, splits, image_size)
        leakage.dropped, leakage.before_drop = dropped, before
        log.warning("dropped %d train and %d val image(s) that copy an image of a later split",
                    dropped["train"], dropped["val"])
        if not len(splits["val"]):
            raise LeukomlError(
                "data: every val image copies a test image; nothing is left to validate on"
            )
    if leakage.train_shares_images:
        log.warning("train shares images with val or test:\n%s", leakage.summary_text())
    missing = set(range(len(listing.class_names))) - set(labels[splits["train"]].tolist())
    if missing:
        raise LeukomlError(
            "data: no training images for class(es) "
            + ", ".join(printable(listing.class_names[m]) for m in sorted(missing))
        )
    return PreparedData(
        source=str(source),
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
        groups=groups.ids if groups else None,
        leakage=leakage,
    )


__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "LeakageReport",
    "SYNTHETIC",
    "SYNTHETIC_CLASSES",
    "ImageError",
    "Listing",
    "PreparedData",
    "cache_root",
    "decode_image",
    "parse_synthetic",
    "prepare_dataset",
    "render_cell",
    "resolve_data",
    "scan_dataset",
]

"""Where a dataset's files are: a folder, or the embedded synthetic set rendered on first use."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from leukoml.data._cache import cache_root
from leukoml.data._discover import Listing, scan_dataset
from leukoml.data._groups import GroupBy
from leukoml.data._synthetic import GENERATOR_VERSION, write_synthetic_dataset
from leukoml.data.spec import DataSpec
from leukoml.errors import LeukomlError

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
_SYNTHETIC_DEFAULTS = {"per_class": 200, "seed": 0, "size": 96}


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


def list_source(spec: DataSpec) -> tuple[DataSpec, Path, Listing]:
    """The checked spec, the folder and its listing: everything about a dataset that can
    be wrong before a single image is decoded (a folder, its classes, its grouping)."""
    spec = spec.validated()
    root = resolve_data(spec.source)
    if spec.grouping == "explicit":
        GroupBy.parse(spec.group_by, root)
    return spec, root, scan_dataset(root, spec.follow_links)


def check_source(spec: DataSpec) -> None:
    """Every way a dataset can be unusable, found before any run, trial or TensorFlow import:
    `list_source`, then one readable image per class (a folder of non-images fails here, in
    a second, not after the imports and in every trial). Stops at each class's first image
    that decodes: one decode per class on good data. The synthetic set is rendered, not
    listed: only its spec is checked."""
    from leukoml.data._decode import ImageError, decode_image
    from leukoml.data._discover import printable

    if parse_synthetic(str(spec.source).strip()) is not None:
        spec.validated()
        return
    _, root, listing = list_source(spec)
    for label in range(len(listing.class_names)):
        files = [f for f, mine in zip(listing.files, listing.labels) if mine == label]
        for name in files:
            try:
                decode_image((root / name).read_bytes(), 16)
                break
            except (ImageError, OSError):
                continue
        else:
            raise LeukomlError(f"data: class folder {printable(listing.class_folder(label))} "
                               f"has no readable image ({len(files)} file(s) tried)")

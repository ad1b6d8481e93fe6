"""Decode each image once per (dataset fingerprint, image size), keep it on disk.

An entry is a folder holding `images.npy` (N x S x S x 3 uint8, opened
memory-mapped) and `meta.json` (kept files, skipped files with reasons, and a
content hash plus perceptual hash per image for the leakage checks). Entries
are built in a temporary folder and renamed into place, so concurrent
workers never read a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukoml.data._decode import ImageError, decode_cropped
from leukoml.data._discover import Listing
from leukoml.data._parallel import parallel_map
from leukoml.progress import progress

log = logging.getLogger(__name__)

CACHE_FORMAT = 2


def cache_root() -> Path:
    """`$LEUKOML_CACHE_DIR`, else `~/.cache/leukoml`."""
    return Path(os.environ.get("LEUKOML_CACHE_DIR", Path.home() / ".cache" / "leukoml"))


@dataclass
class DecodedImages:
    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    kept: list[int]  # positions in the listing of the decoded files, in order
    skipped: list[tuple[str, str]]  # files that failed to decode, with the reason
    sha256: list[str]
    phash: list[str]
    cell_found: list[bool]  # per kept image: whether `crop="cell"` found the cell
    cache_hit: bool
    seconds: float
    path: Path


def _decode_one(args: tuple[str, int, str]) -> tuple[bool, object, str, str, bool]:
    """(ok, array or reason, sha256, phash, cell found) for one file; runs in worker processes."""
    path, size, crop = args
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return False, f"unreadable file: {exc.strerror or exc}", "", "", False
    try:
        pixels, found = decode_cropped(data, size, crop)
    except ImageError as exc:
        return False, str(exc), "", "", False
    return True, pixels, hashlib.sha256(data).hexdigest(), _phash(pixels), found


def _phash(pixels: np.ndarray) -> str:
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(pixels)))


def load_or_decode(listing: Listing, image_size: int, crop: str = "none",
                   workers: int | None = None) -> DecodedImages:
    """The decoded images of `listing` at `image_size`, from the cache when present."""
    name = f"{listing.fingerprint}-{image_size}px-{crop}-v{CACHE_FORMAT}"
    entry = cache_root() / "decoded" / name
    start = time.perf_counter()
    if not (entry / "meta.json").is_file():
        _build(listing, image_size, crop, entry, workers)
        hit = False
    else:
        hit = True
    meta = json.loads((entry / "meta.json").read_text())
    images = np.load(entry / "images.npy", mmap_mode="r")
    seconds = time.perf_counter() - start
    log.info(
        "%s decode cache for %d images at %d px: %s (%.1f s)",
        "reused" if hit else "built", len(meta["kept"]), image_size, entry, seconds,
    )
    return DecodedImages(
        images=images,
        kept=meta["kept"],
        skipped=[tuple(s) for s in meta["skipped"]],
        sha256=meta["sha256"],
        phash=meta["phash"],
        cell_found=meta["cell_found"],
        cache_hit=hit,
        seconds=seconds,
        path=entry,
    )


def _build(listing: Listing, size: int, crop: str, entry: Path, workers: int | None) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp-", dir=entry.parent))
    try:
        jobs = [(str(listing.root / f), size, crop) for f in listing.files]
        out = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(jobs), size, size, 3)
        )
        kept, skipped, sha, phash, found = [], [], [], [], []
        results = parallel_map(_decode_one, jobs, workers)
        for i, (ok, value, digest, perceptual, cell) in enumerate(
                progress(results, len(jobs), f"decoding at {size} px")):
            if ok:
                out[len(kept)] = value
                kept.append(i)
                sha.append(digest)
                phash.append(perceptual)
                found.append(cell)
            else:
                skipped.append((listing.files[i], value))
        out.flush()
        del out
        if len(kept) < len(jobs):  # shrink the array to the kept images
            full = np.load(tmp / "images.npy", mmap_mode="r")
            np.save(tmp / "images.kept.npy", full[: len(kept)])
            del full
            os.replace(tmp / "images.kept.npy", tmp / "images.npy")
        meta = {"format": CACHE_FORMAT, "root": str(listing.root), "kept": kept,
                "skipped": skipped, "sha256": sha, "phash": phash, "cell_found": found,
                "crop": crop}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, entry)
        except OSError:  # another worker published the same entry first
            log.info("decode cache %s was built concurrently; using that one", entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

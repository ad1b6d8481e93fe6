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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from leukoml.data._decode import ImageError, decode_image
from leukoml.data._discover import Listing

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_PARALLEL_FROM = 256  # below this many files a process pool costs more than it saves


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
    cache_hit: bool
    seconds: float
    path: Path


def _decode_one(args: tuple[str, int]) -> tuple[bool, object, str, str]:
    """(ok, array or reason, sha256, phash) for one file; runs in worker processes."""
    path, size = args
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return False, f"unreadable file: {exc.strerror or exc}", "", ""
    try:
        pixels = decode_image(data, size)
    except ImageError as exc:
        return False, str(exc), "", ""
    return True, pixels, hashlib.sha256(data).hexdigest(), _phash(pixels)


def _phash(pixels: np.ndarray) -> str:
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(pixels)))


def load_or_decode(listing: Listing, image_size: int, workers: int | None = None) -> DecodedImages:
    """The decoded images of `listing` at `image_size`, from the cache when present."""
    entry = cache_root() / "decoded" / f"{listing.fingerprint}-{image_size}px-v{CACHE_FORMAT}"
    start = time.perf_counter()
    if not (entry / "meta.json").is_file():
        _build(listing, image_size, entry, workers)
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
        cache_hit=hit,
        seconds=seconds,
        path=entry,
    )


def _build(listing: Listing, size: int, entry: Path, workers: int | None) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp-", dir=entry.parent))
    try:
        jobs = [(str(listing.root / f), size) for f in listing.files]
        out = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(jobs), size, size, 3)
        )
        kept, skipped, sha, phash = [], [], [], []
        for i, (ok, value, digest, perceptual) in enumerate(_run(jobs, workers)):
            if ok:
                out[len(kept)] = value
                kept.append(i)
                sha.append(digest)
                phash.append(perceptual)
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
                "skipped": skipped, "sha256": sha, "phash": phash}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, entry)
        except OSError:  # another worker published the same entry first
            log.info("decode cache %s was built concurrently; using that one", entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(jobs, workers):
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) < _PARALLEL_FROM:
        yield from map(_decode_one, jobs)
        return
    # spawn: the parent may hold TensorFlow threads, which fork would copy mid-lock
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        yield from pool.map(_decode_one, jobs, chunksize=64)

"""Find the images of a dataset folder and fingerprint the file list.

Layouts: `root/<class>/...` or `root/<split>/<class>/...` with split folders
named train / val / test in any case. Other top-level folders beside split
folders (e.g. TEST_SIMPLE) are ignored. Nothing is decoded here. Symlinked
folders are never entered (they could leave the dataset or loop); symlinked
files are read only when they point inside it. Both are listed when skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from leukoml.data._decode import IMAGE_SUFFIXES
from leukoml.errors import LeukomlError
from leukoml.names import SPLITS

log = logging.getLogger(__name__)

_SYSTEM_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_SYMLINKED_DIR = "symlinked folder; not followed (follow_links true enters it)"


@dataclass
class Listing:
    """Candidate image files of a dataset, before decoding."""

    root: Path
    class_names: list[str]
    files: list[str]  # POSIX paths relative to root
    labels: list[int]
    folder_splits: list[str | None]  # "train"/"val"/"test" from split folders, else None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    ignored_folders: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    follow_links: bool = False  # read symlinked files and folders wherever they point

    def _described(self) -> list[str]:
        return [f"{name}\t{self.class_names[label]}\t{split}\t{size}" for name, label, split,
                size in zip(self.files, self.labels, self.folder_splits, self.sizes)]

    @cached_property
    def fingerprint(self) -> str:
        """Of the file list and the files' bytes: the same for every copy of a data set, new
        when any file changes. Keys the decode and sibling caches."""
        return content_fingerprint(self.root, self.files, self._described(), self.mtimes)

    @property
    def stat_fingerprint(self) -> str:
        """Of names, sizes and mtimes only: what runs logged before the bytes counted (a
        run's logged fingerprint may be either)."""
        return _state(self._described(), self.mtimes)

    def class_folder(self, label: int) -> str:
        return str(self.root / self.class_names[label])


def _digest(lines) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(f"{line}\n".encode("utf-8", "surrogateescape"))  # names need not be UTF-8
    return digest.hexdigest()[:20]


def _state(described: list[str], mtimes: list[int]) -> str:
    return _digest(f"{d}\t{m}" for d, m in zip(described, mtimes))


def content_fingerprint(root: Path, files: list[str], described: list[str],
                        mtimes: list[int]) -> str:
    """A hash of each file's description and bytes. A fresh copy of a data set has new mtimes
    but the same bytes (and so reuses its caches); the bytes are read once per state
    (descriptions and mtimes), whose answer is remembered in the cache folder."""
    from leukoml.data._cache import cache_root

    remembered = cache_root() / "fingerprints" / _state(described, mtimes)
    try:
        return remembered.read_text().strip()
    except OSError:
        pass
    contents = []
    for name in files:
        try:
            contents.append(hashlib.blake2b((root / name).read_bytes(),
                                            digest_size=16).hexdigest())
        except OSError:
            contents.append(None)
    found = _digest(f"{d}\t{c}" for d, c in zip(described, contents))
    if None in contents:  # unreadable now, perhaps not later (a chmod keeps the mtime)
        return found
    try:
        remembered.parent.mkdir(parents=True, exist_ok=True)
        partial = remembered.with_name(f"{remembered.name}.{uuid.uuid4().hex}.tmp")
        partial.write_text(found)
        partial.replace(remembered)
    except OSError as exc:
        log.warning("could not remember the data set fingerprint in %s: %s",
                    remembered.parent, exc)
    return found


def printable(text: str) -> str:
    """`text` with the bytes of non-UTF-8 file names shown as \\xNN: safe to log or write."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_split_name(name: str) -> bool:
    return name.lower() in SPLITS


def _subdirs(folder: Path, listing: Listing) -> list[Path]:
    """Visible subfolders of `folder`; symlinked ones are listed as skipped, not entered."""
    found = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_dir():
            continue
        if p.is_symlink() and not listing.follow_links:
            listing.skipped.append((p.relative_to(listing.root).as_posix() + "/", _SYMLINKED_DIR))
        else:
            found.append(p)
    return found


def scan_dataset(root: str | Path, follow_links: bool = False) -> Listing:
    """List the image files under `root`, skipping (and listing) what is not an image.

    With `follow_links`, symlinked files and folders are read wherever they point
    (a split made of links to images elsewhere); each real folder is entered once."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LeukomlError(f"data: {str(root)!r} is not a folder")
    root = root.resolve()
    listing = Listing(root, [], [], [], [], follow_links=follow_links)
    top = _subdirs(root, listing)
    split_dirs = {p.name.lower(): p for p in top if _is_split_name(p.name)}
    if split_dirs:
        if "train" not in split_dirs:
            raise LeukomlError(
                f"data: {root} has split folders {sorted(p.name for p in split_dirs.values())} "
                "but no 'train' folder"
            )
        listing.ignored_folders = [p.name for p in top if not _is_split_name(p.name)]
        class_dirs = {split: _subdirs(folder, listing) for split, folder in split_dirs.items()}
        for name in listing.ignored_folders:
            log.info("ignoring folder %s: not a train/val/test split folder", root / name)
    else:
        class_dirs = {None: top}

    names = sorted({d.name for dirs in class_dirs.values() for d in dirs})
    for split, dirs in class_dirs.items():
        for folder in dirs:
            _scan_class(listing, root, folder, names.index(folder.name), split)

    used = sorted(set(listing.labels))
    for dirs in class_dirs.values():
        for folder in dirs:
            if names.index(folder.name) not in used:
                rel = folder.relative_to(root).as_posix() + "/"
                listing.skipped.append((rel, "empty class folder (no image files)"))
                log.warning("class folder %s holds no image files; it is left out", printable(rel))
    listing.class_names = [names[i] for i in used]
    remap = {old: new for new, old in enumerate(used)}
    listing.labels = [remap[label] for label in listing.labels]
    if len(listing.class_names) < 2:
        raise LeukomlError(
            f"data: {root} needs at least 2 class folders with images, found "
            f"{listing.class_names or 'none'}" + _skipped_summary(listing.skipped)
        )
    return listing


def _skipped_summary(skipped: list[tuple[str, str]], examples: int = 3) -> str:
    """'; skipped 40 files: 38 symlink pointing outside ... (a/1.png, ...), 2 ...' or ''."""
    if not skipped:
        return ""
    by_reason: dict[str, list[str]] = {}
    for file, reason in skipped:
        kind = reason.split(" (")[0]  # a symlink's target differs per file: group by kind
        by_reason.setdefault(kind, []).append(file)
    parts = [f"{len(files)} {kind} ({', '.join(printable(f) for f in files[:examples])}"
             f"{', ...' if len(files) > examples else ''})"
             for kind, files in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))]
    hint = ("; set follow_links true to read what the links point to"
            if any("follow_links" in reason for _, reason in skipped) else "")
    return f"; skipped {len(skipped)} file(s): " + "; ".join(parts) + hint


def _scan_class(listing: Listing, root: Path, folder: Path, label: int, split: str | None) -> None:
    entered = {folder.resolve()}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=listing.follow_links):
        visible = sorted(d for d in dirnames if not d.startswith("."))
        if listing.follow_links:  # enter each real folder once: links may loop
            fresh = [d for d in visible if (Path(dirpath) / d).resolve() not in entered]
            entered.update((Path(dirpath) / d).resolve() for d in fresh)
            dirnames[:] = fresh
            visible = fresh
        else:
            dirnames[:] = [d for d in visible if not (Path(dirpath) / d).is_symlink()]
        for d in sorted(set(visible) - set(dirnames)):
            rel = (Path(dirpath) / d).relative_to(root).as_posix() + "/"
            listing.skipped.append((rel, _SYMLINKED_DIR))
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            rel = path.relative_to(root).as_posix()
            reason = _skip_reason(path, root, listing.follow_links)
            if reason:
                listing.skipped.append((rel, reason))
                continue
            stat = path.stat()
            listing.files.append(rel)
            listing.labels.append(label)
            listing.folder_splits.append(split)
            listing.sizes.append(stat.st_size)
            listing.mtimes.append(stat.st_mtime_ns)


def _skip_reason(path: Path, root: Path, follow_links: bool = False) -> str | None:
    name = path.name
    if name.startswith("._"):
        return "macOS resource-fork file (._*)"
    if name.lower() in _SYSTEM_FILES or name.startswith("."):
        return "hidden or system file"
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(root) and not follow_links:
            return (f"symlink pointing outside the dataset ({target}); not followed "
                    "(follow_links true reads it)")
        if not target.is_file():
            return "broken symlink"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file type ({path.suffix or 'no suffix'})"
    if not path.is_file():  # a FIFO or device named .jpg would block or never end when read
        return "not a regular file"
    return None

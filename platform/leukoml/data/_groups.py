"""Which images share a source (cell, smear, patient), so that no split divides them.

Augmented datasets hold many copies of each source; splitting copies of one
source across train and test measures memory, not generalisation. `group_by`
says where the source is written down:

- a regular expression with exactly one capture group, searched in the file
  *name*; the group is per class folder, i.e. the key is (split folder, class,
  captured text), since such numbering restarts in every folder;
- a CSV file with columns `file,group` (`file` relative to the dataset root);
  a CSV group may span classes (e.g. one patient).

An image without a group becomes a group of its own: safe, but logged as a
warning, because a pattern that matches nothing silently gives an ungrouped
split. `GroupBy.parse` checks the spec before any image is decoded.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from leukoml.errors import LeukomlError

log = logging.getLogger(__name__)

CSV_COLUMNS = ("file", "group")


@dataclass
class Groups:
    ids: np.ndarray  # (N,) int group id per image
    description: str  # how they were found, e.g. "regex '^_(\\d+)_'"
    ungrouped: int  # images that got a group of their own (no match / no CSV row)

    @property
    def count(self) -> int:
        return int(len(np.unique(self.ids)))


@dataclass
class GroupBy:
    """A checked `group_by`: a compiled pattern, or the file -> group map of a CSV."""

    description: str
    pattern: re.Pattern | None = None
    mapping: dict[str, str] | None = None

    @classmethod
    def parse(cls, group_by: str, root: Path) -> "GroupBy":
        text = str(group_by).strip()
        if not text:
            raise LeukomlError("group_by: empty; give a regular expression or a CSV file")
        path = _csv_path(text, root)
        if path is not None:
            return cls(description=path.name, mapping=_read_csv(path, root))
        try:
            pattern = re.compile(text)
        except re.error as exc:
            raise LeukomlError(
                f"group_by: {text!r} is not a valid regular expression: {exc}"
            ) from None
        if pattern.groups != 1:
            raise LeukomlError(
                f"group_by: regular expression {text!r} has {pattern.groups} capture groups; it "
                r"needs exactly one, the part of the file name that names the source, e.g. ^_(\d+)_"
            )
        return cls(description=f"regex {text!r}", pattern=pattern)

    def groups(self, files: list[str], labels, folder_splits: list[str | None]) -> Groups:
        """Group ids for `files` (paths relative to the dataset root)."""
        keys: list[object] = []
        for name, label, split in zip(files, labels, folder_splits):
            if self.pattern is not None:
                match = self.pattern.search(PurePosixPath(name).name)
                captured = match.group(1) if match else None
                keys.append(None if captured is None else (split, int(label), captured))
            else:
                keys.append(self.mapping.get(name))
        ungrouped = sum(key is None for key in keys)
        if ungrouped:
            log.warning(
                "group_by %s: %d of %d image(s) have no group; each becomes its own group",
                self.description, ungrouped, len(files),
            )
        if self.mapping is not None:
            unknown = len(set(self.mapping) - set(files))
            if unknown:
                log.info("group_by %s: %d row(s) name no decoded image", self.description, unknown)
        index: dict[object, int] = {}
        ids = [index.setdefault(("single", i) if key is None else key, len(index))
               for i, key in enumerate(keys)]
        return Groups(np.array(ids, dtype=np.int64), self.description, ungrouped)


def _csv_path(text: str, root: Path) -> Path | None:
    """The CSV file `text` names (as given, else inside the dataset), or None for a regex."""
    for path in (Path(text).expanduser(), root / text):
        try:
            if path.is_file():
                return path
        except OSError:  # e.g. a long regex is not a valid file name
            continue
    # a regex needs "(" for its capture group; a path ending in .csv without one is a missing file
    if text.lower().endswith(".csv") and "(" not in text:
        raise LeukomlError(
            f"group_by: CSV file {text!r} not found (looked in the working directory and in {root})"
        )
    return None


def _read_csv(path: Path, root: Path) -> dict[str, str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in reader.fieldnames or []]
            if any(column not in header for column in CSV_COLUMNS):
                raise LeukomlError(
                    f"group_by: {path} must have the columns {','.join(CSV_COLUMNS)} (file "
                    f"relative to the dataset root {root}); found {','.join(header) or 'no header'}"
                )
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LeukomlError(f"group_by: cannot read {path}: {exc}") from None
    mapping: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        if not row["file"] or not row["group"]:
            raise LeukomlError(f"group_by: {path} line {line}: empty file or group")
        file = PurePosixPath(row["file"].replace("\\", "/")).as_posix()
        if mapping.setdefault(file, row["group"]) != row["group"]:
            raise LeukomlError(
                f"group_by: {path} line {line} gives {file!r} a second group "
                f"({mapping[file]!r}, then {row['group']!r})"
            )
    return mapping


def merge_groups(ids: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Group ids with the pairs (`first[k]`, `second[k]`) joined too (connected components)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(ids)
    order = np.argsort(ids, kind="stable")  # chain each group's members: a, b, c -> a-b, b-c
    same = ids[order[1:]] == ids[order[:-1]]
    rows = np.concatenate([order[:-1][same], np.asarray(first, np.int64)])
    cols = np.concatenate([order[1:][same], np.asarray(second, np.int64)])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def sibling_groups(sibling_ids: np.ndarray, copies_first: np.ndarray,
                   copies_second: np.ndarray) -> Groups | None:
    """Groups of siblings and copies, or None when every image stands alone."""
    ids = merge_groups(sibling_ids, copies_first, copies_second)
    if len(np.unique(ids)) == len(ids):
        return None
    return Groups(ids, "detected siblings and copies", ungrouped=0)

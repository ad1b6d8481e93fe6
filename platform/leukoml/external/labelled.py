"""A lab's own labelled images, and how their class names map onto a model's.

Two layouts: class folders (`root/<class>/...`, as for training), or a labels
CSV beside the images (`root/labels.csv` is found by itself). A CSV row names
its image by path or by number (`12` is the image whose file name holds the
number 12, as in `BloodImage_00012.jpg`); rows with a blank label, several
labels ("NEUTROPHIL, LYMPHOCYTE") or no image file are set aside and counted,
never guessed at.

Class names map case-insensitively (`NEUTROPHIL` = `neutrophil`), or by an
explicit `class_map` (YAML mapping or `external,model` CSV; map a name to
`unknown` to keep it out). Images of classes the model does not know are
scored apart; model classes the folder lacks are named. Nothing here imports
TensorFlow: every check runs before a model is loaded.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from leukoml.data import IMAGE_SUFFIXES, scan_dataset
from leukoml.errors import LeukomlError

LABELS_CSV = "labels.csv"
UNKNOWN = "unknown"
_FILE_COLUMNS = ("file", "image", "filename", "path")
_LABEL_COLUMNS = ("label", "class", "category")
_SEVERAL = re.compile(r"[,;/|+]")


@dataclass
class LabelledImages:
    """The images to score, each with the folder's own class name."""

    root: Path
    files: list[str]  # relative to root
    labels: list[str]
    source: str  # "class folders" or the CSV's name
    set_aside: Counter = field(default_factory=Counter)  # reason -> rows or files
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few of them

    def put_aside(self, reason: str, what: str) -> None:
        self.set_aside[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(what)


@dataclass(frozen=True)
class ClassMapping:
    """External class name -> model class index, or None for a class the model does not know."""

    to_model: dict[str, int | None]
    model_classes: list[str]

    @property
    def unknown(self) -> list[str]:
        return sorted(k for k, v in self.to_model.items() if v is None)

    @property
    def missing(self) -> list[str]:
        """Model classes no external class maps to: their recall cannot be measured."""
        used = {v for v in self.to_model.values() if v is not None}
        return [c for i, c in enumerate(self.model_classes) if i not in used]


def read_labelled(data: str | Path, labels: str = "") -> LabelledImages:
    """The labelled images of `data`: its class folders, or `labels` (a CSV; default
    `data/labels.csv` when present)."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise LeukomlError(f"data: {str(root)!r} is not a folder")
    root = root.resolve()
    csv_path = _labels_path(root, labels)
    if csv_path is None:
        listing = scan_dataset(root)
        found = LabelledImages(root, list(listing.files),
                               [listing.class_names[i] for i in listing.labels], "class folders")
        for file, reason in listing.skipped:
            found.put_aside(reason, file)
        return found
    return _read_csv(root, csv_path)


def _labels_path(root: Path, labels: str) -> Path | None:
    if not labels:
        default = root / LABELS_CSV
        return default if default.is_file() else None
    for path in (Path(labels).expanduser(), root / labels):
        if path.is_file():
            return path
    raise LeukomlError(f"labels: {labels!r} not found (looked in the working directory and "
                       f"in {root})")


def _column(header: list[str], wanted: tuple[str, ...], path: Path) -> str:
    lowered = {h.strip().lower(): h for h in header if h}
    for name in wanted:
        if name in lowered:
            return lowered[name]
    raise LeukomlError(f"labels: {path} needs a column named one of {', '.join(wanted)}; "
                       f"found {', '.join(h for h in header if h) or 'no header'}")


def _image_index(root: Path) -> dict[str, dict]:
    """The images under root by relative path, by file name, and by the number in the name."""
    index: dict[str, dict] = {"path": {}, "name": {}, "number": {}}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            rel = path.relative_to(root).as_posix()
            index["path"][rel] = rel
            index["name"].setdefault(path.name, []).append(rel)
            digits = re.findall(r"\d+", path.stem)
            if digits:
                index["number"].setdefault(int(digits[-1]), []).append(rel)
    return index


def _read_csv(root: Path, path: Path) -> LabelledImages:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            file_col = _column(header, _FILE_COLUMNS, path)
            label_col = _column(header, _LABEL_COLUMNS, path)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LeukomlError(f"labels: cannot read {path}: {exc}") from None
    index = _image_index(root)
    found = LabelledImages(root, [], [], path.name)
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        key, label = (row.get(file_col) or "").strip(), (row.get(label_col) or "").strip()
        where = f"line {line} ({key or 'no file'})"
        if not label:
            found.put_aside("blank label", where)
            continue
        names = [n.strip() for n in _SEVERAL.split(label) if n.strip()]
        if len(set(n.lower() for n in names)) > 1:
            found.put_aside("several labels in one row", f"{where}: {label}")
            continue
        file = _find(key, index)
        if file is None:
            found.put_aside("no image file for the row", where)
            continue
        if file in seen:
            found.put_aside("a second row for the same image", where)
            continue
        seen.add(file)
        found.files.append(file)
        found.labels.append(names[0])
    if not found.files:
        raise LeukomlError(f"labels: no row of {path} names an image under {root} with one "
                           f"label ({dict(found.set_aside) or 'no rows'})")
    return found


def _find(key: str, index: dict[str, dict]) -> str | None:
    """The one image a row names: by path, by file name, or by number; None if not one."""
    if not key:
        return None
    rel = PurePosixPath(key.replace("\\", "/")).as_posix()
    if rel in index["path"]:
        return rel
    for found in (index["name"].get(PurePosixPath(rel).name, []),
                  index["number"].get(int(key), []) if key.isdigit() else []):
        if len(found) == 1:
            return found[0]
    return None


def read_class_map(spec: str) -> dict[str, str]:
    """An explicit map from a YAML mapping or an `external,model` CSV; {} for ''."""
    if not spec:
        return {}
    path = Path(spec).expanduser()
    if not path.is_file():
        raise LeukomlError(f"class_map: {spec!r} is not a file (a YAML mapping or a CSV with "
                           "columns external,model)")
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as handle:
                rows = list(csv.DictReader(handle))
            raw = {r.get("external", ""): r.get("model", "") for r in rows}
        else:
            raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, csv.Error, yaml.YAMLError) as exc:
        raise LeukomlError(f"class_map: cannot read {path}: {exc}") from None
    if not isinstance(raw, dict) or not all(isinstance(k, str) and k for k in raw):
        raise LeukomlError(f"class_map: {path} must map external class names to model class "
                           f"names (or '{UNKNOWN}')")
    return {k.strip(): str(v or UNKNOWN).strip() for k, v in raw.items()}


def map_classes(external: list[str], model_classes: list[str],
                explicit: dict[str, str] | None = None) -> ClassMapping:
    """Map each external class (explicitly, else case-insensitively); refuse no overlap."""
    explicit = {k.lower(): v for k, v in (explicit or {}).items()}
    by_lower = {c.lower(): i for i, c in enumerate(model_classes)}
    problems = [f"{k!r} -> {v!r}" for k, v in explicit.items()
                if v.lower() != UNKNOWN and v.lower() not in by_lower]
    if problems:
        raise LeukomlError(f"class_map: {', '.join(problems)}: not a class of the model "
                           f"({', '.join(model_classes)}) nor '{UNKNOWN}'")
    to_model: dict[str, int | None] = {}
    for name in sorted(set(external)):
        target = explicit.get(name.lower(), name).lower()
        to_model[name] = by_lower.get(target)
    mapping = ClassMapping(to_model, list(model_classes))
    if all(v is None for v in to_model.values()):
        raise LeukomlError(
            "data: no class of the folder is a class of the model, so nothing can be scored; "
            "give a class_map\n  folder: " + ", ".join(sorted(set(external)))
            + "\n  model:  " + ", ".join(model_classes))
    return mapping

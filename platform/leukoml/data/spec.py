"""`DataSpec`: which images a run uses and how they are split, frozen, in one place.

Every entry point builds one spec from its input and hands it to
`prepare_dataset`; training logs it as `data/spec.json`, and promote,
explain and evaluate read it back from the run to rebuild exactly the same
split (never from the run's params, which `mlflow run` may have rewritten).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from leukoml import names
from leukoml.errors import LeukomlError

SIBLINGS = "siblings"  # group_by: detect rotated/flipped/shifted copies and group them (default)
NO_GROUPS = "none"  # group_by: a plain stratified split
CROPS = ("none", "cell")  # cell: a square around the leukocyte, found by its stained nucleus
SPEC_FORMAT = 1


@dataclass(frozen=True)
class DataSpec:
    """A dataset and its split; every field is checked by `validated`."""

    source: str = "synthetic"  # a folder, or "synthetic[:options]"
    image_size: int = 64
    seed: int = 0  # the split's seed
    val_fraction: float = 0.2  # carved from train when there is no val folder
    test_fraction: float = 0.1  # carved from train when there is no test folder
    # "siblings", "none", a regex with one capture group over file names, or a file,group CSV
    group_by: str = SIBLINGS
    drop_cross_split_duplicates: bool = False
    crop: str = "none"
    follow_links: bool = False  # read symlinks pointing outside the folder

    def validated(self) -> "DataSpec":
        """A checked copy (group_by "" means the default), or a `LeukomlError` naming the field.

        Cheap: nothing is listed or decoded, so it runs before any expensive work.
        """
        from leukoml.data._source import parse_synthetic

        spec = replace(self, group_by=(str(self.group_by).strip() or SIBLINGS),
                       source=str(self.source).strip())
        if not spec.source:
            raise LeukomlError("data: empty; give a dataset folder or 'synthetic'")
        if parse_synthetic(spec.source) is None:
            folder = Path(spec.source).expanduser()
            if not folder.exists():
                raise LeukomlError(f"data: folder {spec.source!r} does not exist")
            if not folder.is_dir():
                raise LeukomlError(f"data: {spec.source!r} is a file, not a folder of class "
                                   "folders")
        if not isinstance(spec.image_size, int) or spec.image_size < 14:
            raise LeukomlError(f"image_size: {spec.image_size!r}; use an int >= 14")
        for key in ("val_fraction", "test_fraction"):
            value = getattr(spec, key)
            if not 0 < value < 0.5 or abs(value * 20 - round(value * 20)) > 1e-6:
                raise LeukomlError(f"{key}: {value!r}; use a multiple of 0.05 between 0.05 "
                                   "and 0.45")
        if spec.crop not in CROPS:
            raise LeukomlError(f"crop: {spec.crop!r}; use one of {', '.join(CROPS)}")
        if spec.group_by.lower() in (SIBLINGS, NO_GROUPS):
            spec = replace(spec, group_by=spec.group_by.lower())
        return spec

    @property
    def grouping(self) -> str:
        """"siblings", "none", or "explicit" (a regex or CSV the user gave)."""
        return self.group_by if self.group_by in (SIBLINGS, NO_GROUPS) else "explicit"

    @property
    def fractions(self) -> dict[str, float]:
        return {"train": 1 - self.val_fraction - self.test_fraction,
                "val": self.val_fraction, "test": self.test_fraction}

    def to_json(self) -> str:
        return json.dumps({"format": SPEC_FORMAT, **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = "data spec") -> "DataSpec":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LeukomlError(f"{where}: not JSON: {exc}") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known - {"format"})
        if unknown:
            raise LeukomlError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in raw.items() if k in known})

    @classmethod
    def from_run(cls, run_id: str) -> "DataSpec":
        """The spec a training run logged (`data/spec.json`)."""
        import mlflow

        try:
            text = mlflow.artifacts.load_text(f"runs:/{run_id}/{names.DATA_SPEC}")
        except Exception as exc:
            raise LeukomlError(
                f"run {run_id} has no {names.DATA_SPEC} ({type(exc).__name__}); it was not "
                "logged by leukoml train or search, so its split cannot be rebuilt"
            ) from None
        return cls.from_json(text, f"run {run_id} {names.DATA_SPEC}")

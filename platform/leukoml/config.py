"""Run configuration: what one training run takes, validated in one place.

Every error names the field, and is raised before any data is read or any
model is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from leukoml import names
from leukoml.backbones import check_image_size, check_weights, get_backbone
from leukoml.errors import LeukomlError

CLASS_WEIGHTS = ("none", "balanced")


@dataclass
class TrainConfig:
    """One training run; every field is logged as an MLflow param of the same name."""

    data: str = "synthetic"
    backbone: str = "Asghar2022CNN"
    learning_rate: float = 1e-3
    batch_size: int = 32
    patience: int = 5
    max_epochs: int = 30
    image_size: int = 64
    weights: str = "none"
    seed: int = 0
    freeze_base: bool = False
    augment: bool = True
    monitor: str = "val_loss"
    class_weight: str = "none"
    mixed_precision: bool = False
    group_by: str = ""  # regex with one capture group over file names, or a file,group CSV
    drop_cross_split_duplicates: bool = False

    def validated(self) -> "TrainConfig":
        """A checked copy, or a `LeukomlError` naming the field, before any work starts."""
        entry = get_backbone(self.backbone)
        check_image_size(entry, self.image_size)
        checks = {
            "learning_rate": 0 < self.learning_rate < 10,
            "batch_size": self.batch_size >= 1,
            "patience": self.patience >= 0,
            "max_epochs": self.max_epochs >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise LeukomlError(f"{key}: {getattr(self, key)!r} is out of range")
        if self.class_weight not in CLASS_WEIGHTS:
            raise LeukomlError(f"class_weight: {self.class_weight!r}; use one of {CLASS_WEIGHTS}")
        monitors = {names.val(m) for m in names.EPOCH_METRICS}
        if self.monitor not in monitors:
            raise LeukomlError(f"monitor: {self.monitor!r}; use one of {sorted(monitors)}")
        return TrainConfig(**{**asdict(self), "weights": check_weights(self.weights)})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


# --- search spaces ---------------------------------------------------------------

OBJECTIVE_METRICS = tuple(names.val(m) for m in names.EPOCH_METRICS)
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
BACKBONE_DEFAULT = "backbone_default"


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int


@dataclass(frozen=True)
class SearchSpace:
    """A validated `search_spaces/*.yaml`: what an Optuna study may sample."""

    objective_metric: str
    direction: str  # "maximize" | "minimize"
    tiers: dict[str, tuple[str, ...]]  # tier -> backbones (only non-empty tiers)
    image_size: int | str  # an int, or "backbone_default"
    max_image_size: int
    weights: str
    freeze_base: bool
    augment: bool
    mixed_precision: bool
    max_epochs: int
    learning_rate: FloatRange | float
    batch_size: tuple[int, ...]
    patience: IntRange | int
    class_weight: tuple[str, ...]
    sampler: dict
    pruner: dict
    seed: int
    n_trials: int
    timeout: float | None
    split: dict
    source: str = ""  # the YAML text, logged with the study

    def image_size_for(self, backbone: str) -> int:
        """The input size a trial of `backbone` trains at."""
        if self.image_size != BACKBONE_DEFAULT:
            return int(self.image_size)
        entry = get_backbone(backbone)
        return max(entry.min_size, min(entry.default_size, self.max_image_size))

    @property
    def backbones(self) -> list[str]:
        return [b for group in self.tiers.values() for b in group]


_SEARCH_KEYS = {
    "objective": "{metric: val_macro_f1, direction: maximize}",
    "tiers": "{low: all, medium: [ResNet50], high: []}",
    "image_size": "an int, or backbone_default",
    "max_image_size": "an int (caps backbone_default)",
    "weights": "imagenet | none | a weights file",
    "freeze_base": "true | false",
    "augment": "true | false",
    "mixed_precision": "true | false (GPU only)",
    "max_epochs": "an int",
    "learning_rate": "{low: 1e-5, high: 1e-2, log: true} or a number",
    "batch_size": "[16, 32, 64] or an int",
    "patience": "{low: 3, high: 10} or an int",
    "class_weight": "none | balanced | [none, balanced]",
    "sampler": "{name: tpe|random|grid, seed: 42, n_startup_trials: 10}",
    "pruner": "{name: median|hyperband|none, ...}",
    "seed": "an int: split and initialisation seed shared by all trials",
    "n_trials": "an int: the study's total budget (overridden by -P n_trials)",
    "timeout": "seconds, or null",
    "split": "{group_by: <regex or CSV>, drop_cross_split_duplicates: false}",
}
_SAMPLER_KEYS = {"name", "seed", "n_startup_trials"}
_PRUNER_KEYS = {
    "median": {"name", "n_startup_trials", "n_warmup_steps"},
    "hyperband": {"name", "min_resource", "reduction_factor"},
    "none": {"name"},
}
_SPLIT_KEYS = {"group_by", "drop_cross_split_duplicates"}


def _fail(key: str, message: str):
    raise LeukomlError(f"search space key '{key}': {message}")


def _unknown(where: str, given, known) -> None:
    extra = sorted(set(given) - set(known))
    if extra:
        _fail(where, f"unknown key(s) {extra}; known keys: {sorted(known)}")


def _int(key, value, minimum=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(key, f"expected an int, got {value!r}")
    if minimum is not None and value < minimum:
        _fail(key, f"must be >= {minimum}, got {value}")
    return value


def _number(key, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(key, f"expected a number, got {value!r}")
    return float(value)


def _bool_value(key, value) -> bool:
    if not isinstance(value, bool):
        _fail(key, f"expected true or false, got {value!r}")
    return value


def _range(key, value, kind):
    if not isinstance(value, dict):
        return kind(key, value)
    allowed = {"low", "high", "log"} if kind is _number else {"low", "high"}
    _unknown(key, value, allowed)
    if "low" not in value or "high" not in value:
        _fail(key, "a range needs both 'low' and 'high'")
    low, high = kind(f"{key}.low", value["low"]), kind(f"{key}.high", value["high"])
    if low > high:
        _fail(key, f"low ({low}) > high ({high})")
    if kind is _number:
        log = _bool_value(f"{key}.log", value.get("log", False))
        if log and low <= 0:
            _fail(key, "a log range needs low > 0")
        return FloatRange(low, high, log)
    return IntRange(low, high)


def _tiers(value) -> dict[str, tuple[str, ...]]:
    from leukoml.backbones import TIERS, list_backbones

    if not isinstance(value, dict) or not value:
        _fail("tiers", "expected a mapping of tier -> 'all' or a list of backbones")
    _unknown("tiers", value, TIERS)
    tiers = {}
    for tier, choice in value.items():
        in_tier = [b.name for b in list_backbones(tier)]
        if choice == "all":
            chosen = in_tier
        elif choice is None:
            chosen = []
        elif isinstance(choice, list) and all(isinstance(b, str) for b in choice):
            for name in choice:
                entry = get_backbone(name)
                if entry.tier != tier:
                    _fail(f"tiers.{tier}", f"{name} is in tier '{entry.tier}', not '{tier}'")
            chosen = list(dict.fromkeys(choice))
        else:
            _fail(f"tiers.{tier}", f"expected 'all' or a list of backbone names, got {choice!r}")
        if chosen:
            tiers[tier] = tuple(chosen)
    if not tiers:
        _fail("tiers", "no backbone left to search: every tier is empty")
    return tiers


def _choices(key, value, parse) -> tuple:
    items = value if isinstance(value, list) else [value]
    if not items:
        _fail(key, "empty list")
    return tuple(dict.fromkeys(parse(key, v) for v in items))


def _class_weight(key, value) -> str:
    value = "none" if value is None else value
    if value not in CLASS_WEIGHTS:
        _fail(key, f"{value!r}; use one of {CLASS_WEIGHTS}")
    return value


def parse_search_space(raw: dict, source: str = "") -> SearchSpace:
    """Validate a loaded YAML mapping; every error names the key."""
    if not isinstance(raw, dict):
        raise LeukomlError("search space: expected a YAML mapping at the top level")
    _unknown("(top level)", raw, _SEARCH_KEYS)

    objective = raw.get("objective", {"metric": names.val(names.MACRO_F1)})
    if not isinstance(objective, dict):
        _fail("objective", "expected {metric: ..., direction: ...}")
    _unknown("objective", objective, {"metric", "direction"})
    metric = objective.get("metric", names.val(names.MACRO_F1))
    if metric not in OBJECTIVE_METRICS:
        _fail("objective.metric", f"{metric!r}; use one of {list(OBJECTIVE_METRICS)}")
    natural = "minimize" if names.direction(metric) == "min" else "maximize"
    direction = objective.get("direction", natural)
    if direction not in ("maximize", "minimize"):
        _fail("objective.direction", f"{direction!r}; use maximize or minimize")
    if direction != natural:
        _fail("objective.direction", f"{metric} should be {natural}d, not {direction}d")

    tiers = _tiers(raw.get("tiers", {"low": "all"}))
    image_size = raw.get("image_size", 224)
    if image_size != BACKBONE_DEFAULT:
        image_size = _int("image_size", image_size, minimum=14)
    max_image_size = _int("max_image_size", raw.get("max_image_size", 224), minimum=14)
    if image_size != BACKBONE_DEFAULT:
        if image_size > max_image_size:
            _fail("image_size", f"{image_size} is above max_image_size {max_image_size}")
        for backbone in (b for group in tiers.values() for b in group):
            entry = get_backbone(backbone)
            if image_size < entry.min_size:
                _fail("image_size", f"{image_size} px is below {backbone}'s minimum of "
                                    f"{entry.min_size} px")
    try:
        weights = check_weights(raw.get("weights", "none") or "none")
    except LeukomlError as exc:
        _fail("weights", str(exc))

    sampler = dict(raw.get("sampler") or {"name": "tpe"})
    _unknown("sampler", sampler, _SAMPLER_KEYS)
    if sampler.get("name", "tpe") not in SAMPLERS:
        _fail("sampler.name", f"{sampler.get('name')!r}; use one of {SAMPLERS}")
    sampler.setdefault("name", "tpe")
    for key in ("seed", "n_startup_trials"):
        if key in sampler:
            _int(f"sampler.{key}", sampler[key], minimum=0)

    pruner = dict(raw.get("pruner") or {"name": "median"})
    name = pruner.setdefault("name", "median")
    if name not in PRUNERS:
        _fail("pruner.name", f"{name!r}; use one of {PRUNERS}")
    _unknown(f"pruner ({name})", pruner, _PRUNER_KEYS[name])
    for key in set(pruner) - {"name"}:
        _int(f"pruner.{key}", pruner[key], minimum=0)

    split = dict(raw.get("split") or {})
    _unknown("split", split, _SPLIT_KEYS)
    if "drop_cross_split_duplicates" in split:
        _bool_value("split.drop_cross_split_duplicates", split["drop_cross_split_duplicates"])
    if split.get("group_by") is not None and not isinstance(split["group_by"], str):
        _fail("split.group_by", "expected a regular expression or a CSV path")

    timeout = raw.get("timeout")
    return SearchSpace(
        objective_metric=metric,
        direction=direction,
        tiers=tiers,
        image_size=image_size,
        max_image_size=max_image_size,
        weights=weights,
        freeze_base=_bool_value("freeze_base", raw.get("freeze_base", False)),
        augment=_bool_value("augment", raw.get("augment", True)),
        mixed_precision=_bool_value("mixed_precision", raw.get("mixed_precision", False)),
        max_epochs=_int("max_epochs", raw.get("max_epochs", 30), minimum=1),
        learning_rate=_range("learning_rate", raw.get("learning_rate", 1e-3), _number),
        batch_size=_choices("batch_size", raw.get("batch_size", 32),
                            lambda k, v: _int(k, v, minimum=1)),
        patience=_range("patience", raw.get("patience", 5), _int),
        class_weight=_choices("class_weight", raw.get("class_weight", "none"), _class_weight),
        sampler=sampler,
        pruner=pruner,
        seed=_int("seed", raw.get("seed", 0), minimum=0),
        n_trials=_int("n_trials", raw.get("n_trials", 10), minimum=1),
        timeout=None if timeout is None else _number("timeout", timeout),
        split=split,
        source=source,
    )


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file; errors name the file and key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise LeukomlError(f"search space file {str(path)!r} not found")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LeukomlError(f"search space file {path}: invalid YAML: {exc}") from None
    try:
        return parse_search_space(raw, source=text)
    except LeukomlError as exc:
        raise LeukomlError(f"{path}: {exc}") from None

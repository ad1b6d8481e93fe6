"""Search spaces (`search_spaces/*.yaml`): what an Optuna study may sample.

Every `TrainConfig` field may appear as a key. A searchable field (its
`Param` says so) may be a list (categorical) or a range `{low, high[, log]}`;
each becomes a dimension (`leukoml.study.dimensions`), a small object that
validates itself and suggests itself to an Optuna trial, so a new dimension
is a new `TrainConfig` field.
Structural keys (objective, tiers, sampler, pruner, budget, split) are checked
here too. Every problem is reported at once, each naming its key.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from leukoml import names
from leukoml.backbones import TIERS, check_weights, get_backbone, list_backbones
from leukoml.config import AUTO, TrainConfig, check_value
from leukoml.errors import LeukomlError, did_you_mean
from leukoml.study.dimensions import Fixed, dimension

BACKBONE_DEFAULT = "backbone_default"
OBJECTIVE_METRICS = tuple(names.val(m) for m in names.EPOCH_METRICS)
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
LEARNING_RATE_SCALE = "learning_rate_scale"  # the trial param of learning_rate: backbone_default
_STRUCTURAL = {
    "objective": "{metric: val_macro_f1, direction: maximize}",
    "tiers": "{low: all, medium: [ResNet50], high: []}",
    "image_size": "an int, a list of ints, or backbone_default",
    "max_image_size": "an int (caps backbone_default)",
    "learning_rate": "a number, {low, high, log}, or backbone_default (each family's range)",
    "max_epochs": "an int",
    "min_epochs": "an int: a trial that has not the time for this many epochs is not started",
    "sampler": "{name: tpe|random|grid, seed: 42, n_startup_trials: 10}",
    "pruner": "{name: median|hyperband|none, ...}",
    "seed": "an int: split and initialisation seed shared by all trials",
    "n_trials": "an int: the study's total budget (overridden by -P n_trials)",
    "timeout": "seconds of wall clock for the study, or null",
    "split": "{group_by: siblings|none|<regex>|<CSV>, drop_cross_split_duplicates: false}",
    "ensemble": "an int: the best trials averaged into a candidate after the study (0: none)",
    "portfolio": "a list of configurations run first ({backbone: ..., image_size: ...}), or "
                 "false; default: the -e train defaults and two others (study/portfolio.py)",
}
# TrainConfig fields a search space sets through a structural key, or never
_NOT_KEYS = {"data", "backbone", "seed", "image_size", "learning_rate", "max_epochs",
             "monitor", "group_by", "drop_cross_split_duplicates"}
_SAMPLER_KEYS = {"name", "seed", "n_startup_trials"}
_PRUNER_KEYS = {
    "median": {"name", "n_startup_trials", "n_warmup_steps"},
    "hyperband": {"name", "min_resource", "reduction_factor"},
    "none": {"name"},
}


class _Problems(list):
    """Errors collected while parsing; raised together."""

    def check(self, key: str, step):
        try:
            return step()
        except LeukomlError as exc:
            where, sep, rest = str(exc).partition(": ")
            if sep and (where == key or where.startswith((key + ".", key + " ("))):
                self.append(f"'{where}': {rest}")  # a nested key names itself
            else:
                self.append(f"'{key}': {exc}")
            return None

    def fail(self, key: str, message: str):
        raise LeukomlError(f"{key}: {message}")


# --- the space ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    """A validated `search_spaces/*.yaml`."""

    objective_metric: str
    direction: str  # "maximize" | "minimize"
    tiers: dict[str, tuple[str, ...]]  # tier -> backbones (only non-empty tiers)
    image_size: object  # Fixed / Choice of ints, or BACKBONE_DEFAULT
    max_image_size: int
    learning_rate: object  # Fixed / FloatRange / Choice, or BACKBONE_DEFAULT
    max_epochs: int
    min_epochs: int
    dimensions: dict[str, object]  # TrainConfig field -> Fixed / Choice / range
    sampler: dict
    pruner: dict
    seed: int
    n_trials: int
    timeout: float | None
    split: dict
    ensemble: int = 3  # the best trials averaged into a candidate model (0 or 1: none)
    portfolio: tuple = ()  # Optuna params of the trials run first (study/portfolio.py)
    source: str = ""  # the YAML text, logged with the study

    @property
    def backbones(self) -> list[str]:
        return [b for group in self.tiers.values() for b in group]

    def value(self, key: str):
        """A fixed setting (tests and reports); None for a sampled one."""
        dim = self.dimensions.get(key)
        return dim.value if isinstance(dim, Fixed) else None

    def sample(self, trial, data: str) -> TrainConfig:
        """Tier, then a backbone of that tier (conditional), then every other dimension."""
        tier = trial.suggest_categorical(names.TIER, list(self.tiers))
        backbone = trial.suggest_categorical(f"{names.BACKBONE}_{tier}", list(self.tiers[tier]))
        entry = get_backbone(backbone)
        if self.image_size == BACKBONE_DEFAULT:
            image_size = max(entry.min_size, min(entry.default_size, self.max_image_size))
        else:
            image_size = self.image_size.suggest(trial, names.IMAGE_SIZE)
        if self.learning_rate == BACKBONE_DEFAULT:
            low, high = entry.learning_rate_range
            scale = trial.suggest_float(LEARNING_RATE_SCALE, low / entry.learning_rate,
                                        high / entry.learning_rate, log=True)
            learning_rate = repr(entry.learning_rate * scale)
        else:
            learning_rate = repr(float(self.learning_rate.suggest(trial, names.LEARNING_RATE)))
        values = {key: dim.suggest(trial, key) for key, dim in self.dimensions.items()}
        return TrainConfig(
            data=data, backbone=backbone, learning_rate=learning_rate, image_size=image_size,
            max_epochs=self.max_epochs, seed=self.seed, monitor=self.objective_metric,
            group_by=self.split.get("group_by") or "siblings",
            drop_cross_split_duplicates=bool(self.split.get("drop_cross_split_duplicates")),
            **values,
        )


    def searched(self, config: TrainConfig) -> dict:
        """The value `config` took in every dimension of this space, fixed ones included,
        the learning rate resolved (a trial's params hold only what it sampled)."""
        return {names.IMAGE_SIZE: config.image_size,
                names.LEARNING_RATE: config.peak_learning_rate(),
                **{key: getattr(config, key) for key in self.dimensions}}


def _tiers(value, problems: _Problems) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict) or not value:
        problems.fail("tiers", "expected a mapping of tier -> 'all' or a list of backbones")
    unknown = sorted(set(value) - set(TIERS))
    if unknown:
        problems.fail("tiers", f"unknown key(s) {unknown}; known keys: {sorted(TIERS)}")
    tiers = {}
    for tier, choice in value.items():
        if choice == "all":
            chosen = [b.name for b in list_backbones(tier)]
        elif choice is None:
            chosen = []
        elif isinstance(choice, list) and all(isinstance(b, str) for b in choice):
            for name in choice:
                entry = get_backbone(name)
                if entry.tier != tier:
                    problems.fail(f"tiers.{tier}", f"{name} is in tier '{entry.tier}', not "
                                                   f"'{tier}'")
            chosen = list(dict.fromkeys(choice))
        else:
            problems.fail(f"tiers.{tier}", f"expected 'all' or a list of backbone names, got "
                                           f"{choice!r}")
        if chosen:
            tiers[tier] = tuple(chosen)
    if not tiers:
        problems.fail("tiers", "no backbone left to search: every tier is empty")
    return tiers


def _objective(raw, problems: _Problems) -> tuple[str, str]:
    objective = raw if raw is not None else {"metric": names.val(names.MACRO_F1)}
    if not isinstance(objective, dict):
        problems.fail("objective", "expected {metric: ..., direction: ...}")
    extra = sorted(set(objective) - {"metric", "direction"})
    if extra:
        problems.fail("objective", f"unknown key(s) {extra}")
    metric = objective.get("metric", names.val(names.MACRO_F1))
    if metric not in OBJECTIVE_METRICS:
        problems.fail("objective.metric", f"{metric!r}; use one of {list(OBJECTIVE_METRICS)}")
    natural = "minimize" if names.direction(metric) == "min" else "maximize"
    direction = objective.get("direction", natural)
    if direction not in ("maximize", "minimize"):
        problems.fail("objective.direction", f"{direction!r}; use maximize or minimize")
    if direction != natural:
        problems.fail("objective.direction", f"{metric} should be {natural}d, not {direction}d")
    return metric, direction


def _options(key: str, raw, allowed: dict[str, set], default: str, problems: _Problems) -> dict:
    options = dict(raw or {"name": default})
    name = options.setdefault("name", default)
    if name not in allowed:
        problems.fail(f"{key}.name", f"{name!r}; use one of {tuple(allowed)}")
    extra = sorted(set(options) - allowed[name])
    if extra:
        problems.fail(f"{key} ({name})", f"unknown key(s) {extra}; known keys: "
                                         f"{sorted(allowed[name])}")
    for option in set(options) - {"name"}:
        value = options[option]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.fail(f"{key}.{option}", f"expected an int >= 0, got {value!r}")
    return options


def _split(raw, problems: _Problems) -> dict:
    split = dict(raw or {})
    extra = sorted(set(split) - {"group_by", "drop_cross_split_duplicates"})
    if extra:
        problems.fail("split", f"unknown key(s) {extra}")
    if not isinstance(split.get("drop_cross_split_duplicates", False), bool):
        problems.fail("split.drop_cross_split_duplicates", "expected true or false")
    if split.get("group_by") is not None and not isinstance(split["group_by"], str):
        problems.fail("split.group_by", "expected siblings, none, a regular expression or a "
                                        "CSV path")
    return split


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise LeukomlError(f"{key}: must be >= {low}, got {value}")


def parse_search_space(raw: dict, source: str = "") -> SearchSpace:
    """Validate a loaded YAML mapping; every error names its key, all at once."""
    if not isinstance(raw, dict):
        raise LeukomlError("search space: expected a YAML mapping at the top level")
    params = TrainConfig.params()
    keys = set(_STRUCTURAL) | (set(params) - _NOT_KEYS)
    problems = _Problems()
    unknown = sorted(set(raw) - keys)
    if unknown:
        named = ", ".join(f"{key!r}{did_you_mean(key, keys)}" for key in unknown)
        problems.append(f"'(top level)': unknown key(s) {named}; known keys: {sorted(keys)}")
    objective = problems.check("objective", lambda: _objective(raw.get("objective"), problems))
    tiers = problems.check("tiers", lambda: _tiers(raw.get("tiers", {"low": "all"}), problems))
    max_size = problems.check("max_image_size", lambda: dimension(
        "max_image_size", raw.get("max_image_size", 224), "int", searchable=False).value)
    image_size = raw.get("image_size", 96)
    if image_size != BACKBONE_DEFAULT:
        def fits(size):
            if size < 14 or (max_size and size > max_size):
                raise LeukomlError(f"image_size: {size} is outside 14..{max_size}")
            for backbone in (b for group in (tiers or {}).values() for b in group):
                entry = get_backbone(backbone)
                if size < entry.min_size:
                    raise LeukomlError(f"image_size: {size} px is below {backbone}'s minimum "
                                       f"of {entry.min_size} px")
        image_size = problems.check("image_size", lambda: dimension(
            "image_size", raw.get("image_size", 96), "int", fits))
    learning_rate = raw.get("learning_rate", BACKBONE_DEFAULT)
    if learning_rate in (BACKBONE_DEFAULT, AUTO):
        learning_rate = BACKBONE_DEFAULT
    else:
        def positive(value):
            if not 0 < value < 10:
                raise LeukomlError(f"learning_rate: {value!r} is outside (0, 10)")
        learning_rate = problems.check("learning_rate", lambda: dimension(
            "learning_rate", raw["learning_rate"], "float", positive))
    dimensions = {}
    for key in (k for k in params if k in raw and k not in _NOT_KEYS | {"weights"}):
        param = params[key][1]
        kind = "float" if param.kind == "float" else "int" if param.kind == "int" else "value"
        found = problems.check(key, lambda: dimension(
            key, raw[key], kind, lambda v: check_value(key, v, param), param.searchable))
        if found is not None:
            dimensions[key] = found
    if "weights" in raw:
        weights = problems.check("weights", lambda: check_weights(raw["weights"] or "none"))
        dimensions["weights"] = Fixed(weights)
    sampler = problems.check("sampler", lambda: _options(
        "sampler", raw.get("sampler"), {s: _SAMPLER_KEYS for s in SAMPLERS}, "tpe", problems))
    pruner = problems.check("pruner", lambda: _options(
        "pruner", raw.get("pruner"), _PRUNER_KEYS, "median", problems))
    split = problems.check("split", lambda: _split(raw.get("split"), problems))
    scalars = {key: problems.check(key, lambda: dimension(
        key, raw.get(key, default), "int", lambda v: _at_least(key, v, low),
        searchable=False).value)
        for key, default, low in (("max_epochs", 30, 1), ("min_epochs", 2, 1), ("seed", 0, 0),
                                  ("n_trials", 10, 1), ("ensemble", 3, 0))}
    timeout = raw.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or timeout <= 0):
        problems.append(f"'timeout': expected seconds > 0 or null, got {timeout!r}")
    if problems:
        raise LeukomlError("search space: " + "; ".join(problems))
    space = SearchSpace(
        objective_metric=objective[0], direction=objective[1], tiers=tiers,
        image_size=image_size, max_image_size=max_size, learning_rate=learning_rate,
        max_epochs=scalars["max_epochs"],
        min_epochs=min(scalars["min_epochs"], scalars["max_epochs"]),  # never above max_epochs
        dimensions=dimensions, sampler=sampler,
        pruner=pruner, seed=scalars["seed"], n_trials=scalars["n_trials"],
        timeout=None if timeout is None else float(timeout), split=split,
        ensemble=scalars["ensemble"], source=source,
    )
    from leukoml.study.portfolio import portfolio_params

    try:
        return replace(space, portfolio=portfolio_params(raw.get("portfolio"), space))
    except LeukomlError as exc:
        raise LeukomlError(f"search space: {exc}") from None


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file; errors name the file and every key."""
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


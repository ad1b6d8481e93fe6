"""A portfolio first: configurations worth trying before the sampler takes over.

A search space's `portfolio:` is a list of partial configurations (dimension ->
value) or `false`. Without the key, a study starts with the `-e train` defaults,
then two configurations that differ from them (backbone family, input size,
schedule), each cut down to what the space allows: a value outside it is left
to the sampler. A portfolio the space declares is checked strictly instead: an
unknown dimension or a value outside the space is refused, naming the entry.
Each entry becomes the Optuna parameters of one queued trial (`enqueue_trial`),
so the sampler learns from these trials like any other. A grid space has no
default portfolio (the grid is its order).
"""

from __future__ import annotations

from leukoml import names
from leukoml.backbones import get_backbone
from leukoml.config import AUTO, TrainConfig
from leukoml.errors import LeukomlError
from leukoml.study.dimensions import Fixed

DEFAULT_PORTFOLIO = (
    # what `mlflow run . -e train` trains: the first model a user would try
    {key: default for key, (default, _) in TrainConfig.params().items()},
    # the best model trained on the held-out set of issue 26 (cpu.yaml, 24 epochs: test
    # accuracy 0.980 against 0.962 for a plain Keras script)
    {names.BACKBONE: "MobileNetV3Large", names.IMAGE_SIZE: 64, "schedule": "cosine"},
    # another family and schedule, for a spread of first results
    {names.BACKBONE: "EfficientNetB0", names.IMAGE_SIZE: 96, "schedule": "plateau",
     "optimizer": "adam", "label_smoothing": 0.0},
)


def portfolio_params(raw, space) -> tuple[dict, ...]:
    """The Optuna parameters of the portfolio's trials, in order, without duplicates."""
    if raw is False:
        return ()
    strict = raw is not None
    if raw is None:
        entries = () if space.sampler["name"] == "grid" else DEFAULT_PORTFOLIO
    elif isinstance(raw, list) and raw:
        entries = raw
    else:
        raise LeukomlError("'portfolio': expected a list of configurations (dimension: value) "
                           "or false")
    found: list[dict] = []
    for i, entry in enumerate(entries):
        params = _params(entry, space, f"portfolio[{i}]", strict)
        if params not in found and (params or strict):
            found.append(params)
    return tuple(found)


def _params(entry, space, where: str, strict: bool) -> dict:
    """One entry as Optuna parameters; refused (strict) or cut to the space (default)."""
    from leukoml.study.space import BACKBONE_DEFAULT, LEARNING_RATE_SCALE

    if not isinstance(entry, dict):
        raise LeukomlError(f"'{where}': expected a mapping of dimension -> value, got {entry!r}")
    problems, params = [], {}

    def refuse(key: str, message: str) -> None:
        if strict:
            problems.append(f"'{where}.{key}': {message}")

    known = {names.BACKBONE, names.IMAGE_SIZE, names.LEARNING_RATE, *space.dimensions}
    for key in sorted(set(entry) - known):
        refuse(key, f"not a dimension of this space; its dimensions: {sorted(known)}")
    backbone = entry.get(names.BACKBONE)
    if backbone is not None:
        tier = next((t for t, group in space.tiers.items() if backbone in group), None)
        if tier is None:
            refuse(names.BACKBONE, f"{backbone!r} is not in this space's tiers: "
                                   f"{space.backbones}")
            backbone = None
        else:
            params.update({names.TIER: tier, f"{names.BACKBONE}_{tier}": backbone})
    dimensions = dict(space.dimensions)
    if space.image_size != BACKBONE_DEFAULT:
        dimensions[names.IMAGE_SIZE] = space.image_size
    elif names.IMAGE_SIZE in entry:
        refuse(names.IMAGE_SIZE, "this space sizes each backbone (backbone_default)")
    rate = entry.get(names.LEARNING_RATE)
    if space.learning_rate != BACKBONE_DEFAULT:
        dimensions[names.LEARNING_RATE] = space.learning_rate
    elif rate is not None:
        if backbone is None:
            refuse(names.LEARNING_RATE, "with learning_rate: backbone_default, an entry that "
                                        "sets it names its backbone too")
        else:
            family = get_backbone(backbone)
            value = family.learning_rate if rate in (AUTO, BACKBONE_DEFAULT) else rate
            low, high = family.learning_rate_range
            if isinstance(value, (int, float)) and low <= value <= high:
                params[LEARNING_RATE_SCALE] = value / family.learning_rate
            else:
                refuse(names.LEARNING_RATE, f"{rate!r} is outside {backbone}'s range "
                                            f"[{low:g}, {high:g}]")
    for key, dimension in dimensions.items():
        if key not in entry:
            continue
        if not dimension.contains(entry[key]):
            refuse(key, f"{entry[key]!r} is outside this space: {dimension.describe()}")
        elif not isinstance(dimension, Fixed):
            params[key] = entry[key]
    if problems:
        raise LeukomlError("; ".join(problems))
    return params

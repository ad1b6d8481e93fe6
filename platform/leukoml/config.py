"""`TrainConfig`: what one training run takes, declared once.

Each field carries its help text and its kind (a `Param`), so the `train`
command-line options, the `MLproject` train entry point (checked by a test)
and the search-space dimensions (`leukoml.study.space`) all come from here:
a new option is one field. `validated()` reports every problem at once,
each naming its field, before any data is read or any model is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from leukoml import names
from leukoml.backbones import check_image_size, check_weights, get_backbone
from leukoml.data.spec import CROPS, DataSpec
from leukoml.errors import LeukomlError, did_you_mean

AUTO = "auto"
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine", "plateau")
AUGMENTATIONS = ("none", "flips", "cell")
TTA = ("none", "flips", "dihedral")
EVALUATE_TTA = ("model", *TTA)  # -e evaluate: as the model was registered, or one of TTA
CLASS_WEIGHTS = ("none", "balanced")
MONITORS = tuple(names.val(m) for m in names.EPOCH_METRICS)


@dataclass(frozen=True)
class Param:
    """How a field is given and checked: `kind` is int, float, bool, str or choice."""

    help: str
    kind: str = "str"
    choices: tuple[str, ...] = ()
    low: float | None = None  # inclusive bounds of a number
    high: float | None = None
    searchable: bool = False  # may be a range or a list in a search space


def _p(help: str, kind: str = "str", choices=(), low=None, high=None, searchable=False):
    return {"param": Param(help, kind, tuple(choices), low, high, searchable)}


@dataclass
class TrainConfig:
    """One training run; every field is logged as an MLflow param of the same name."""

    data: str = field(default="synthetic", metadata=_p(
        "dataset folder (class folders, optionally under train/val/test), or 'synthetic'"))
    backbone: str = field(default="MobileNetV3Small", metadata=_p(
        "a registered backbone (`leukoml backbones`)"))
    learning_rate: str = field(default=AUTO, metadata=_p(
        "peak learning rate, or 'auto': the backbone family's safe default"))
    batch_size: int = field(default=32, metadata=_p("images per step", "int", low=1,
                                                    searchable=True))
    patience: int = field(default=8, metadata=_p(
        "epochs without improvement of `monitor` before stopping", "int", low=0,
        searchable=True))
    max_epochs: int = field(default=40, metadata=_p("at most this many epochs", "int", low=1))
    image_size: int = field(default=96, metadata=_p("square input size, px", "int", low=14))
    weights: str = field(default="none", metadata=_p(
        "'imagenet' (downloaded by Keras), 'none' (from scratch) or a weights file"))
    seed: int = field(default=0, metadata=_p("split and initialisation seed", "int", low=0))
    freeze_base: bool = field(default=False, metadata=_p(
        "train the head only (with pretrained weights)", "bool"))
    optimizer: str = field(default="adamw", metadata=_p(
        "optimizer", "choice", OPTIMIZERS, searchable=True))
    weight_decay: float = field(default=1e-4, metadata=_p(
        "decoupled weight decay (adamw only)", "float", low=0, high=1, searchable=True))
    schedule: str = field(default="cosine", metadata=_p(
        "learning-rate schedule: constant, cosine (with warm-up) or plateau (reduce on "
        "plateau of `monitor`)", "choice", SCHEDULES, searchable=True))
    warmup_epochs: int = field(default=2, metadata=_p(
        "linear warm-up epochs before the cosine decay", "int", low=0, searchable=True))
    label_smoothing: float = field(default=0.1, metadata=_p(
        "label smoothing of the cross-entropy", "float", low=0, high=0.5, searchable=True))
    augment: str = field(default="cell", metadata=_p(
        "none; flips (the 8 flips/right-angle turns); cell (flips + any-angle rotation, "
        "zoom, colour and stain jitter)", "choice", AUGMENTATIONS, searchable=True))
    crop: str = field(default="cell", metadata=_p(
        "none, or cell: a square around the leukocyte (found by its stained nucleus) "
        "before resizing, in training and serving alike", "choice", CROPS, searchable=True))
    tta: str = field(default="dihedral", metadata=_p(
        "test-time augmentation averaged in evaluation and serving: none, flips (4) or "
        "dihedral (8)", "choice", TTA))
    calibrate: bool = field(default=True, metadata=_p(
        "fit a temperature on validation; served probabilities are calibrated", "bool"))
    monitor: str = field(default="val_loss", metadata=_p(
        "early-stopping and best-epoch metric", "choice", MONITORS))
    class_weight: str = field(default="none", metadata=_p(
        "none, or balanced (weights inverse to class frequency)", "choice", CLASS_WEIGHTS,
        searchable=True))
    mixed_precision: bool = field(default=False, metadata=_p(
        "float16 compute on a GPU (ignored on a CPU)", "bool"))
    group_by: str = field(default="siblings", metadata=_p(
        "keep groups in one split: siblings (detected rotated/flipped/shifted copies of one "
        "field), none, a regex with one capture group over file names, or a file,group CSV"))
    drop_cross_split_duplicates: bool = field(default=False, metadata=_p(
        "drop train/val images that copy a test (or val) image", "bool"))
    follow_links: bool = field(default=False, metadata=_p(
        "read symlinked images and folders that point outside the data folder (a split "
        "made of links)", "bool"))

    @classmethod
    def params(cls) -> dict[str, tuple[object, Param]]:
        """field name -> (default, Param), in declaration order."""
        return {f.name: (f.default, f.metadata["param"]) for f in fields(cls)}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def data_spec(self) -> DataSpec:
        """The data this run trains on, as the one `DataSpec` every job shares."""
        return DataSpec(source=self.data, image_size=self.image_size, seed=self.seed,
                        group_by=self.group_by, crop=self.crop,
                        drop_cross_split_duplicates=self.drop_cross_split_duplicates,
                        follow_links=self.follow_links)

    def peak_learning_rate(self) -> float:
        if self.learning_rate == AUTO:
            return get_backbone(self.backbone).learning_rate
        return float(self.learning_rate)

    def validated(self) -> "TrainConfig":
        """A checked copy, or one `LeukomlError` listing every bad field."""
        problems: list[str] = []

        def check(step):
            try:
                return step()
            except LeukomlError as exc:
                problems.append(str(exc))

        for name, (_, param) in self.params().items():
            check(lambda: check_value(name, getattr(self, name), param))
        entry = check(lambda: get_backbone(self.backbone))
        if entry is not None and isinstance(self.image_size, int):
            check(lambda: check_image_size(entry, self.image_size))
        weights = check(lambda: check_weights(self.weights))
        if self.learning_rate != AUTO:
            try:
                if not 0 < float(self.learning_rate) < 10:
                    raise ValueError
            except (TypeError, ValueError):
                problems.append(f"learning_rate: {self.learning_rate!r}; use a number in "
                                f"(0, 10) or '{AUTO}'")
        spec = check(lambda: self.data_spec().validated())
        if problems:
            raise LeukomlError("; ".join(dict.fromkeys(problems)))
        return replace(self, weights=weights, group_by=spec.group_by)

    def to_params(self) -> dict[str, object]:
        return asdict(self)


def check_value(name: str, value: object, param: Param) -> None:
    """One field's value against its `Param`; the error names the field."""
    kind = param.kind
    if kind == "bool" and not isinstance(value, bool):
        raise LeukomlError(f"{name}: expected true or false, got {value!r}")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise LeukomlError(f"{name}: expected an int, got {value!r}")
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise LeukomlError(f"{name}: expected a number, got {value!r}")
    if kind == "choice" and value not in param.choices:
        raise LeukomlError(f"{name}: {value!r}{did_you_mean(value, param.choices)}; use one "
                           f"of {', '.join(param.choices)}")
    if kind in ("int", "float"):
        if param.low is not None and value < param.low:
            raise LeukomlError(f"{name}: {value!r} is below {param.low:g}")
        if param.high is not None and value > param.high:
            raise LeukomlError(f"{name}: {value!r} is above {param.high:g}")

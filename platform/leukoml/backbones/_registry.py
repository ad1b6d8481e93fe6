"""One table of every backbone leukoml can train, declared as data.

The 40 `keras.applications` models of Table 2 in Katar et al. (2023), with the
table's parameter count (millions, with the ImageNet top) and tier, plus the
small CNN of Asghar et al. (2022). `min_size` is the smallest square input the
model builds at without its top (measured; `tests/test_backbones.py` builds
every entry there).

Each entry names its builder. A custom backbone is its module (one function from
the scaled image tensor to the last feature map, like `_asghar.py`) plus one line
in `_ENTRIES` naming it as "package.module:function"; a builder that names no
such function is refused when this table loads, so a typo cannot train another
network.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from leukoml.errors import LeukomlError

TIERS = ("low", "medium", "high")
# How each keras.applications module scales its input (its `preprocess_input`); the
# classifier builds this into the model, so every caller feeds raw RGB in [0, 255].
PREPROCESS = {
    "vgg16": "caffe", "vgg19": "caffe", "resnet50": "caffe", "resnet": "caffe",
    "resnet_v2": "tf", "mobilenet": "tf", "mobilenet_v2": "tf", "inception_v3": "tf",
    "inception_resnet_v2": "tf", "xception": "tf", "nasnet": "tf", "densenet": "torch",
    "mobilenet_v3": "none", "efficientnet": "none", "efficientnet_v2": "none", "convnext": "none",
    "leukoml": "unit",
}
# Peak learning rates by family. Asghar2022CNN's 124k-wide dense layer dies at 1e-3 on
# real images (91% dead units, chance accuracy): 1e-4, the paper's own.
LEARNING_RATES = {"default": 1e-3, "asghar2022": 1e-4}
# The builder of the 40 Table 2 entries: the `keras.applications` class of the entry's name.
KERAS_APPLICATIONS = "keras.applications"


@dataclass(frozen=True)
class Backbone:
    name: str  # the Keras class name, e.g. "MobileNetV3Small"
    tier: str  # low < 15 M, medium 15-70 M, high > 70 M parameters
    params_m: float  # parameters in millions, as in Table 2
    default_size: int  # the model's native square input size
    module: str  # keras.applications sub-module holding preprocess_input
    family: str
    min_size: int = 32
    head: str = "gap"  # "gap": global average pooling; "flatten_dense64": the paper's CNN
    # KERAS_APPLICATIONS, or "package.module:function": scaled image tensor -> feature map
    builder: str = KERAS_APPLICATIONS

    @property
    def param_count(self) -> int:
        return int(round(self.params_m * 1e6))

    @property
    def is_keras_application(self) -> bool:
        return self.builder == KERAS_APPLICATIONS

    @property
    def learning_rate(self) -> float:
        """The peak learning rate `auto` means: safe from scratch with AdamW and warm-up."""
        return LEARNING_RATES.get(self.family, LEARNING_RATES["default"])

    @property
    def learning_rate_range(self) -> tuple[float, float]:
        """What a search samples (log-uniform) for `learning_rate: backbone_default`."""
        return self.learning_rate / 3, self.learning_rate * 3

    @property
    def preprocess(self) -> str:
        """Input scaling: "caffe" (BGR, mean-subtracted), "tf" ([-1, 1]), "torch"
        ([0, 1], ImageNet-standardised), "unit" ([0, 1]) or "none" (built in)."""
        return PREPROCESS[self.module]


def _b(name, params_m, size, module, family, min_size=32):
    tier = "low" if params_m < 15 else "medium" if params_m <= 70 else "high"
    return Backbone(name, tier, params_m, size, module, family, min_size)


_ENTRIES = (
    # high (> 70 M)
    _b("ConvNeXtXLarge", 350.1, 224, "convnext", "convnext"),
    _b("ConvNeXtLarge", 197.7, 224, "convnext", "convnext"),
    _b("VGG19", 143.7, 224, "vgg19", "vgg"),
    _b("VGG16", 138.4, 224, "vgg16", "vgg"),
    _b("EfficientNetV2L", 119.0, 480, "efficientnet_v2", "efficientnet_v2"),
    _b("NASNetLarge", 88.9, 331, "nasnet", "nasnet"),
    _b("ConvNeXtBase", 88.5, 224, "convnext", "convnext"),
    # medium (15-70 M)
    _b("EfficientNetB7", 66.7, 600, "efficientnet", "efficientnet"),
    _b("ResNet152", 60.4, 224, "resnet", "resnet"),
    _b("ResNet152V2", 60.4, 224, "resnet_v2", "resnet_v2"),
    _b("InceptionResNetV2", 55.9, 299, "inception_resnet_v2", "inception_resnet_v2", 75),
    _b("EfficientNetV2M", 54.4, 480, "efficientnet_v2", "efficientnet_v2"),
    _b("ConvNeXtSmall", 50.2, 224, "convnext", "convnext"),
    _b("ResNet101", 44.7, 224, "resnet", "resnet"),
    _b("ResNet101V2", 44.7, 224, "resnet_v2", "resnet_v2"),
    _b("EfficientNetB6", 43.3, 528, "efficientnet", "efficientnet"),
    _b("EfficientNetB5", 30.6, 456, "efficientnet", "efficientnet"),
    _b("ConvNeXtTiny", 28.6, 224, "convnext", "convnext"),
    _b("ResNet50", 25.6, 224, "resnet50", "resnet"),
    _b("ResNet50V2", 25.6, 224, "resnet_v2", "resnet_v2"),
    _b("InceptionV3", 23.9, 299, "inception_v3", "inception_v3", 75),
    _b("Xception", 22.9, 299, "xception", "xception"),
    _b("EfficientNetV2S", 21.6, 384, "efficientnet_v2", "efficientnet_v2"),
    _b("DenseNet201", 20.2, 224, "densenet", "densenet"),
    _b("EfficientNetB4", 19.5, 380, "efficientnet", "efficientnet"),
    # low (< 15 M)
    _b("EfficientNetV2B3", 14.5, 300, "efficientnet_v2", "efficientnet_v2"),
    _b("DenseNet169", 14.3, 224, "densenet", "densenet"),
    _b("EfficientNetB3", 12.3, 300, "efficientnet", "efficientnet"),
    _b("EfficientNetV2B2", 10.2, 260, "efficientnet_v2", "efficientnet_v2"),
    _b("EfficientNetB2", 9.2, 260, "efficientnet", "efficientnet"),
    _b("EfficientNetV2B1", 8.2, 240, "efficientnet_v2", "efficientnet_v2"),
    _b("DenseNet121", 8.1, 224, "densenet", "densenet"),
    _b("EfficientNetB1", 7.9, 240, "efficientnet", "efficientnet"),
    _b("EfficientNetV2B0", 7.2, 224, "efficientnet_v2", "efficientnet_v2"),
    _b("MobileNetV3Large", 5.4, 224, "mobilenet_v3", "mobilenet_v3"),
    _b("NASNetMobile", 5.3, 224, "nasnet", "nasnet"),
    _b("EfficientNetB0", 5.3, 224, "efficientnet", "efficientnet"),
    _b("MobileNet", 4.3, 224, "mobilenet", "mobilenet"),
    _b("MobileNetV2", 3.5, 224, "mobilenet_v2", "mobilenet_v2"),
    _b("MobileNetV3Small", 2.9, 224, "mobilenet_v3", "mobilenet_v3"),
    # Asghar et al. (2022), Section 2.3: 7.9 M parameters at 100 px with 4 classes.
    Backbone("Asghar2022CNN", "low", 7.99, 100, "leukoml", "asghar2022", 14, "flatten_dense64",
             builder="leukoml.backbones._asghar:asghar2022_features"),
)


def _top_level_functions(source: str) -> set[str]:
    tree = ast.parse(Path(source).read_text(encoding="utf-8"), filename=source)
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def check_builder(entry: Backbone) -> None:
    """Refuse a builder that names no top-level function of a findable module. The module
    is found and parsed, not run: loading the table must not import Keras."""
    if entry.is_keras_application:
        return
    module, _, function = entry.builder.partition(":")
    try:
        spec = importlib.util.find_spec(module) if module and function else None
    except (ImportError, ValueError):
        spec = None
    origin = spec.origin if spec is not None else None
    if origin is None or not origin.endswith(".py") or function not in _top_level_functions(origin):
        raise LeukomlError(
            f"backbone {entry.name}: unknown builder {entry.builder!r}; use "
            f"'{KERAS_APPLICATIONS}' or 'package.module:function' naming a function defined "
            "at the top of a Python module"
        )


def load_table(entries: tuple[Backbone, ...]) -> dict[str, Backbone]:
    """name -> entry in table order, every builder checked; a duplicate name is refused."""
    table: dict[str, Backbone] = {}
    for entry in entries:
        if entry.name in table:
            raise LeukomlError(f"backbone {entry.name}: listed twice in the backbone table")
        check_builder(entry)
        table[entry.name] = entry
    return table


BACKBONES: dict[str, Backbone] = load_table(_ENTRIES)


def get_backbone(name: str) -> Backbone:
    """The registry entry for `name`; an unknown name lists the known ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise LeukomlError(
            f"unknown backbone {name!r}; known backbones: {', '.join(sorted(BACKBONES))}"
        ) from None


def list_backbones(tier: str | None = None) -> list[Backbone]:
    """Entries in table order (largest first), optionally of one tier."""
    if tier is not None and tier not in TIERS:
        raise LeukomlError(f"unknown tier {tier!r}; known tiers: {', '.join(TIERS)}")
    return [b for b in BACKBONES.values() if tier is None or b.tier == tier]


def check_weights(weights: str) -> str:
    """Normalise `weights` ("imagenet", "none" or a path) or refuse it with the options."""
    value = str(weights).strip()
    if value.lower() in ("none", "null", ""):
        return "none"
    if value.lower() == "imagenet":
        return "imagenet"
    path = Path(value).expanduser()
    if not path.is_file():
        raise LeukomlError(
            f"weights: {value!r} is neither 'imagenet', 'none' nor an existing weights file"
        )
    if not path.name.endswith((".h5", ".keras")):
        raise LeukomlError(f"weights: {value!r} is not a Keras weights file (.weights.h5 or .h5)")
    return str(path.resolve())


def check_image_size(entry: Backbone, image_size: int) -> None:
    if int(image_size) < entry.min_size:
        raise LeukomlError(
            f"image_size {image_size} is below {entry.name}'s minimum of {entry.min_size} px; "
            f"use image_size >= {entry.min_size} (its default is {entry.default_size})"
        )

"""The backbone registry against the source paper, and every model built for real."""

from __future__ import annotations

import re
import sys

import keras
import pytest
from helpers import REPO, skip_unless_shared

from leukoml.backbones import (
    BACKBONES,
    TIERS,
    Backbone,
    _registry,
    check_weights,
    get_backbone,
    list_backbones,
)
from leukoml.errors import LeukomlError

SEEDS = REPO.parent / "shared" / "seeds"
# Table 2 spells a few names differently from Keras' class names.
_TABLE_NAMES = {"VGG-19": "VGG19", "VGG-16": "VGG16", "Mobilenet_v3_large": "MobileNetV3Large",
                "Mobilenet_v3_small": "MobileNetV3Small"}


def _table2() -> dict[str, tuple[int, float, str]]:
    papers = sorted(SEEDS.glob("002_*.txt"))
    skip_unless_shared(bool(papers), f"the source paper in {SEEDS}")
    rows = re.findall(r"^(\S+) (\d+)×\d+ ([\d.]+) (High|Medium|Low)\s*$",
                      papers[0].read_text(), flags=re.M)
    return {_TABLE_NAMES.get(n, n): (int(size), float(p), tier.lower()) for n, size, p, tier in rows}


def test_registry_matches_table_2_of_the_paper():
    table = _table2()
    assert len(table) == 40
    keras_apps = {name for name, b in BACKBONES.items() if b.is_keras_application}
    assert keras_apps == set(table)
    for name, (size, params_m, tier) in table.items():
        entry = get_backbone(name)
        assert (entry.default_size, entry.params_m, entry.tier) == (size, params_m, tier), name


# Parameter counts (millions) from the keras.applications documentation table, and the
# tier Katar et al. (2023) put each in: a fixed reference, not the registry's own formula.
KNOWN = {"MobileNetV3Small": (2.9, "low"), "MobileNetV2": (3.5, "low"),
         "EfficientNetB0": (5.3, "low"), "DenseNet121": (8.1, "low"),
         "ResNet50": (25.6, "medium"), "InceptionV3": (23.9, "medium"),
         "Xception": (22.9, "medium"), "ConvNeXtTiny": (28.6, "medium"),
         "VGG16": (138.4, "high"), "VGG19": (143.7, "high"), "NASNetLarge": (88.9, "high"),
         "ConvNeXtXLarge": (350.1, "high")}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_tiers_match_known_parameter_counts(name):
    params_m, tier = KNOWN[name]
    entry = get_backbone(name)
    assert entry.tier == tier
    assert entry.params_m == pytest.approx(params_m, rel=0.05)


def test_the_papers_cnn_is_low_tier_and_every_tier_lists_only_its_own():
    assert get_backbone("Asghar2022CNN").tier == "low"
    assert {b.tier for b in list_backbones()} == set(TIERS)
    for tier in TIERS:
        assert list_backbones(tier) and all(b.tier == tier for b in list_backbones(tier))


def test_every_keras_name_exists_in_keras_applications():
    for entry in BACKBONES.values():
        if entry.is_keras_application:
            assert hasattr(keras.applications, entry.name), entry.name
            assert hasattr(getattr(keras.applications, entry.module), "preprocess_input")


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(LeukomlError, match="known backbones: .*MobileNetV3Small"):
        get_backbone("ResNet9000")
    with pytest.raises(LeukomlError, match="known tiers"):
        list_backbones("huge")


def test_weights_are_checked_before_anything_is_built(tmp_path):
    assert check_weights("None") == "none"
    assert check_weights("ImageNet") == "imagenet"
    with pytest.raises(LeukomlError, match="neither 'imagenet', 'none' nor an existing"):
        check_weights(str(tmp_path / "missing.weights.h5"))
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(LeukomlError, match="not a Keras weights file"):
        check_weights(str(text))


# A throwaway custom backbone: its module, and the one registry line that names it.
THROWAWAY_MODULE = """
import keras


def features(x):
    return keras.layers.Conv2D(5, 3, strides=2, name="throwaway_conv")(x)
"""


def test_a_custom_backbone_is_its_module_plus_one_registry_line(tmp_path, monkeypatch, request):
    from leukoml.backbones.classifier import build_classifier

    (tmp_path / "throwaway_cnn.py").write_text(THROWAWAY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    request.addfinalizer(lambda: sys.modules.pop("throwaway_cnn", None))
    line = Backbone("ThrowawayCNN", "low", 0.001, 32, "leukoml", "throwaway",
                    builder="throwaway_cnn:features")
    monkeypatch.setattr(_registry, "BACKBONES", _registry.load_table((*BACKBONES.values(), line)))
    assert "throwaway_cnn" not in sys.modules  # checked at load without running the module
    assert get_backbone("ThrowawayCNN") in list_backbones("low")

    model = build_classifier(get_backbone("ThrowawayCNN"), 3, 32)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.name for c in convs] == ["throwaway_conv"]  # its own network, not Asghar's
    assert model.get_layer("throwaway_conv").output.shape[1:] == (15, 15, 5)
    with pytest.raises(LeukomlError, match="ThrowawayCNN has no ImageNet weights"):
        build_classifier(get_backbone("ThrowawayCNN"), 3, 32, weights="imagenet")


@pytest.mark.parametrize("builder", [
    "leukoml.backbones._asghar:asghar2022_featurez",  # a typo in the function
    "leukoml.backbones._ashgar:asghar2022_features",  # a typo in the module
    "asghar2022_features",  # no module
])
def test_a_registry_line_naming_an_unknown_builder_fails_at_load_with_its_name(builder):
    line = Backbone("TypoCNN", "low", 1.0, 32, "leukoml", "typo", builder=builder)
    expected = rf"backbone TypoCNN: unknown builder '{re.escape(builder)}'"
    with pytest.raises(LeukomlError, match=expected):
        _registry.load_table((*BACKBONES.values(), line))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_flat_at_its_minimum_size(name):
    from leukoml.backbones.classifier import LOGITS_LAYER, build_classifier

    entry = get_backbone(name)
    keras.backend.clear_session()
    model = build_classifier(entry, num_classes=5, image_size=entry.min_size, weights="none")
    assert model.input_shape == (None, entry.min_size, entry.min_size, 3)
    assert model.output_shape == (None, 5)
    # one flat graph: the backbone's layers sit in the classifier itself (a few
    # families keep small Sequential blocks inside), so Grad-CAM reaches the
    # feature map that feeds the head
    first_head = next(i for i, layer in enumerate(model.layers) if layer.name.startswith("head_"))
    assert first_head > 6
    assert not isinstance(model.layers[first_head - 1], keras.Model)
    assert model.get_layer(LOGITS_LAYER).output.shape[-1] == 5
    with pytest.raises(LeukomlError, match="minimum"):
        build_classifier(entry, num_classes=5, image_size=entry.min_size - 1)


def test_from_scratch_models_get_a_batch_norm_momentum_that_tracks():
    from leukoml.backbones.classifier import FROM_SCRATCH_BN_MOMENTUM, build_classifier

    model = build_classifier(get_backbone("MobileNetV3Small"), 3, 32, weights="none")
    momenta = {layer.momentum for layer in model.layers
               if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {FROM_SCRATCH_BN_MOMENTUM}


def test_frozen_base_leaves_only_the_head_trainable():
    from leukoml.backbones.classifier import build_classifier

    model = build_classifier(get_backbone("MobileNetV2"), 4, 32, freeze_base=True)
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"head_logits"}


def test_asghar_cnn_is_the_papers_model():
    from leukoml.backbones.classifier import build_classifier

    model = build_classifier(get_backbone("Asghar2022CNN"), 4, 100)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert [c.filters for c in convs] == [32, 64, 64]
    assert [c.strides for c in convs] == [(1, 1), (2, 2), (1, 1)]
    assert len(pools) == 3 and all(p.strides == (1, 1) for p in pools)
    assert model.get_layer("head_dense64").units == 64
    assert model.get_layer("head_dropout").rate == pytest.approx(0.2)
    assert model.count_params() == pytest.approx(get_backbone("Asghar2022CNN").param_count, rel=0.01)


def test_imagenet_weights_offline_fail_with_the_cache_folder_and_the_none_option(
    tmp_path, monkeypatch
):
    """Offline on any machine: an empty Keras cache, and the network refused where
    urllib opens it (Keras downloads through urllib.request.urlretrieve)."""
    import urllib.error
    import urllib.request

    from leukoml.backbones.classifier import build_classifier

    asked = []

    def offline(url, *args, **kwargs):
        asked.append(getattr(url, "full_url", url))
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(LeukomlError, match=r"weights: none") as info:
        build_classifier(get_backbone("MobileNetV3Small"), 3, 32, weights="imagenet")
    assert str(tmp_path / "keras" / "models") in str(info.value)
    assert len(asked) == 1 and "mobilenet_v3" in asked[0]  # the download was tried, once

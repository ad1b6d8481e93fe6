"""Run and search-space configuration: strict validation, errors that name the key."""

from __future__ import annotations

import pytest
import yaml

from helpers import REPO
from leukoml.config import (
    BACKBONE_DEFAULT,
    FloatRange,
    IntRange,
    TrainConfig,
    load_search_space,
    parse_search_space,
)
from leukoml.errors import LeukomlError

SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))


def test_the_shipped_search_spaces_are_valid():
    assert {p.stem for p in SHIPPED} >= {"default", "smoke", "asghar2022", "katar2023"}
    for path in SHIPPED:
        space = load_search_space(path)
        assert space.backbones, path
        assert space.source == path.read_text()


def test_the_paper_search_spaces_follow_the_papers():
    asghar = load_search_space(REPO / "search_spaces" / "asghar2022.yaml")
    assert sorted(asghar.backbones) == sorted(
        ["VGG16", "ResNet50", "InceptionV3", "MobileNetV2", "Asghar2022CNN"])
    assert (asghar.image_size, asghar.weights, asghar.freeze_base, asghar.learning_rate) == (
        100, "imagenet", True, 1e-4)
    katar = load_search_space(REPO / "search_spaces" / "katar2023.yaml")
    assert sorted(katar.backbones) == ["MobileNetV3Small", "ResNet50", "VGG19"]
    assert (katar.image_size, katar.learning_rate, katar.batch_size, katar.max_epochs,
            katar.patience, katar.objective_metric) == (224, 1e-4, (64,), 50, 5, "val_accuracy")


def test_smoke_is_small_and_needs_no_download():
    smoke = load_search_space(REPO / "search_spaces" / "smoke.yaml")
    assert smoke.weights == "none" and smoke.image_size <= 64
    assert set(smoke.tiers) == {"low"}


def test_a_full_example_parses_into_typed_values():
    space = parse_search_space(yaml.safe_load("""
        objective: {metric: val_macro_f1, direction: maximize}
        tiers: {low: all, medium: [ResNet50, DenseNet201, InceptionV3], high: []}
        image_size: backbone_default
        max_image_size: 224
        weights: none
        max_epochs: 50
        learning_rate: {low: 1.0e-5, high: 1.0e-2, log: true}
        batch_size: [16, 32, 64]
        patience: {low: 3, high: 10}
        sampler: {name: tpe, seed: 42}
        pruner: {name: median}
    """))
    assert set(space.tiers) == {"low", "medium"}  # an empty tier is dropped
    assert space.learning_rate == FloatRange(1e-5, 1e-2, True)
    assert space.patience == IntRange(3, 10)
    assert space.batch_size == (16, 32, 64)
    assert space.image_size == BACKBONE_DEFAULT
    assert space.image_size_for("InceptionV3") == 224  # 299 capped by max_image_size
    assert space.image_size_for("Asghar2022CNN") == 100


@pytest.mark.parametrize("raw, key, message", [
    ({"tiers": {"low": "all"}, "epochs": 3}, "(top level)", "unknown key(s) ['epochs']"),
    ({"learning_rate": {"low": 0.1, "high": 0.01}}, "learning_rate", "low (0.1) > high (0.01)"),
    ({"learning_rate": {"low": 0, "high": 0.01, "log": True}}, "learning_rate", "low > 0"),
    ({"batch_size": "32"}, "batch_size", "expected an int"),
    ({"patience": {"low": 3}}, "patience", "needs both"),
    ({"tiers": {"low": ["NoSuchNet"]}}, "", "unknown backbone 'NoSuchNet'"),
    ({"tiers": {"giant": "all"}}, "tiers", "unknown key(s) ['giant']"),
    ({"tiers": {"low": ["ResNet50"]}}, "tiers.low", "in tier 'medium'"),
    ({"tiers": {"low": [], "high": []}}, "tiers", "no backbone left"),
    ({"objective": {"metric": "test_accuracy"}}, "objective.metric", "use one of"),
    ({"objective": {"metric": "val_loss", "direction": "maximize"}}, "objective.direction",
     "should be minimized"),
    ({"image_size": 50, "tiers": {"medium": ["InceptionV3"]}}, "image_size", "minimum of 75"),
    ({"sampler": {"name": "cmaes"}}, "sampler.name", "use one of"),
    ({"pruner": {"name": "median", "min_resource": 1}}, "pruner (median)", "unknown key"),
    ({"weights": "/no/such/file.h5"}, "weights", "neither 'imagenet'"),
    ({"split": {"group_by": 3}}, "split.group_by", "regular expression"),
])
def test_bad_search_spaces_are_refused_naming_the_key(raw, key, message):
    with pytest.raises(LeukomlError) as info:
        parse_search_space(raw)
    assert message in str(info.value)
    if key:
        assert f"'{key}'" in str(info.value)


def test_a_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: {low: [unclosed\n")
    with pytest.raises(LeukomlError, match="bad.yaml: invalid YAML"):
        load_search_space(bad)
    with pytest.raises(LeukomlError, match="not found"):
        load_search_space(tmp_path / "missing.yaml")


def test_train_config_refuses_bad_values_before_any_work():
    assert TrainConfig().validated().weights == "none"
    with pytest.raises(LeukomlError, match="image_size 10 is below Asghar2022CNN's minimum"):
        TrainConfig(image_size=10).validated()
    with pytest.raises(LeukomlError, match="unknown backbone"):
        TrainConfig(backbone="AlexNet").validated()
    with pytest.raises(LeukomlError, match="monitor"):
        TrainConfig(monitor="test_accuracy").validated()
    with pytest.raises(LeukomlError, match="batch_size"):
        TrainConfig(batch_size=0).validated()

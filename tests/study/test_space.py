"""Search spaces: every TrainConfig field a key, dimensions that validate and suggest
themselves, every problem reported at once."""

from __future__ import annotations

import optuna
import pytest
import yaml
from helpers import REPO

from leukoml.backbones import get_backbone
from leukoml.errors import LeukomlError
from leukoml.study.dimensions import Choice, FloatRange, IntRange
from leukoml.study.space import (
    BACKBONE_DEFAULT,
    LEARNING_RATE_SCALE,
    load_search_space,
    parse_search_space,
)

SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))


def test_the_shipped_search_spaces_are_valid():
    assert {p.stem for p in SHIPPED} >= {"default", "smoke", "cpu", "asghar2022", "katar2023"}
    for path in SHIPPED:
        space = load_search_space(path)
        assert space.backbones, path
        assert space.source == path.read_text()


def test_the_paper_search_spaces_follow_the_papers():
    asghar = load_search_space(REPO / "search_spaces" / "asghar2022.yaml")
    assert sorted(asghar.backbones) == sorted(
        ["VGG16", "ResNet50", "InceptionV3", "MobileNetV2", "Asghar2022CNN"])
    assert asghar.image_size.value == 100 and asghar.learning_rate.value == 1e-4
    assert (asghar.value("weights"), asghar.value("freeze_base"), asghar.value("optimizer"),
            asghar.value("schedule")) == ("imagenet", True, "adam", "constant")
    katar = load_search_space(REPO / "search_spaces" / "katar2023.yaml")
    assert sorted(katar.backbones) == ["MobileNetV3Small", "ResNet50", "VGG19"]
    assert (katar.image_size.value, katar.learning_rate.value, katar.value("batch_size"),
            katar.max_epochs, katar.value("patience"), katar.objective_metric) == (
        224, 1e-4, 64, 50, 5, "val_accuracy")


def test_smoke_and_cpu_are_small_and_need_no_download():
    for name in ("smoke", "cpu"):
        space = load_search_space(REPO / "search_spaces" / f"{name}.yaml")
        assert space.value("weights") == "none" and space.max_image_size <= 96
        assert set(space.tiers) == {"low"}
    cpu = load_search_space(REPO / "search_spaces" / "cpu.yaml")
    assert cpu.timeout == 5400 and isinstance(cpu.dimensions["augment"], Choice)


def test_a_full_example_parses_into_typed_dimensions():
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
        optimizer: [adam, adamw]
        label_smoothing: {low: 0.0, high: 0.2}
        sampler: {name: tpe, seed: 42}
        pruner: {name: median}
    """))
    assert set(space.tiers) == {"low", "medium"}  # an empty tier is dropped
    assert space.learning_rate == FloatRange(1e-5, 1e-2, True)
    assert space.dimensions["patience"] == IntRange(3, 10)
    assert space.dimensions["batch_size"] == Choice((16, 32, 64))
    assert space.dimensions["optimizer"] == Choice(("adam", "adamw"))
    assert space.dimensions["label_smoothing"] == FloatRange(0.0, 0.2)
    assert space.image_size == BACKBONE_DEFAULT


def test_a_trial_samples_every_dimension_into_a_valid_config():
    space = load_search_space(REPO / "search_spaces" / "cpu.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        config = space.sample(trial, "synthetic").validated()
        entry = get_backbone(config.backbone)
        low, high = entry.learning_rate_range
        assert low * 0.999 <= config.peak_learning_rate() <= high * 1.001
        assert trial.params[LEARNING_RATE_SCALE] * entry.learning_rate == pytest.approx(
            config.peak_learning_rate())
        assert config.image_size in (64, 96) and config.crop == "cell"
        assert config.optimizer in ("adam", "adamw") and config.augment in ("flips", "cell")
        assert 1e-5 <= config.weight_decay <= 1e-3 and config.tta == "dihedral"
        seen.add((config.backbone, config.schedule))
        study.tell(trial, 0.5)
    assert len(seen) > 5


@pytest.mark.parametrize("raw, key, message", [
    ({"tiers": {"low": "all"}, "epochs": 3}, "(top level)",
     "unknown key(s) 'epochs' (did you mean 'max_epochs' or 'min_epochs'?)"),
    ({"learning_rate": {"low": 0.1, "high": 0.01}}, "learning_rate", "low (0.1) > high (0.01)"),
    ({"learning_rate": {"low": 0, "high": 0.01, "log": True}}, "learning_rate", "outside (0, 10)"),
    ({"weight_decay": {"low": 0, "high": 0.01, "log": True}}, "weight_decay", "low > 0"),
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
    ({"optimizer": "sgd"}, "optimizer", "use one of adam, adamw"),
    ({"optimizer": "adamww"}, "optimizer", "'adamww' (did you mean 'adamw'?)"),
    ({"schedule": ["cosine", "step"]}, "schedule", "use one of constant, cosine, plateau"),
    ({"augment": "mixup"}, "augment", "use one of none, flips, cell"),
    ({"tta": ["none", "flips"]}, "tta", "takes one value, not a list"),
    ({"label_smoothing": 0.9}, "label_smoothing", "above 0.5"),
])
def test_bad_search_spaces_are_refused_naming_the_key(raw, key, message):
    with pytest.raises(LeukomlError) as info:
        parse_search_space(raw)
    assert message in str(info.value)
    if key:
        assert f"'{key}'" in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(LeukomlError) as info:
        parse_search_space({"optimizer": "sgd", "augment": "mixup", "batch_size": 0,
                            "sampler": {"name": "cmaes"}, "epochs": 3})
    text = str(info.value)
    for key in ("'optimizer'", "'augment'", "'batch_size'", "'sampler.name'", "(top level)"):
        assert key in text, key


def test_a_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: {low: [unclosed\n")
    with pytest.raises(LeukomlError, match="bad.yaml: invalid YAML"):
        load_search_space(bad)
    with pytest.raises(LeukomlError, match="not found"):
        load_search_space(tmp_path / "missing.yaml")


def test_a_study_starts_with_the_train_defaults_then_two_other_configurations():
    cpu = load_search_space(REPO / "search_spaces" / "cpu.yaml")
    study = optuna.create_study(direction="maximize")
    for params in cpu.portfolio:
        study.enqueue_trial(params)
    first, second, third = (cpu.sample(study.ask(), "synthetic") for _ in range(3))
    small = get_backbone("MobileNetV3Small")
    assert (first.backbone, first.image_size, first.batch_size, first.optimizer,
            first.schedule, first.label_smoothing, first.augment) == (
        "MobileNetV3Small", 96, 32, "adamw", "cosine", 0.1, "cell")  # -e train's defaults
    assert first.peak_learning_rate() == pytest.approx(small.learning_rate)
    assert (second.backbone, second.image_size) == ("MobileNetV3Large", 64)
    assert (third.backbone, third.schedule, third.optimizer) == ("EfficientNetB0", "plateau",
                                                                 "adam")
    # a value a space does not allow is left to the sampler: smoke.yaml fixes 64 px
    smoke = load_search_space(REPO / "search_spaces" / "smoke.yaml")
    assert [p["backbone_low"] for p in smoke.portfolio] == ["MobileNetV3Small"]
    assert "image_size" not in smoke.portfolio[0]
    # the paper grids keep their order; a space may turn the portfolio off or name its own
    assert load_search_space(REPO / "search_spaces" / "asghar2022.yaml").portfolio == ()
    assert parse_search_space({"portfolio": False}).portfolio == ()
    own = parse_search_space({"tiers": {"low": ["MobileNetV2", "Asghar2022CNN"]},
                              "batch_size": [16, 32], "portfolio": [
                                  {"backbone": "Asghar2022CNN", "batch_size": 16}]})
    assert own.portfolio == ({"tier": "low", "backbone_low": "Asghar2022CNN",
                              "batch_size": 16},)


@pytest.mark.parametrize("entry, key, message", [
    ({"dropout": 0.3}, "portfolio[0].dropout", "not a dimension of this space"),
    ({"batch_size": 128}, "portfolio[0].batch_size", "128 is outside this space: one of"),
    ({"backbone": "ResNet50"}, "portfolio[0].backbone", "not in this space's tiers"),
    ({"optimizer": "adam"}, "portfolio[0].optimizer", "fixed at 'adamw'"),
    ({"learning_rate": 0.5}, "portfolio[0].learning_rate", "names its backbone too"),
    ({"backbone": "MobileNetV2", "learning_rate": 0.5}, "portfolio[0].learning_rate",
     "outside MobileNetV2's range"),
])
def test_a_portfolio_entry_outside_the_space_is_refused_naming_it(entry, key, message):
    raw = {"tiers": {"low": ["MobileNetV2"]}, "batch_size": [16, 32], "optimizer": "adamw",
           "portfolio": [entry]}
    with pytest.raises(LeukomlError) as info:
        parse_search_space(raw)
    assert f"'{key}'" in str(info.value) and message in str(info.value)


def test_a_portfolio_must_be_a_list_or_false():
    with pytest.raises(LeukomlError, match="'portfolio': expected a list"):
        parse_search_space({"portfolio": {"backbone": "MobileNetV2"}})


def test_without_a_search_space_the_data_and_the_machine_pick_one(tmp_path, monkeypatch):
    """Before: real data ran smoke.yaml, the synthetic quick start's space."""
    from leukoml.study import inputs

    folder = REPO / "search_spaces"
    gpus = tmp_path / "gpus"
    monkeypatch.setattr(inputs, "_NVIDIA_GPUS", gpus)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert inputs.pick_search_space("synthetic", folder)[0] == folder / "smoke.yaml"
    path, why = inputs.pick_search_space(str(tmp_path), folder)
    assert path == folder / "cpu.yaml" and "no GPU" in why
    (gpus / "0000:01:00.0").mkdir(parents=True)  # the driver lists a card
    assert inputs.pick_search_space(str(tmp_path), folder)[0] == folder / "default.yaml"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # hidden from CUDA
    assert inputs.pick_search_space(str(tmp_path), folder)[0] == folder / "cpu.yaml"
    for path in (folder / "smoke.yaml", folder / "cpu.yaml", folder / "default.yaml"):
        load_search_space(path)

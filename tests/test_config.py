"""TrainConfig: one declaration feeds validation, the train CLI and the MLproject entry point."""

from __future__ import annotations

import pytest
import yaml
from helpers import REPO

from leukoml.cli import build_parser, option
from leukoml.config import AUTO, TrainConfig
from leukoml.errors import LeukomlError


def test_defaults_are_valid_and_learning_rate_auto_follows_the_backbone():
    config = TrainConfig().validated()
    assert config.weights == "none" and config.group_by == "siblings"
    assert config.learning_rate == AUTO and config.peak_learning_rate() == 1e-3
    # the Asghar CNN's wide dense layer dies at 1e-3: its family default is 1e-4
    assert TrainConfig(backbone="Asghar2022CNN").peak_learning_rate() == 1e-4
    assert TrainConfig(learning_rate="3e-4").peak_learning_rate() == 3e-4


def test_every_bad_field_is_reported_at_once_before_any_work():
    with pytest.raises(LeukomlError) as info:
        TrainConfig(backbone="AlexNet", batch_size=0, optimizer="sgd", augment="mixup",
                    monitor="test_accuracy", learning_rate="fast", crop="nucleus").validated()
    text = str(info.value)
    for fragment in ("unknown backbone 'AlexNet'", "batch_size: 0 is below 1",
                     "optimizer: 'sgd'", "augment: 'mixup'", "monitor: 'test_accuracy'",
                     "learning_rate: 'fast'", "crop: 'nucleus'"):
        assert fragment in text, fragment
    with pytest.raises(LeukomlError, match="image_size 10 is below MobileNetV3Small's minimum"):
        TrainConfig(image_size=10).validated()
    with pytest.raises(LeukomlError, match="data: folder '/no/such/folder' does not exist"):
        TrainConfig(data="/no/such/folder").validated()


def test_the_train_cli_is_generated_from_the_config_fields():
    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices.items()
                 if a[0] == "train")[1]
    actions = {a.dest: a for a in train._actions if a.dest != "help"}
    params = TrainConfig.params()
    assert set(actions) - {"func"} == set(params)
    for name, (default, param) in params.items():
        action = actions[name]
        assert action.option_strings == [option(name)] and action.default == default
        assert action.help == param.help
        assert list(action.choices or ()) == list(param.choices)
    assert "(default: adamw)" in train.format_help().replace("\n", " ").replace("  ", " ")


@pytest.mark.parametrize("text, expected", [("true", True), ("False", False), ("1", True),
                                            ("off", False)])
def test_boolean_and_integer_options_parse_as_mlflow_passes_them(text, expected):
    args = build_parser().parse_args(["train", "--calibrate", text, "--batch-size", "32.0"])
    assert args.calibrate is expected and args.batch_size == 32
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--calibrate", "maybe"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--batch-size", "32.5"])


MLPROJECT_TYPES = {"int": "int", "float": "float"}  # the rest are strings


def _as_mlproject(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_every_mlproject_train_parameter_matches_its_cli_option():
    project = yaml.safe_load((REPO / "MLproject").read_text())
    train = project["entry_points"]["train"]
    params = TrainConfig.params()
    assert set(train["parameters"]) == set(params)
    for name, (default, param) in params.items():
        declared = train["parameters"][name]
        assert declared["type"] == MLPROJECT_TYPES.get(param.kind, "string"), name
        assert _as_mlproject(declared["default"]) == _as_mlproject(default), name
        assert f"{option(name)} {{{name}}}" in " ".join(train["command"].split()), name


def _subcommand(name: str):
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[name]


@pytest.mark.parametrize("entry", ["search", "promote", "report", "explain", "evaluate",
                                   "export"])
def test_every_other_entry_point_matches_its_cli_options(entry):
    """Name, type and default of each MLproject parameter against the sub-command's option."""
    declared = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"][entry]
    command = " ".join(declared["command"].split())
    options = {a.dest: a for a in _subcommand(entry)._actions if a.dest != "help"}
    assert set(declared["parameters"]) == set(options), entry
    for name, spec in declared["parameters"].items():
        action = options[name]
        spec = spec if isinstance(spec, dict) else {"type": spec}
        assert f"{option(name)} {{{name}}}" in command, name
        kind = spec.get("type", "string")
        if action.type in (int, float) or getattr(action.type, "__name__", "") == "_int":
            assert kind == ("int" if action.type is not float else "float"), name
        else:
            assert kind in ("string", "uri", "path"), name
        if "default" in spec:
            assert _as_mlproject(spec["default"]) == _as_mlproject(action.default), name
        else:
            assert action.required, f"{entry} {name}: required in MLproject, optional here"

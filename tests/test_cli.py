"""The `leukoml` command itself: version, booleans, and where runs go."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
from helpers import REPO, make_experiment, the_failed_run, write_image

from leukoml import __version__, names
from leukoml.cli import _bool, _int, build_parser


def test_version_is_printed():
    proc = subprocess.run([sys.executable, "-m", "leukoml", "--version"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO / "platform")})
    assert proc.returncode == 0 and proc.stdout.strip() == f"leukoml {__version__}"


@pytest.mark.parametrize("text,value", [("true", True), ("False", False), ("1", True),
                                        ("no", False), (" on ", True)])
def test_booleans_parse_in_every_spelling_mlflow_and_users_use(text, value):
    assert _bool(text) is value


@pytest.mark.parametrize("text", ["maybe", "", "2"])
def test_anything_else_is_not_a_boolean(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected true or false"):
        _bool(text)


def test_ints_accept_mlflows_float_spelling_but_not_fractions():
    assert _int("32") == 32 and _int("32.0") == 32
    with pytest.raises(argparse.ArgumentTypeError):
        _int("32.5")


def test_every_option_has_help_text():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"leukoml {name} {action.option_strings}: no help"


def test_runs_go_to_the_leukoml_experiment_unless_mlflow_is_told_another(tmp_path):
    code = ("import os, sys; from leukoml.cli import main; main(['backbones', '--tier', 'high']);"
            "print(os.environ.get('MLFLOW_EXPERIMENT_NAME'))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_EXPERIMENT")}
    env["PYTHONPATH"] = str(REPO / "platform")
    run = lambda extra: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code], capture_output=True, text=True, env={**env, **extra},
        cwd=tmp_path).stdout.strip().splitlines()[-1]
    assert run({}) == names.DEFAULT_EXPERIMENT
    assert run({"MLFLOW_EXPERIMENT_NAME": "mine"}) == "mine"


@pytest.mark.parametrize(("argv", "message"), [
    (["search", "--data", "/no/such/folder"], "data: folder '/no/such/folder' does not exist"),
    (["train", "--backbone", "NoSuchNet"], "unknown backbone 'NoSuchNet'"),
    (["train", "--data", "{tmp}/one-class"], "needs at least 2 class folders"),
    (["train", "--data", "{tmp}/not-images"], "class folder {tmp}/not-images/b has no readable"),
    (["search", "--data", "{tmp}/not-images"], "class folder {tmp}/not-images/b has no readable"),
])
def test_bad_input_fails_before_any_heavy_import(argv, message, tmp_path):
    """The input check runs before mlflow, optuna, pandas, scikit-learn or TensorFlow is
    imported: a typo costs a second, not the imports a study needs. Before: a one-class or
    non-image folder was found only after TensorFlow was imported (train, ~9 s), or in
    every trial of a study that then exited 0 (search)."""
    for i in range(3):
        write_image(tmp_path / "one-class" / "a" / f"{i}.png")
        write_image(tmp_path / "not-images" / "a" / f"{i}.png")
        (tmp_path / "not-images" / "b").mkdir(exist_ok=True)
        (tmp_path / "not-images" / "b" / f"{i}.png").write_text("not an image")
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    message = message.format(tmp=tmp_path)
    heavy = ("mlflow", "optuna", "pandas", "sklearn", "tensorflow", "keras", "matplotlib")
    code = ("import sys; from leukoml.cli import main\n"
            f"rc = main({argv!r})\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules)); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout.strip() == "[]"


def test_every_sub_command_shows_its_defaults_in_help():
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        text = sub.format_help()
        for action in sub._actions:
            if action.default not in (None, argparse.SUPPRESS) and action.option_strings:
                assert f"(default: {action.default})" in " ".join(text.split()), \
                    f"leukoml {name} {action.option_strings[0]}"


def _leukoml(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO / "platform"), **env}
    return subprocess.run([sys.executable, "-m", "leukoml", *argv], capture_output=True,
                          text=True, env=full, timeout=300)


@pytest.mark.parametrize(("argv", "line"), [
    (["train", "--max_epoch", "2"], "unknown option(s) '--max_epoch' (did you mean '--max-epochs"),
    (["train", "--tta", "dihedal"], "(did you mean 'dihedral'?)"),
    (["trian"], "(did you mean 'train'?)"),
    (["search", "--n-trials", "abc"], "argument --n-trials: expected an int, got 'abc'"),
])
def test_a_bad_argument_is_one_line_naming_the_closest_valid_one(argv, line):
    proc = _leukoml(argv)
    assert proc.returncode == 2
    assert line in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_bad_input_inside_mlflow_run_leaves_its_run_failed_saying_why(tracking_uri, tmp_path):
    """As `mlflow run` does: the run exists (MLFLOW_RUN_ID) before leukoml starts. Before:
    leukoml deleted it, and `mlflow run` crashed ending a deleted run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = make_experiment(tracking_uri, "opened-by-mlflow-run", tmp_path)
    run = client.create_run(experiment)
    proc = _leukoml(["train", "--data", "/no/such/folder"], MLFLOW_RUN_ID=run.info.run_id,
                    MLFLOW_EXPERIMENT_ID=experiment)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    failed = the_failed_run(tracking_uri, experiment, "leukoml train: error: data: folder "
                                                      "'/no/such/folder' does not exist")
    assert failed.info.run_id == run.info.run_id
    # an unknown parameter is named as `mlflow run -P` spells it
    run = client.create_run(experiment)
    proc = _leukoml(["train", "--max_epoch", "2"], MLFLOW_RUN_ID=run.info.run_id)
    assert "unknown parameter(s) 'max_epoch' (did you mean 'max_epochs'?)" in proc.stderr
    assert "max_epochs" in client.get_run(run.info.run_id).data.tags[names.TAG_FAILURE]

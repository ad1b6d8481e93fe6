"""Bad input through the real `mlflow run . -e <entry>`: leukoml's one line, MLflow's one
line, no traceback, a non-zero exit, and the run MLflow opened left FAILED saying why.

Before: leukoml deleted that run and `mlflow run` then crashed ending it (a ~30-line
traceback); `-e explain` with a bad model URI was a 48-line traceback. Every case fails
before TensorFlow is imported, so each costs only `mlflow run`'s own start-up.
"""

from __future__ import annotations

import pytest
from helpers import make_experiment, mlflow_run_args, run_cli, the_failed_run, write_image

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Bad data folders and search spaces, and a SQLite store to run them against."""
    folder = tmp_path_factory.mktemp("bad-input")
    for i in range(3):
        write_image(folder / "one-class" / "neutrophil" / f"{i}.png")
        for name in ("neutrophil", "monocyte"):
            (folder / "not-images" / name).mkdir(parents=True, exist_ok=True)
            (folder / "not-images" / name / f"{i}.png").write_text("not an image")
    (folder / "unknown-key.yaml").write_text("tiers: {low: [Asghar2022CNN]}\nmax_epoch: 2\n")
    (folder / "bad-value.yaml").write_text("tiers: {low: [Asghar2022CNN]}\noptimizer: adamww\n")
    return folder


CASES = {  # id: (entry point, parameters, fragments the message must hold)
    "missing data folder": (
        "train", {"data": "{folder}/no-such-folder"}, ["data: folder", "does not exist"]),
    "one class only": (
        "train", {"data": "{folder}/one-class"}, ["data:", "at least 2 class folders"]),
    "non-image files": (
        "train", {"data": "{folder}/not-images"}, ["data:", "no readable image"]),
    "search over non-image files": (  # before: every trial failed on it, and exit 0
        "search", {"data": "{folder}/not-images"}, ["data: class folder", "no readable image"]),
    "prepare over non-image files": (
        "prepare", {"data": "{folder}/not-images"}, ["data: class folder", "no readable image"]),
    "unknown parameter": (
        "train", {"max_epoch": "2"}, ["'max_epoch' (did you mean 'max_epochs'?)"]),
    "search space unknown key": (
        "search", {"search_space": "{folder}/unknown-key.yaml"},
        ["unknown key(s) 'max_epoch' (did you mean 'max_epochs'?)"]),
    "search space bad value": (
        "search", {"search_space": "{folder}/bad-value.yaml"},
        ["'optimizer': 'adamww' (did you mean 'adamw'?)"]),
    "unreachable storage": (  # before: psycopg2's and SQLAlchemy's lines under leukoml's
        "search", {"storage": "postgresql://leukoml:secret@127.0.0.1:9/optuna"},
        ["cannot open the Optuna storage postgresql://leukoml:***@127.0.0.1:9", "refused"]),
    "n_trials not an int": ("search", {"n_trials": "abc"}, ["--n-trials", "expected an int"]),
    "evaluate bad model_uri": (
        "evaluate", {"model_uri": "models:/no-such-model@champion", "data": "{folder}/one-class"},
        ["model_uri: cannot read model models:/no-such-model@champion"]),
    "explain bad alias": (
        "explain", {"model_uri": "models:/no-such-model@nope", "images": "{folder}/one-class"},
        ["model_uri: cannot read model models:/no-such-model@nope"]),
    "export not a model URI": (
        "export", {"model_uri": "not-a-model"}, ["model_uri: cannot read model not-a-model"]),
    "promote bad run id": ("promote", {"run_id": "abc123"}, ["run_id: no run 'abc123'"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_message_and_a_failed_run_that_says_why(inputs, case):
    entry, params, fragments = CASES[case]
    uri = f"sqlite:///{inputs / 'mlflow.db'}"
    experiment = make_experiment(uri, case, inputs)  # one per case: its runs are all its own
    params = {k: v.format(folder=inputs) for k, v in params.items()}
    proc = run_cli(mlflow_run_args(entry, experiment_id=experiment, **params),
                   env={"MLFLOW_TRACKING_URI": uri}, cwd=inputs, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in output, output[-3000:]
    [message] = [line for line in output.splitlines() if f"leukoml {entry}: error:" in line]
    assert all(fragment in message for fragment in fragments), message
    run = the_failed_run(uri, experiment, *fragments)
    assert f"=== Run (ID '{run.info.run_id}') failed ===" in proc.stderr  # MLflow's one line
    assert "Epoch 1" not in output
    assert len(proc.stderr.strip().splitlines()) <= 5  # MLflow's 2-3 INFO lines, ours, its one

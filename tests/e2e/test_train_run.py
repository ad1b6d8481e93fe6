"""`mlflow run . -e train` for real, checked through MlflowClient."""

from __future__ import annotations

import json
import shlex
import shutil

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from helpers import KAGGLE, make_experiment, run_cli, skip_without_real_data
from leukoml import names

pytestmark = pytest.mark.e2e

EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1",
              "val_balanced_accuracy", names.EPOCH_SECONDS, names.IMAGES_PER_SECOND)


def mlflow_run_train(tracking_uri: str, experiment: str, folder, **params):
    make_experiment(tracking_uri, experiment, folder)
    args = ["mlflow", "run", ".", "-e", "train", "--env-manager", "local",
            "--experiment-name", experiment]
    for key, value in params.items():
        args += ["-P", f"{key}={value}"]
    proc = run_cli(args, env={"MLFLOW_TRACKING_URI": tracking_uri})
    client = MlflowClient(tracking_uri)
    experiment_obj = client.get_experiment_by_name(experiment)
    runs = client.search_runs([experiment_obj.experiment_id]) if experiment_obj else []
    return proc, runs


def _artifacts(client, run_id, path=""):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def check_training_run(client: MlflowClient, run, class_names: list[str], epochs: int):
    params, metrics = run.data.params, run.data.metrics
    for key in ("backbone", "tier", "learning_rate", "batch_size", "patience", "max_epochs",
                "image_size", "weights", "seed", names.DATASET, names.DATASET_FINGERPRINT,
                names.CLASS_NAMES, names.N_TRAIN, names.N_VAL, names.N_TEST, names.PARAM_COUNT):
        assert key in params, key
    assert json.loads(params[names.CLASS_NAMES]) == class_names
    for key in EPOCH_KEYS:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(len(history))), key
        assert 1 <= len(history) <= epochs, key
    for key in names.TEST_SUMMARY:
        assert 0.0 <= metrics[key] <= 1.0
    for kind in ("precision", "recall", "f1"):
        for class_name in class_names:
            assert names.test_per_class(kind, class_name) in metrics
    assert run.data.tags[names.TAG_DEVICE] == "CPU"
    files = _artifacts(client, run.info.run_id)
    for artifact in (names.CONFUSION_PNG, names.CONFUSION_CSV, names.CLASSIFICATION_REPORT,
                     names.SPLIT_SIZES, names.LEAKAGE_REPORT, names.LEAKAGE_SUMMARY):
        assert artifact in files
    gradcams = [f for f in files if f.startswith(f"{names.GRADCAM_DIR}/") and f.endswith(".png")]
    assert len(gradcams) == len(class_names)
    assert run.data.tags[names.TAG_GRADCAM_LAYER]
    assert metrics[names.COPIES_TRAIN_TEST] >= 0 and metrics[names.COPIES_TRAIN_VAL] >= 0
    assert any(f.startswith(f"{names.MODEL_ARTIFACT}/") or f == names.MODEL_ARTIFACT
               for f in files) or client.search_logged_models(
        experiment_ids=[run.info.experiment_id])


def test_train_on_synthetic_data_logs_everything_and_learns(tracking_uri, tmp_path):
    proc, runs = mlflow_run_train(
        tracking_uri, "e2e-train", tmp_path, data="synthetic", backbone="Asghar2022CNN", image_size=64,
        max_epochs=5, learning_rate=0.001, batch_size=32, patience=3)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(runs) == 1
    run = runs[0]
    client = MlflowClient(tracking_uri)
    classes = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    check_training_run(client, run, classes, epochs=5)
    assert run.data.params[names.N_TRAIN] == "700" and run.data.params["tier"] == "low"
    # learnable but not trivial: well above chance (0.2), not perfect
    assert 0.4 <= run.data.metrics[names.TEST_ACCURACY] < 1.0
    assert "test accuracy" in proc.stdout

    model = mlflow.keras.load_model(f"runs:/{run.info.run_id}/{names.MODEL_ARTIFACT}")
    probabilities = model.predict(np.zeros((3, 64, 64, 3), np.float32), verbose=0)
    assert probabilities.shape == (3, 5)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    confusion = client.download_artifacts(run.info.run_id, names.CONFUSION_CSV)
    counts = np.loadtxt(confusion, delimiter=",", skiprows=1, usecols=range(1, 6))
    assert counts.sum() == int(run.data.params[names.N_TEST])


def test_bad_arguments_are_refused_before_training(tracking_uri, tmp_path):
    proc, runs = mlflow_run_train(tracking_uri, "e2e-refused", tmp_path, backbone="ResNet9000")
    assert proc.returncode != 0
    assert "unknown backbone 'ResNet9000'" in proc.stderr, proc.stderr[-3000:]
    assert "MobileNetV3Small" in proc.stderr  # the allowed values are listed
    assert "Epoch 1" not in proc.stdout
    proc, _ = mlflow_run_train(tracking_uri, "e2e-refused", tmp_path, backbone="InceptionV3",
                               image_size=64)
    assert proc.returncode != 0 and "minimum of 75 px" in proc.stderr


@pytest.mark.realdata
def test_train_on_a_sample_of_the_kaggle_set(tracking_uri, tmp_path):
    skip_without_real_data()
    sample = tmp_path / "kaggle-sample"
    for split, per_class in (("TRAIN", 30), ("TEST", 10)):
        for folder in sorted((KAGGLE / split).iterdir()):
            target = sample / split / folder.name
            target.mkdir(parents=True)
            for image in sorted(folder.glob("*.jpeg"))[:per_class]:
                shutil.copy(image, target / image.name)
    proc, runs = mlflow_run_train(
        tracking_uri, "e2e-kaggle", tmp_path, data=str(sample), backbone="Asghar2022CNN", image_size=48,
        max_epochs=2, batch_size=16, group_by=r"^_(\d+)_")
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = runs[0]
    check_training_run(MlflowClient(tracking_uri), run,
                       ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"], epochs=2)
    assert run.data.params[names.N_TEST] == "40"  # the TEST folder, untouched
    # `mlflow run` logs entry-point params shell-quoted
    assert shlex.split(run.data.params[names.GROUP_BY]) == [r"^_(\d+)_"]
    assert "grouped by" in run.data.params[names.SPLIT_SOURCE]
    assert int(run.data.params[names.N_TRAIN]) + int(run.data.params[names.N_VAL]) == 120

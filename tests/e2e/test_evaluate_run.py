"""`mlflow run . -e evaluate` for real: a registered tiny model scored on a 'lab' folder
whose class names differ in case, with a class the model does not know."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
from helpers import REPO, mlflow_run_args, run_cli, sqlite_store, train_tiny
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from leukoml import names
from leukoml.data import resolve_data
from leukoml.registry import promote

pytestmark = pytest.mark.e2e

MODEL = "wbc-evaluate"
LAB_CLASSES = {"EOSINOPHIL": "eosinophil", "Lymphocyte": "lymphocyte", "NEUTROPHIL": "neutrophil",
               "blast": "monocyte"}  # lab folder -> synthetic images it holds; no basophil


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Two tiny trained models (version 1 champion) and a lab folder of unseen renders."""
    folder = tmp_path_factory.mktemp("evaluate")
    with sqlite_store(folder, "evaluate") as store:
        first, _ = train_tiny(store.experiment)
        second, _ = train_tiny(store.experiment, seed=1)
        promote(first, MODEL, force=True, export=())
        promote(second, MODEL, export=())  # version 2, champion or not
        source = resolve_data("synthetic:per_class=12,seed=7,size=48")  # not the training seed
        for lab_name, synthetic in LAB_CLASSES.items():
            shutil.copytree(source / synthetic, folder / "lab" / lab_name)
        yield SimpleNamespace(uri=store.uri, experiment=store.experiment, folder=folder,
                              data=folder / "lab")


def evaluate(lab, *params: str):
    args = mlflow_run_args("evaluate", experiment_id=lab.experiment,
                           **dict(param.split("=", 1) for param in params))
    return run_cli(args, env={"MLFLOW_TRACKING_URI": lab.uri})


def evaluation_runs(lab) -> list:
    client = MlflowClient(lab.uri)
    return client.search_runs([lab.experiment], names.role_filter(names.Role.EVALUATE),
                              run_view_type=ViewType.ALL)


def artifact(lab, run_id: str, path: str):
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                tracking_uri=lab.uri)
    with open(local) as handle:
        return json.load(handle) if path.endswith(".json") else handle.read()


def test_a_lab_folder_is_scored_with_intervals_unknown_classes_apart(lab):
    proc = evaluate(lab, f"model_uri=models:/{MODEL}/1", f"data={lab.data}",
                    f"compare_to=models:/{MODEL}/2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    [run] = [r for r in evaluation_runs(lab) if r.info.status == "FINISHED"]
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    assert tags[names.TAG_EVALUATED_VERSION] == f"{MODEL}/1"
    assert params["n_scored"] == "36" and params["n_unknown_class"] == "12"
    low, high = metrics["external_accuracy_ci_low"], metrics["external_accuracy_ci_high"]
    assert low <= metrics["external_accuracy"] <= high
    assert 0 <= metrics["external_ece"] <= 1
    # the logged per-image table reproduces the logged accuracy
    table = pd.DataFrame(**{k: v for k, v in artifact(
        lab, run.info.run_id, names.EXTERNAL_PREDICTIONS).items() if k in ("columns", "data")})
    known = table[table["true"] != ""]
    assert len(known) == 36
    assert (known["true"] == known["predicted"]).mean() == pytest.approx(
        metrics["external_accuracy"])
    assert set(table.loc[table["true"] == "", "folder_class"]) == {"blast"}
    assert set(known["true"]) == {"eosinophil", "lymphocyte", "neutrophil"}
    summary = artifact(lab, run.info.run_id, names.EXTERNAL_SUMMARY)
    assert summary["missing_classes"] == ["basophil", "monocyte"]
    assert summary["class_mapping"]["blast"] is None
    verdict = tags[names.TAG_VERDICT]
    assert "External accuracy" in verdict and "blast" in verdict and "basophil" in verdict
    compared = summary["comparison"]
    assert compared["images"] == 36 and 0 <= compared["mcnemar_p_value"] <= 1
    acc = compared["accuracy"]
    assert acc["first"] == pytest.approx(metrics["external_accuracy"])
    assert acc["ci_low"] <= acc["difference"] <= acc["ci_high"]
    assert compared["summary"] in proc.stdout
    # the metrics sit on the evaluated logged model too (MLflow 3 model page)
    client = MlflowClient(lab.uri)
    source = client.get_model_version(MODEL, "1").source  # models:/<logged model id>
    logged = client.get_logged_model(source.removeprefix("models:/"))
    assert any(m.key == "external_accuracy" and m.run_id == run.info.run_id
               for m in logged.metrics)
    listed = {a.path for a in MlflowClient(lab.uri).list_artifacts(run.info.run_id, "external")}
    assert {names.EXTERNAL_CONFUSION_PNG, names.EXTERNAL_RELIABILITY_PNG,
            names.EXTERNAL_UNKNOWN_CSV} <= listed


def test_a_folder_sharing_no_class_with_the_model_stops_before_scoring(lab, tmp_path):
    other = tmp_path / "other-lab"
    for name in ("blast", "plasma"):
        shutil.copytree(lab.data / "blast", other / name)
    before = len(evaluation_runs(lab))
    proc = evaluate(lab, f"model_uri=models:/{MODEL}/1", f"data={other}")
    assert proc.returncode != 0
    assert "folder: blast, plasma" in proc.stderr
    assert "model:  basophil, eosinophil, lymphocyte, monocyte, neutrophil" in proc.stderr
    assert "evaluating" not in proc.stdout  # stopped before any model was loaded
    opened = re.search(r"Run \(ID '(\w+)'\) failed", proc.stderr)[1]  # MLflow's one line
    run = MlflowClient(lab.uri).get_run(opened)  # left FAILED, saying why
    assert run.info.status == "FAILED" and "folder: blast" in run.data.tags[names.TAG_FAILURE]
    assert len(evaluation_runs(lab)) == before


def test_an_unreadable_model_uri_fails_naming_it_without_loading_tensorflow(lab):
    code = ("import sys; from leukoml.cli import main; "
            f"rc = main(['evaluate', '--model-uri', 'models:/{MODEL}@nosuchalias', "
            f"'--data', '{lab.data}']); "
            "print('tensorflow' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"MLFLOW_TRACKING_URI": lab.uri, "PYTHONPATH": str(REPO / "platform"),
                               "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"models:/{MODEL}@nosuchalias" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"

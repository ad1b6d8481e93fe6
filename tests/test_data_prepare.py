"""`leukoml prepare`: one run holding the dataset card; bad input stops before any run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from leukoml import names
from leukoml.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_prepare_logs_a_dataset_card(make_dataset_folder, tracking_uri, capsys):
    import mlflow

    root = make_dataset_folder({"a": 12, "b": 9})
    assert main(["prepare", "--data", str(root), "--image-size", "32", "--crop", "none"]) == 0
    runs = mlflow.search_runs(filter_string=names.role_filter(names.Role.PREPARE),
                              output_format="list")
    assert len(runs) == 1
    run = runs[0]
    card = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{names.DATASET_CARD}")
    assert card["images"] == 21 and card["classes"] == ["a", "b"]
    counts = card["images_per_class_and_split"]
    assert sum(n for split in counts.values() for n in split.values()) == 21
    assert set(card["seconds"]) == {"listing", "decode", "copies", "siblings", "split"}
    assert run.data.metrics[names.DATA_IMAGES] == 21
    assert run.data.metrics[names.prepare_seconds("decode")] > 0
    assert "reuse this index" in capsys.readouterr().out
    # the second time everything comes from the cache
    assert main(["prepare", "--data", str(root), "--image-size", "32", "--crop", "none"]) == 0
    again = mlflow.search_runs(filter_string=names.role_filter(names.Role.PREPARE),
                               order_by=["attributes.start_time DESC"], output_format="list")[0]
    assert again.data.metrics[names.prepare_seconds("decode")] == 0
    assert again.data.metrics[names.prepare_seconds("siblings")] == 0


@pytest.mark.parametrize("kind", ["missing", "empty", "not images"])
def test_prepare_refuses_a_folder_without_images_before_any_run(kind, tmp_path):
    folder = tmp_path / "data"
    if kind != "missing":
        folder.mkdir()
    if kind == "not images":
        for name in ("a", "b"):
            (folder / name).mkdir()
            (folder / name / "notes.txt").write_text("not an image")
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("MLFLOW_RUN_ID", None)
    code = ("import sys; from leukoml.cli import main\n"
            f"rc = main(['prepare', '--data', {str(folder)!r}])\n"
            "print('mlflow' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and str(folder) in errors[0]
    assert proc.stdout.strip() == "False"  # stopped before MLflow: no run, no store
    assert not (tmp_path / "mlflow.db").exists()
    assert not list(Path(os.environ["LEUKOML_CACHE_DIR"]).glob("decoded/*.tmp-*"))

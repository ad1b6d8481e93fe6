"""Shared fixtures: an isolated cache and MLflow store per session, tiny datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import make_experiment, write_image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """One decode cache and synthetic render per test session, never the user's."""
    cache = tmp_path_factory.mktemp("leukoml-cache")
    old = os.environ.get("LEUKOML_CACHE_DIR")
    os.environ["LEUKOML_CACHE_DIR"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("LEUKOML_CACHE_DIR", None)
    else:
        os.environ["LEUKOML_CACHE_DIR"] = old


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store (registry-capable) for one test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    # in-process runs go to an experiment whose artifacts stay in tmp_path
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", make_experiment(uri, "tests", tmp_path))
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def make_dataset_folder(tmp_path):
    """Factory: {class: n_images} (optionally under split folders) -> dataset root."""

    def make(classes: dict[str, int], split: str | None = None, root: Path | None = None) -> Path:
        root = root or tmp_path / "dataset"
        base = root / split if split else root
        for name, n in classes.items():
            for i in range(n):
                write_image(base / name / f"{name}_{i:03d}.png")
        return root

    return make

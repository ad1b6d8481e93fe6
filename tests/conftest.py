"""Shared fixtures: an isolated cache and MLflow store per session, tiny datasets."""

from __future__ import annotations

import os
import subprocess
import zlib
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("LEUKOML_REAL_DATA", REPO.parent / "shared" / "data"))
KAGGLE = REAL_DATA / "kaggle-blood-cells"

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
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def write_image(path: Path, pixels: np.ndarray | None = None, size=(40, 40), **save_args) -> Path:
    """Write a small RGB image (random pixels unless given) in the format of its suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is None:
        rng = np.random.default_rng(zlib.crc32(path.name.encode()))
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save_args)
    return path


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


def skip_without_real_data():
    if not KAGGLE.is_dir():
        pytest.skip(f"real data not present at {KAGGLE}")


def run_cli(args: list[str], cwd: Path = REPO, env: dict | None = None, timeout: int = 900):
    """Run a command (e.g. `mlflow run ...`) and return the CompletedProcess; fail with its output."""
    full_env = {**os.environ, **(env or {})}
    bin_dir = str(Path(sys.executable).parent)
    full_env["PATH"] = bin_dir + os.pathsep + full_env.get("PATH", "")
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    return proc

"""Helpers shared by tests at any depth (on sys.path via pytest's `pythonpath`)."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("LEUKOML_REAL_DATA", REPO.parent / "shared" / "data"))
KAGGLE = REAL_DATA / "kaggle-blood-cells"


def write_image(path: Path, pixels: np.ndarray | None = None, size=(40, 40), **save_args) -> Path:
    """Write a small RGB image (random pixels unless given) in the format of its suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is None:
        rng = np.random.default_rng(zlib.crc32(path.name.encode()))
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save_args)
    return path


def skip_without_real_data():
    if not KAGGLE.is_dir():
        pytest.skip(f"real data not present at {KAGGLE}")


def make_experiment(tracking_uri: str, name: str, folder: Path) -> str:
    """An experiment whose artifacts live in `folder` (not in ./mlruns of the checkout)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=(folder / "artifacts").as_uri())


def run_cli(args: list[str], cwd: Path = REPO, env: dict | None = None, timeout: int = 900):
    """Run a command (e.g. `mlflow run ...`) with this venv first on PATH; return the result."""
    # the in-process test experiment is not the subprocess's (it names its own)
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_ID"}
    full_env.update(env or {})
    full_env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + full_env.get("PATH", "")
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)

"""The one-way imports of pyproject.toml's `[tool.importlinter]` contract, run for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(project: Path, source_root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` in `project` (its pyproject.toml), importing leukoml from `source_root`."""
    env = {**os.environ, "PYTHONPATH": str(source_root), "COLUMNS": "200"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_layers():
    result = _lint_imports(REPO, REPO / "platform")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def _copy(tmp_path: Path) -> Path:
    """A copy of the package and of pyproject.toml in `tmp_path`; its package folder."""
    shutil.copytree(REPO / "platform" / "leukoml", tmp_path / "platform" / "leukoml",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path / "platform" / "leukoml"


@pytest.mark.parametrize(("module", "wrong_import", "broken"), [
    ("data/spec.py", "import leukoml.training", "leukoml.data.spec -> leukoml.training"),
    ("serving/export.py", "import leukoml.explain", "leukoml.serving.export -> leukoml.explain"),
])
def test_a_wrong_import_breaks_the_contract(tmp_path, module, wrong_import, broken):
    """An upward import (data -> training), and one between modules of one layer that must
    not know each other (serving | explain), each added to a copy of the package."""
    with (_copy(tmp_path) / module).open("a") as source:
        source.write(f"\n{wrong_import}  # the wrong import\n")

    result = _lint_imports(tmp_path, tmp_path / "platform")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 1 broken" in result.stdout
    assert broken in result.stdout


def test_a_new_module_outside_every_layer_breaks_the_contract(tmp_path):
    (_copy(tmp_path) / "stray.py").write_text('"""A module nobody placed."""\n')

    result = _lint_imports(tmp_path, tmp_path / "platform")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not listed as layers" in result.stdout and "leukoml.stray" in result.stdout

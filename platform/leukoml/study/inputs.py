"""What a study needs that can be wrong, checked before any MLflow run, Optuna trial
or TensorFlow import: a bad `--data` fails in about a second, not after the
imports a study needs (mlflow, optuna, matplotlib), and leaves no run behind.
And which shipped search space a study runs when it is given none.
"""

from __future__ import annotations

import os
from pathlib import Path

from leukoml.study.space import SearchSpace

AUTO_SPACE = "auto"  # --search-space: pick a shipped space from the data and the machine
_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per card the driver sees


def _gpu_visible() -> bool:
    """An NVIDIA card the driver lists and CUDA_VISIBLE_DEVICES does not hide (read from
    the system: TensorFlow takes seconds to import and is not needed yet)."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1")
    return not hidden and _NVIDIA_GPUS.is_dir() and any(_NVIDIA_GPUS.iterdir())


def pick_search_space(data: str, folder: Path) -> tuple[Path, str]:
    """The shipped space (in `folder`) for `data`, and why: smoke.yaml for the synthetic
    set, else default.yaml with a GPU and cpu.yaml without one."""
    from leukoml.data import parse_synthetic

    if parse_synthetic(str(data).strip()) is not None:
        return folder / "smoke.yaml", "synthetic data: the quick study"
    if _gpu_visible():
        return folder / "default.yaml", "real data and a GPU: every tier, ImageNet weights"
    return folder / "cpu.yaml", ("real data and no GPU: small networks from scratch, "
                                 "a 90-minute budget")


def check_search_inputs(space: SearchSpace, data: str, storage: str | None) -> None:
    """The data folder (listed, one readable image per class), its grouping, then the
    storage URL. Raises one `LeukomlError`."""
    from leukoml.data import DataSpec, check_source

    check_source(DataSpec(source=data, seed=space.seed,
                          group_by=space.split.get("group_by") or "siblings",
                          follow_links=bool(space.value("follow_links"))))
    from leukoml.study.storage import open_storage  # optuna and SQLAlchemy: after the data

    open_storage(storage)  # unreachable: fails here, naming the URL

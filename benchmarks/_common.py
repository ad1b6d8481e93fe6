"""What every benchmark script shares: the machine it ran on, and where results go."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
KAGGLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "kaggle-blood-cells"


def machine() -> dict[str, object]:
    """CPU, cores, load and library versions: figures mean nothing without them."""
    import mlflow
    import optuna
    import tensorflow as tf

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU")),
            "platform": platform.platform(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "mlflow": mlflow.__version__,
            "optuna": optuna.__version__, "load_average_1m_at_start": os.getloadavg()[0]}


def write_result(name: str, result: dict) -> Path:
    """benchmarks/results/<name>.json, with the end-of-run load average added."""
    result = {**result, "load_average_1m_at_end": os.getloadavg()[0]}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    return path


def print_table(rows: list[dict], columns: list[tuple]) -> None:
    """Print `rows` aligned under `columns`: (header, key) or (header, key, format spec).

    A row without a column's key gets a blank cell (a reference figure, say)."""
    headers = [column[0] for column in columns]
    cells = [[format(row[column[1]], column[2] if len(column) > 2 else "")
              if column[1] in row else "" for column in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for values in (headers, *cells):  # the first column is a label: left-aligned
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                        for i, (v, w) in enumerate(zip(values, widths))))

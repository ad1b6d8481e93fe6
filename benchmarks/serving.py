"""Serving speed: a real `mlflow models serve` over HTTP vs in-process `predict`, same model.

Times sequential 1-image and 32-image requests (base64 PNG files of the
synthetic set, the request form of `leukoml.serving`): requests/s, images/s,
p50/p95 latency. Without `--model-uri` it trains a tiny model first (in a
temporary MLflow store). Prints a table and writes
`benchmarks/results/serving.json` with the machine it ran on.

    python benchmarks/serving.py [--model-uri models:/wbc-classifier@champion]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests
from _common import machine, print_table, write_result

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # one free-port, server and tiny-run helper for all
from helpers import find_free_port, server_process, train_tiny  # noqa: E402


def request_images(n: int) -> list[str]:
    """Base64 of `n` PNG files of the synthetic set (96 px)."""
    from leukoml.data import resolve_data

    files = sorted(resolve_data("synthetic").rglob("*.png"))[:n]
    return [base64.b64encode(f.read_bytes()).decode() for f in files]


def timed(call, n: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        call()
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"requests": n, "requests_per_s": n / total, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", help="a leukoml serving model (default: train a tiny one)")
    parser.add_argument("--image-size", type=int, default=64, help="for the tiny model")
    parser.add_argument("--requests", type=int, default=200, help="1-image requests to time")
    parser.add_argument("--batch-requests", type=int, default=40, help="32-image requests")
    args = parser.parse_args()

    import mlflow

    workdir = Path(tempfile.mkdtemp(prefix="leukoml-bench-"))
    info = machine()
    model_uri = args.model_uri
    if not model_uri:  # a throw-away store, shared with the server through the env
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        experiment = mlflow.create_experiment("serving-benchmark",
                                              (workdir / "artifacts").as_uri())
        model_uri = train_tiny(experiment, image_size=args.image_size, max_epochs=1,
                               tta="none")[1].model_uri
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    model = pyfunc.unwrap_python_model()
    images = request_images(32)
    port = find_free_port()
    rows = []
    with server_process(["mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                         "local", "-p", str(port), "--host", "127.0.0.1"], "/ping", port,
                        workdir / "serve.log", timeout=300) as url:
        session = requests.Session()
        for batch, n in ((1, args.requests), (32, args.batch_requests)):
            payload = {"dataframe_split": {"columns": ["image"],
                                           "data": [[i] for i in images[:batch]]}}
            frame = pd.DataFrame({"image": images[:batch]})

            def over_http(payload=payload):
                response = session.post(f"{url}/invocations", json=payload, timeout=120)
                response.raise_for_status()

            def in_process(frame=frame):
                pyfunc.predict(frame)

            for where, call in (("mlflow models serve (HTTP)", over_http),
                                ("in-process predict", in_process)):
                result = timed(call, n)
                rows.append({"where": where, "images_per_request": batch, **result,
                             "images_per_s": result["requests_per_s"] * batch})

    shutil.rmtree(workdir)  # kept on failure: the server log is there
    report = {"machine": info,
              "model": args.model_uri or "1-epoch model trained for this run (throw-away store)",
              "backbone": model.backbone,
              "image_size": model.image_size, "request_image": "96x96 PNG, base64",
              "concurrency": 1, "results": rows}
    path = write_result("serving", report)
    print(f"\n{info['cpu']}, {info['cores']} cores, load average "
          f"{info['load_average_1m_at_start']:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"{model.backbone} at {model.image_size} px, sequential requests\n")
    print_table(rows, [("where", "where"), ("imgs/req", "images_per_request"),
                       ("req/s", "requests_per_s", ".1f"), ("imgs/s", "images_per_s", ".1f"),
                       ("p50 ms", "p50_ms", ".1f"), ("p95 ms", "p95_ms", ".1f")])
    print(f"\nwritten to {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()

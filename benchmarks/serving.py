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
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests
from _common import machine, print_table, write_result

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))


def train_tiny_model(image_size: int) -> str:
    """A 1-epoch Asghar2022CNN on the synthetic set, logged with its serving pyfunc."""
    import mlflow

    from leukoml.config import TrainConfig
    from leukoml.data import prepare_dataset
    from leukoml.serving import log_serving_model
    from leukoml.training import train_and_log

    config = TrainConfig(image_size=image_size, max_epochs=1, augment="none")
    data = prepare_dataset(config.data, image_size, seed=config.seed)
    with mlflow.start_run() as run:
        train_and_log(config, data)
    return log_serving_model(run.info.run_id)


def request_images(n: int) -> list[str]:
    """Base64 of `n` PNG files of the synthetic set (96 px)."""
    from leukoml.data import resolve_data

    files = sorted(resolve_data("synthetic").rglob("*.png"))[:n]
    return [base64.b64encode(f.read_bytes()).decode() for f in files]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_uri: str, port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
             "-p", str(port), "--host", "127.0.0.1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow models serve exited; see {log_path}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"mlflow models serve not up after 300 s; see {log_path}")


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


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
    if not args.model_uri:  # a throw-away store, shared with the server through the env
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        mlflow.set_experiment(experiment_id=mlflow.create_experiment(
            "serving-benchmark", (workdir / "artifacts").as_uri()))
    info = machine()
    model_uri = args.model_uri or train_tiny_model(args.image_size)
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    model = pyfunc.unwrap_python_model()
    images = request_images(32)
    port = free_port()
    server = start_server(model_uri, port, workdir / "serve.log")
    rows = []
    try:
        session = requests.Session()
        for batch, n in ((1, args.requests), (32, args.batch_requests)):
            payload = {"dataframe_split": {"columns": ["image"],
                                           "data": [[i] for i in images[:batch]]}}
            frame = pd.DataFrame({"image": images[:batch]})

            def over_http(payload=payload):
                response = session.post(f"http://127.0.0.1:{port}/invocations", json=payload,
                                        timeout=120)
                response.raise_for_status()

            def in_process(frame=frame):
                pyfunc.predict(frame)

            for where, call in (("mlflow models serve (HTTP)", over_http),
                                ("in-process predict", in_process)):
                result = timed(call, n)
                rows.append({"where": where, "images_per_request": batch, **result,
                             "images_per_s": result["requests_per_s"] * batch})
    finally:
        stop_server(server)

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

"""Fixtures for end-to-end tests that drive real MLflow processes.

`model_server` starts a real `mlflow models serve` subprocess on loopback
and always stops its whole process group (the CLI runs uvicorn in a child,
which must not outlive the test); `free_port` finds a port for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import find_free_port, server_process

SERVE_START_TIMEOUT = 240  # seconds: TensorFlow import and model load on a busy 2-core box


@contextmanager
def serve_model(
    model_uri: str, log_path: Path, env: dict[str, str] | None = None, port: int | None = None,
    timeout: float = SERVE_START_TIMEOUT,
) -> Iterator[str]:
    """Run `mlflow models serve -m model_uri --env-manager local`; yield its base URL.

    `env` is added to this process's environment (set MLFLOW_TRACKING_URI for
    `models:/` URIs). The server's output goes to `log_path`, quoted on failure.
    """
    port = port or find_free_port()
    command = ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "-p", str(port), "--host", "127.0.0.1"]
    with server_process(command, "/ping", port, log_path, timeout, env) as url:
        yield url


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 when the test starts."""
    return find_free_port()


@pytest.fixture(scope="session")
def model_server():
    """`serve_model`: `with model_server(uri, log_path, env={...}) as url: ...`."""
    return serve_model


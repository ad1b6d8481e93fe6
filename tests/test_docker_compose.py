"""docker/docker-compose.yml holds together, checked without a Docker engine.

Every service, volume, network and ${VAR} it names exists; the images build from
Dockerfiles that exist; the worker runs the search entry point with parameters
MLproject declares; no secret is written in the compose file or a URL.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from helpers import REPO, skip_outside_ci

DOCKER = REPO / "docker"
COMPOSE_TEXT = (DOCKER / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
# ${VAR}, ${VAR:-default}, ${VAR:?message}; $$ escapes a dollar for the container's shell
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    values = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=value: {line!r}"
            values[key.strip()] = value.strip()
    return values


def interpolate(value: str, env: dict[str, str]) -> str:
    """What compose makes of `value` with the variables of .env.example."""
    return VARIABLE.sub(lambda m: env[m.group(1)], value).replace("$$", "$")


def as_list(value) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value or [])


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each short-syntax volume entry."""
    return [tuple(entry.split(":")[:2]) for entry in service.get("volumes", [])]


def test_every_variable_is_defined_in_env_example_and_every_one_there_is_used():
    used = {m.group(1) for m in VARIABLE.finditer(COMPOSE_TEXT)}
    defined = env_example()
    assert used - defined.keys() == set(), "referenced but not in docker/.env.example"
    assert defined.keys() - used == set(), "in docker/.env.example but never used"


def test_services_volumes_and_networks_referenced_exist():
    volumes, networks = set(COMPOSE["volumes"]), set(COMPOSE["networks"])
    assert {"postgres", "mlflow", "setup", "worker", "serve"} <= set(SERVICES)
    for name, service in SERVICES.items():
        assert set(service.get("networks", [])) <= networks, name
        assert service.get("networks"), f"{name} is on no network"
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
        for source, _ in mounts(service):
            if source.startswith(("./", "../", "/")):
                assert (DOCKER / source).exists(), f"{name} mounts missing {source}"
            elif not source.startswith("$"):
                assert source in volumes, f"{name} mounts undeclared volume {source}"


def test_images_build_from_dockerfiles_that_exist():
    built = {}
    for name, service in SERVICES.items():
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            dockerfile = context / service["build"].get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: no {dockerfile}"
            built[service["image"]] = dockerfile
        else:
            assert "image" in service, name
    # the worker image is shared by setup and serve; the server has its own
    assert SERVICES["setup"]["image"] == SERVICES["serve"]["image"] == SERVICES["worker"]["image"]
    assert built[SERVICES["worker"]["image"]] == DOCKER / "Dockerfile"
    for line in (DOCKER / "Dockerfile").read_text().splitlines():  # what the image copies
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies missing {source}"


def entrypoint(dockerfile: Path) -> list[str]:
    lines = [line for line in dockerfile.read_text().splitlines() if line.startswith("ENTRYPOINT")]
    return json.loads(lines[-1].removeprefix("ENTRYPOINT"))


WORKER_SCRIPT = DOCKER / "worker-entrypoint.sh"


def test_the_worker_runs_the_search_entry_point_with_declared_parameters():
    env = env_example()
    worker = SERVICES["worker"]
    assert entrypoint(DOCKER / "Dockerfile") == ["leukoml-worker"]
    assert "COPY docker/worker-entrypoint.sh /usr/local/bin/leukoml-worker" in (
        DOCKER / "Dockerfile").read_text()
    *run, args = shlex.split(WORKER_SCRIPT.read_text().strip().splitlines()[-1])
    assert run == ["exec", "mlflow", "run", ".", "-e", "search", "--env-manager", "local"]
    assert args == "$@"
    argv = run[1:] + [interpolate(a, env) for a in worker["command"]]
    params = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-P")
    declared = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["search"]
    assert set(params) <= set(declared["parameters"])
    assert {"storage", "study_name", "data", "model_name"} <= set(params)
    storage = urlsplit(params["storage"])
    assert storage.scheme == "postgresql" and storage.hostname == "postgres"
    assert storage.password is None  # -P values are logged as MLflow run params
    assert (REPO / params["search_space"]).is_file()
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    # all GPUs: the replicas share them out themselves (Compose cannot, per replica)
    assert [(d["driver"], d["count"], d["capabilities"]) for d in devices] == [
        ("nvidia", "all", ["gpu"])]
    assert ("cache", "/cache") in mounts(worker)  # where the GPU locks live
    assert worker["depends_on"]["setup"]["condition"] == "service_completed_successfully"


def test_the_tracking_server_keeps_runs_in_postgres_and_serves_artifacts():
    env = env_example()
    server = SERVICES["mlflow"]
    args = [interpolate(a, env) for a in server["command"]]
    assert "--serve-artifacts" in args
    destination = next(a.split("=", 1)[1] for a in args if a.startswith("--artifacts-destination"))
    assert destination in {target for source, target in mounts(server) if source in COMPOSE["volumes"]}
    backend = urlsplit(interpolate(server["environment"]["MLFLOW_BACKEND_STORE_URI"], env))
    assert backend.scheme == "postgresql+psycopg2" and backend.password is None
    assert entrypoint(DOCKER / "mlflow.Dockerfile") == ["mlflow", "server"]
    # the server answers the Host header the workers send (it refuses unknown hosts)
    allowed = next(a.split("=", 1)[1] for a in args if a.startswith("--allowed-hosts")).split(",")
    tracking = urlsplit(SERVICES["worker"]["environment"]["MLFLOW_TRACKING_URI"])
    assert tracking.hostname == "mlflow" and "mlflow" in SERVICES
    assert any(fnmatch.fnmatch(tracking.netloc, pattern) for pattern in allowed)


@pytest.mark.parametrize("name", ["postgres", "mlflow", "worker"])
def test_secrets_come_from_the_env_file(name):
    for key, value in SERVICES[name].get("environment", {}).items():
        if "PASSWORD" in key:
            assert VARIABLE.fullmatch(value), f"{name}: {key} is not a ${{VAR}} reference"
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "docker/.env" in ignored


def test_workers_of_one_host_take_a_gpu_each(tmp_path):
    """The worker entry point with stand-ins for nvidia-smi (two GPUs) and mlflow."""
    if not shutil.which("flock"):
        skip_outside_ci("flock (util-linux) not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: A'\necho 'GPU 1: B'\n")
    (bin_dir / "mlflow").write_text(
        '#!/bin/sh\necho "gpu=${CUDA_VISIBLE_DEVICES:-none} args=$*"\nsleep 3\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "LEUKOML_CACHE_DIR": str(tmp_path)}
    workers = [subprocess.Popen(["sh", str(WORKER_SCRIPT), "-P", f"study_name=s{i}"],
                                env=env, stdout=subprocess.PIPE, text=True) for i in range(3)]
    out = sorted(p.communicate(timeout=30)[0].split()[0] for p in workers)
    assert out == ["gpu=0", "gpu=1", "gpu=none"]  # the third shares them: no GPU left
    again = subprocess.run(["sh", str(WORKER_SCRIPT), "-P", "x=1"], env=env, text=True,
                           capture_output=True, timeout=30)
    assert again.stdout.startswith("gpu=0 args=run . -e search --env-manager local -P x=1")

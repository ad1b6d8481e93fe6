"""Helpers shared by tests at any depth (on sys.path via pytest's `pythonpath`)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import NoReturn, TypeVar

import numpy as np
import pytest
from PIL import Image

T = TypeVar("T")
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


def skip_outside_ci(reason: str) -> NoReturn:
    """Skip for `reason` (a part this machine lacks), except in CI (CI=true; .ci/run sets
    it), which installs every part: there a skip would hide a missing one, so it fails."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}, and CI must have it")
    pytest.skip(reason)


def skip_unless_shared(present: bool, what: str) -> None:
    """Skip when something of ../shared is missing (a failure in CI, which has it)."""
    if not present:
        skip_outside_ci(f"{what} not present")


def skip_without_real_data():
    skip_unless_shared(KAGGLE.is_dir(), f"real data at {KAGGLE}")


def make_experiment(tracking_uri: str, name: str, folder: Path) -> str:
    """An experiment whose artifacts live in `folder` (not in ./mlruns of the checkout)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=(folder / "artifacts").as_uri())


def mlflow_run_args(entry: str, experiment: str = "", experiment_id: str = "",
                    **params) -> list[str]:
    """`mlflow run <repo> -e <entry>` in this environment, into an experiment given by name
    or id, with every keyword as `-P key=value`."""
    args = ["mlflow", "run", str(REPO), "-e", entry, "--env-manager", "local"]
    args += ["--experiment-id", experiment_id] if experiment_id else [
        "--experiment-name", experiment]
    for key, value in params.items():
        args += ["-P", f"{key}={value}"]
    return args


def the_failed_run(tracking_uri: str, experiment_id: str, *reason: str):
    """The one run `experiment_id` holds, deleted ones included: FAILED, with the reason
    (every fragment of `reason`) as tag `leukoml.failure` and in `error.txt`, and the
    experiment tagged for the MLflow UI. Bad input through `mlflow run` leaves exactly that."""
    import mlflow
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from leukoml import names

    client = MlflowClient(tracking_uri)
    [run] = client.search_runs([experiment_id], run_view_type=ViewType.ALL)
    assert (run.info.status, run.info.lifecycle_stage) == ("FAILED", "active")
    failure = run.data.tags[names.TAG_FAILURE]
    assert all(fragment in failure for fragment in reason), failure
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, tracking_uri=tracking_uri,
                                                artifact_path=names.ERROR_TXT)
    assert Path(local).read_text().strip() == failure
    kind = client.get_experiment(experiment_id).tags.get(names.TAG_EXPERIMENT_KIND)
    assert kind == names.EXPERIMENT_KIND
    return run


def run_cli(args: list[str], cwd: Path = REPO, env: dict | None = None, timeout: int = 900):
    """Run a command (e.g. `mlflow run ...`) with this venv first on PATH; return the result."""
    # the in-process test experiment is not the subprocess's (it names its own)
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_ID"}
    full_env.update(env or {})
    full_env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + full_env.get("PATH", "")
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file ("" if there is none)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def group_alive(proc: subprocess.Popen) -> bool:
    """Whether any process of `proc`'s process group (started with a new session) lives."""
    proc.poll()  # reap the leader if it exited, so a zombie does not count
    try:
        os.killpg(proc.pid, 0)
        return True
    except ProcessLookupError:
        return False


def poll(check: Callable[[], T], timeout: float, interval: float = 0.5) -> T | None:
    """`check()` every `interval` s until it returns something truthy, which is returned;
    None after `timeout` s. Only for the state of another process (a server coming up, a
    run logging, a process group dying), which sends this one no event to wait on."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


def stop_process_group(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the process group of `proc`; SIGKILL whatever is left after `grace` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not group_alive(proc):
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        poll(lambda: not group_alive(proc), grace, interval=0.2)
    proc.wait(5)


def start_together(script: str, argvs: list[list[str]], folder: Path,
                   env: dict[str, str]) -> list[tuple[str, str]]:
    """Run one `python -c script` per argv, released at once; (stdout, stderr) of each.

    Each racer prints "ready" when its imports are done, then waits for a line on stdin;
    all are sent theirs once all are ready: a barrier across processes, however slowly
    each starts. stderr goes to a file, so a chatty import cannot fill a pipe nobody reads.
    """
    racers = []
    for i, argv in enumerate(argvs):
        err = folder / f"racer{i}.err"
        with open(err, "w") as sink:
            racers.append((subprocess.Popen(
                [sys.executable, "-c", script, *argv], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=sink, text=True, env=env), err))
    for proc, err in racers:
        if proc.stdout.readline().strip() != "ready":
            proc.wait(60)
            pytest.fail(f"a racer ended before the start:\n{tail(err)}")
    for proc, _ in racers:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc, err in racers:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, tail(err)
        results.append((out, err.read_text()))
    return results


def find_free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


@dataclass
class PostgresServer:
    port: int

    def url(self, database: str = "postgres") -> str:
        # trust auth: the password is ignored, but shows that URLs are masked in messages
        return f"postgresql://postgres:secret@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name`; return its URL."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL server on a free loopback port.

    Skips where the binaries are missing, except in CI, which installs them (see
    `skip_outside_ci`); fails if they are there but the server does not start.
    initdb refuses to run as root, so as root the server runs as the `postgres`
    user, in a folder under the system temp dir (pytest's tmp_path is root-only).
    """
    bin_dir = postgres_bin()
    if bin_dir is None:
        skip_outside_ci("PostgreSQL binaries (initdb, pg_ctl) not found")
    initdb, pg_ctl = str(bin_dir / "initdb"), str(bin_dir / "pg_ctl")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            skip_outside_ci("running as root without runuser to start PostgreSQL as postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="leukoml-pg-"))
    if as_user:
        shutil.chown(folder, "postgres", "postgres")
    port = find_free_port()
    data = folder / "data"
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log = folder / "log"
        detail = (exc.stderr or b"").decode(errors="replace")[-2000:]
        detail += log.read_text(errors="replace")[-2000:] if log.exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"cannot start a PostgreSQL server with {bin_dir}: {exc}\n{detail}")
    try:
        yield PostgresServer(port)
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def server_process(
    command: list[str], health_path: str, port: int, log_path: Path, timeout: float,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Start `command` (a server on 127.0.0.1:`port`) with this venv first on PATH and
    `env` added; yield its URL once `health_path` answers 200; always stop its whole
    process group (MLflow's CLIs run uvicorn/gunicorn in children). Output goes to
    `log_path`, quoted when the server exits or never comes up."""
    import requests

    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + full_env.get("PATH", "")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    name = " ".join(command[:3])

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited ({proc.returncode}):\n{tail(log_path)}")
        try:
            return requests.get(f"{url}{health_path}", timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # not listening, or still booting
            return False

    try:
        if not poll(up, timeout):
            pytest.fail(f"{name} not up after {timeout} s:\n{tail(log_path)}")
        yield url
    finally:
        stop_process_group(proc)


def tracking_server(backend_store_uri: str, artifacts: Path, log_path: Path, timeout: float = 180):
    """Run `mlflow server` (serving artifacts from `artifacts`) on loopback; yield its URL."""
    port = find_free_port()
    command = ["mlflow", "server", "--backend-store-uri", backend_store_uri,
               "--artifacts-destination", str(artifacts), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    return server_process(command, "/health", port, log_path, timeout)


@contextmanager
def sqlite_store(folder: Path, experiment_name: str) -> Iterator[SimpleNamespace]:
    """A SQLite tracking store in `folder`, made the current one (env and mlflow), with an
    experiment whose artifacts stay in `folder`; yields (uri, experiment, folder)."""
    import mlflow

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            experiment = make_experiment(uri, experiment_name, folder)
            yield SimpleNamespace(uri=uri, experiment=experiment, folder=folder)
        finally:
            mlflow.set_tracking_uri(None)


# A run small enough for any test: the paper's CNN at 32 px on the synthetic cells.
TINY = {"backbone": "Asghar2022CNN", "learning_rate": "0.001", "image_size": 32,
        "max_epochs": 2, "augment": "none", "crop": "none", "tta": "flips"}


def train_tiny(experiment_id: str, **overrides):
    """Train a tiny model in process in a new run of `experiment_id`; (run id, TrainResult)."""
    import mlflow

    from leukoml.config import TrainConfig
    from leukoml.data import prepare_dataset
    from leukoml.training import train_and_log

    config = TrainConfig(**{**TINY, **overrides})
    data = prepare_dataset(config.data_spec())
    with mlflow.start_run(experiment_id=experiment_id) as run:
        result = train_and_log(config, data)
    return run.info.run_id, result

"""Where a study lives: Optuna storage URLs, heartbeats, and stale-trial retries.

SQLite by default, any RDB URL (PostgreSQL for many hosts), or a journal file
for several local workers without a database server.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path

import optuna
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from leukoml import names
from leukoml.errors import LeukomlError, one_line
from leukoml.locks import is_postgres, mask_url, named_lock, rdb_url

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///optuna.db"
HEARTBEAT_ENV = "LEUKOML_HEARTBEAT_SECONDS"
GRACE_ENV = "LEUKOML_GRACE_SECONDS"
DEFAULT_HEARTBEAT_SECONDS = 30
DEFAULT_GRACE_SECONDS = 120


def storage_lock(url: str | None, name: str, timeout: float | None = None):
    """A lock named `name` shared by every worker of the storage `url` (`leukoml.locks`)."""
    from leukoml.locks import DEFAULT_TIMEOUT

    return named_lock(url or DEFAULT_STORAGE, name,
                      DEFAULT_TIMEOUT if timeout is None else timeout, optional=True)


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds: LEUKOML_HEARTBEAT_SECONDS and
    LEUKOML_GRACE_SECONDS, 30 and 120 unless set.

    A trial whose worker has not written a heartbeat for the grace period is
    taken for lost: failed and queued again. Short values find dead workers
    sooner; a grace of only an interval or two fails live trials whose
    heartbeat is merely late, hence at least two intervals.
    """
    interval = _env_seconds(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_SECONDS)
    grace = _env_seconds(GRACE_ENV, DEFAULT_GRACE_SECONDS)
    if grace < 2 * interval:
        raise LeukomlError(f"{GRACE_ENV}={grace} must be at least twice "
                           f"{HEARTBEAT_ENV}={interval}, or live trials are failed as lost")
    return interval, grace


def _env_seconds(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise LeukomlError(f"{name}={text!r}: expected a whole number of seconds > 0")
    return value


class _MarkStaleRunKilled(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Retry a trial whose worker died, and mark its MLflow runs KILLED.

    Optuna notices the dead worker (no heartbeat for the grace period), sets
    the trial FAIL and calls this; the retry re-queues the same parameters.
    The dead worker's own run (the one `mlflow run` opened) is marked too, or
    it would show RUNNING forever.
    """

    def __call__(self, study, trial) -> None:
        run_id = trial.user_attrs.get(names.RUN_ID_ATTR)
        if run_id:
            client = MlflowClient()
            client.set_tag(run_id, names.TAG_OPTUNA_STATE, "FAIL")
            client.set_tag(run_id, names.TAG_FAILURE, "worker lost (no heartbeat); retried")
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
            worker_run = client.get_run(run_id).data.tags.get(names.TAG_WORKER_RUN)
            if worker_run and client.get_run(worker_run).info.status == "RUNNING":
                client.set_tag(worker_run, names.TAG_FAILURE,
                               f"worker lost (no heartbeat) during trial {trial.number}")
                client.set_terminated(worker_run, RunStatus.to_string(RunStatus.KILLED))
        log.warning("trial %d lost its worker; marked FAIL and queued again", trial.number)
        super().__call__(study, trial)


def open_storage(url: str | None) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`; fails at once, naming the URL, if unreachable.

    RDB URLs (sqlite, postgresql, mysql) get a heartbeat (`heartbeat_settings`),
    so a worker killed mid-trial has its trial failed and retried. A path
    ending in `.journal` or `.log` (or `journal:<path>`) is a journal file,
    for several local workers without a database server; it has no heartbeat.
    """
    url = url or DEFAULT_STORAGE
    try:
        if url.startswith("journal:") or url.endswith((".journal", ".log")):
            path = url.removeprefix("journal:")
            from optuna.storages.journal import JournalFileBackend

            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(Path(path).expanduser())))
        if "://" not in url:
            raise LeukomlError(
                f"storage {url!r}: expected an RDB URL (sqlite:///optuna.db, postgresql://...) "
                "or a journal file path ending in .journal"
            )
        interval, grace = heartbeat_settings()
        rdb = rdb_url(url)
        # Workers starting at once on a fresh PostgreSQL database would all create
        # Optuna's tables; all but one would fail (duplicate type studydirection).
        schema_lock = storage_lock(rdb, "optuna-schema", 120) if is_postgres(rdb) else nullcontext()
        with schema_lock:
            return optuna.storages.RDBStorage(
                rdb,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=_MarkStaleRunKilled(max_retry=2),
            )
    except LeukomlError:
        raise
    except Exception as exc:
        raise LeukomlError(f"cannot open the Optuna storage {mask_url(url)}: "
                           f"{one_line(exc)}") from None

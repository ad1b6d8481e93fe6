"""Every lock leukoml takes, in one place: promotions, study queues, schema creation.

A lock is named and lives beside the store the workers share:
- `postgresql://...`: a session-level advisory lock in that database, so every
  host using it is excluded, and a crashed holder releases it;
- `sqlite:///path`, a journal file (`journal:path` or `path.journal`) or any
  file path: a file lock (filelock) beside that file;
- nothing: a file lock in the leukoml cache dir, for this machine only.
Other databases (MySQL) have no lock here: `named_lock` refuses them, or, with
`optional=True`, returns a no-op (documented in docs/scale-out.md).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from leukoml.errors import LeukomlError

DEFAULT_TIMEOUT = 3600.0  # seconds; a promotion scores two models on a test set


def scheme(url: str | None) -> str:
    """`postgresql` for postgresql+psycopg2://..., "" for a plain path or nothing."""
    if not url or "://" not in url:
        return ""
    return url.partition("://")[0].split("+")[0].lower()


def is_postgres(url: str | None) -> bool:
    return scheme(url) in ("postgres", "postgresql")


def rdb_url(url: str) -> str:
    """`url` with an explicit PostgreSQL driver: SQLAlchemy 2.1 maps a bare postgresql://
    to psycopg 3, the `postgres` extra installs psycopg2. Other URLs are unchanged."""
    prefix, sep, rest = url.partition("://")
    if sep and prefix in ("postgres", "postgresql"):
        driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
        return f"postgresql+{driver}://{rest}"
    return url


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def lock_path(url: str | None, name: str) -> Path:
    """The lock file of `name` for a SQLite URL, a file path or nothing (the cache dir)."""
    from leukoml.data import cache_root

    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".lock"
    url = (url or "").removeprefix("journal:")
    if not url:
        return cache_root() / "locks" / stem
    if scheme(url) == "sqlite" and url.startswith("sqlite:///") and ":memory:" not in url:
        beside = Path(url[len("sqlite:///"):].partition("?")[0])  # not beside ?timeout=30
    elif "://" in url:
        raise LeukomlError(
            f"lock: unsupported scheme in {url.partition('://')[0]}://...; use postgresql://..., "
            "sqlite:///path, a file path, or nothing for the cache dir"
        )
    else:
        beside = Path(url)
    beside = beside.expanduser()
    return beside.parent / f"{beside.name}.{stem}"


def named_lock(url: str | None, name: str, timeout: float = DEFAULT_TIMEOUT,
               optional: bool = False):
    """A context manager holding lock `name` of the store `url` (see the module docstring)."""
    url = (url or "").removeprefix("journal:")
    if is_postgres(url):
        return _advisory_lock(url, name, timeout)
    if optional and scheme(url) not in ("", "sqlite"):
        return nullcontext()
    return _file_lock(lock_path(url, name), name, timeout)


def _held(name: str, where: str, timeout: float) -> LeukomlError:
    return LeukomlError(f"the lock {name!r} ({where}) is still held after {timeout:.0f} s: "
                        "another worker is running or hung")


@contextmanager
def _file_lock(path: Path, name: str, timeout: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    # not thread-local: threads of one process exclude each other too
    lock = FileLock(str(path), timeout=timeout, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise _held(name, str(path), timeout) from None
    try:
        yield
    finally:
        lock.release()


def advisory_key(name: str) -> int:
    """A signed 64-bit PostgreSQL advisory-lock key for `name`."""
    digest = hashlib.sha256(f"leukoml:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _advisory_lock(url: str, name: str, timeout: float) -> Iterator[None]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(rdb_url(url.replace("postgres://", "postgresql://", 1)),
                                      poolclass=sqlalchemy.pool.NullPool)
    key = advisory_key(name)
    where = f"advisory lock {key} on {engine.url.render_as_string(hide_password=True)}"
    try:
        with engine.connect() as conn:
            deadline, pause = time.monotonic() + timeout, 0.05
            while not conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"),
                                   {"k": key}).scalar():
                if time.monotonic() > deadline:
                    raise _held(name, where, timeout)
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()

"""The scale-out mechanics of a study, on real SQLite and journal storages (no training).

Heartbeat settings, the queue that makes `n_trials` the study's total, a surplus
trial, and how a worker with nothing queued waits for, fails and retries a dead
worker's trial. tests/e2e/test_scale_out.py does the same with real workers.
"""

from __future__ import annotations

import threading
import time

import mlflow
import optuna
import pytest

from leukoml import names
from leukoml.errors import LeukomlError
from leukoml.locks import rdb_url
from leukoml.names import SURPLUS_ATTR, TICKET_ATTR
from leukoml.study import (
    Objective,
    budget_used,
    fill_queue,
    heartbeat_settings,
    open_storage,
    parse_search_space,
)
from leukoml.study.search import _work

WAITING, RUNNING = optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING
FAIL, COMPLETE = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE


@pytest.fixture
def fast_heartbeat(monkeypatch):
    monkeypatch.setenv("LEUKOML_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("LEUKOML_GRACE_SECONDS", "2")


def test_heartbeat_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("LEUKOML_HEARTBEAT_SECONDS", raising=False)
    monkeypatch.delenv("LEUKOML_GRACE_SECONDS", raising=False)
    assert heartbeat_settings() == (30, 120)
    monkeypatch.setenv("LEUKOML_HEARTBEAT_SECONDS", "5")
    monkeypatch.setenv("LEUKOML_GRACE_SECONDS", "12")
    assert heartbeat_settings() == (5, 12)
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert (storage.heartbeat_interval, storage.grace_period) == (5, 12)
    for name, value in (("LEUKOML_HEARTBEAT_SECONDS", "0"), ("LEUKOML_GRACE_SECONDS", "2.5")):
        monkeypatch.setenv(name, value)
        with pytest.raises(LeukomlError, match=f"{name}='{value}'"):
            heartbeat_settings()
        monkeypatch.setenv(name, "12" if "GRACE" in name else "5")
    monkeypatch.setenv("LEUKOML_GRACE_SECONDS", "9")
    with pytest.raises(LeukomlError, match="LEUKOML_GRACE_SECONDS=9 must be at least twice"):
        heartbeat_settings()


def test_postgres_urls_name_an_installed_driver():
    driver = rdb_url("postgresql://u@h/db").partition("://")[0]
    assert driver in ("postgresql+psycopg", "postgresql+psycopg2")
    assert rdb_url("postgres://u@h/db").startswith(driver + "://u@h/db")
    for url in ("postgresql+psycopg2://u@h/db", "sqlite:///optuna.db", "mysql://u@h/db"):
        assert rdb_url(url) == url


def test_the_queue_holds_the_budget_once_however_often_it_is_filled(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="q", storage=open_storage(url))
    assert fill_queue(study, 3, url) == 3
    assert fill_queue(study, 3, url) == 0  # a second worker adds nothing
    assert fill_queue(study, 5, url) == 2  # a larger budget tops up
    assert fill_queue(study, 4, url) == 0  # a smaller one takes nothing back
    queued = study.get_trials(states=(WAITING,))
    assert len(queued) == 5 and all(t.user_attrs[TICKET_ATTR] for t in queued)
    assert budget_used(study) == 5


def test_a_trial_past_the_budget_is_failed_unrun_and_does_not_count(tracking_uri, tmp_path):
    """What a worker gets when another popped the last queued trial just before it."""
    space = parse_search_space({"tiers": {"low": ["Asghar2022CNN"]}, "image_size": 32,
                                "max_image_size": 32})
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'optuna.db'}"))
    with mlflow.start_run() as worker:
        objective = Objective(space, "synthetic", "s", worker.info.run_id, worker.info.run_id)
        study.optimize(objective, n_trials=3, catch=(Exception,))  # nothing queued
    [trial] = study.trials  # the worker stopped at once
    assert trial.state == FAIL and trial.user_attrs[SURPLUS_ATTR] and trial.params == {}
    assert trial.user_attrs["error"].startswith("not run")
    assert budget_used(study) == 0
    assert mlflow.search_runs(filter_string=names.role_filter(names.Role.TRIAL)).empty


def lost_trial(study: optuna.Study, storage) -> optuna.trial.FrozenTrial:
    """A queued trial whose worker wrote one heartbeat and died."""
    fill_queue(study, 1, None)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    storage.record_heartbeat(trial._trial_id)
    return study.trials[trial.number]


def test_a_worker_with_nothing_queued_fails_a_lost_trial_and_runs_its_retry(
    fast_heartbeat, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the study's lock file goes beside the default storage
    storage = open_storage(None)
    study = optuna.create_study(study_name="w", storage=storage)
    lost = lost_trial(study, storage)
    ran = []

    def objective(trial):
        ran.append((trial.number, trial.suggest_float("x", 0, 1)))
        return 1.0

    _work(study, objective, storage, deadline=None)
    retry = study.trials[-1]
    assert study.trials[lost.number].state == FAIL
    assert retry.state == COMPLETE and retry.system_attrs["failed_trial"] == lost.number
    assert ran == [(retry.number, lost.params["x"])]  # the same parameters, run once
    assert budget_used(study) == 1


def test_a_waiting_worker_leaves_at_its_timeout_while_a_live_trial_runs(
    fast_heartbeat, tmp_path, capsys
):
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    alive = threading.Event()

    def beat():  # the other worker is alive: its heartbeat keeps coming
        while not alive.wait(0.3):
            storage.record_heartbeat(trial._trial_id)

    thread = threading.Thread(target=beat)
    thread.start()
    deadline = time.monotonic() + 4  # two heartbeat checks
    try:
        _work(study, lambda t: pytest.fail("nothing is queued"), storage, deadline=deadline)
    finally:
        alive.set()
        thread.join()
    assert time.monotonic() >= deadline  # it waited for the live trial until its timeout
    assert f"trial(s) {trial.number} still marked RUNNING" in capsys.readouterr().out
    assert study.trials[trial.number].state == RUNNING  # live: never failed


def test_without_heartbeat_a_worker_does_not_wait(tmp_path, capsys):
    """A journal file cannot tell a dead worker from a slow one."""
    storage = open_storage(str(tmp_path / "study.journal"))
    study = optuna.create_study(storage=storage)
    running = study.ask()
    # a deadline only so that a worker that did wait would come back and fail here
    _work(study, lambda t: pytest.fail("nothing is queued"), storage,
          deadline=time.monotonic() + 30)
    assert "still marked RUNNING" not in capsys.readouterr().out
    assert study.trials[running.number].state == RUNNING

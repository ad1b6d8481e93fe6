"""Scale-out for real: several `mlflow run . -e search` workers on one study, through a
throw-away PostgreSQL and one `mlflow server` (PostgreSQL backend store, served
artifacts), all on loopback, as docker/docker-compose.yml runs them.

Skipped without the PostgreSQL binaries (.ci/run installs them). Short heartbeats
(LEUKOML_HEARTBEAT_SECONDS / LEUKOML_GRACE_SECONDS) let a killed worker's trial go
stale in seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import (
    REPO,
    mlflow_run_args,
    poll,
    postgres_server,
    start_together,
    stop_process_group,
    tail,
    tracking_server,
)
from mlflow.tracking import MlflowClient

from leukoml import names
from leukoml.locks import rdb_url
from leukoml.names import PARENT_RUN_ATTR, RUN_ID_ATTR, SURPLUS_ATTR
from leukoml.study import budget_used

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

DATA = "synthetic:per_class=40,size=32"
HEARTBEAT = {"LEUKOML_HEARTBEAT_SECONDS": "2", "LEUKOML_GRACE_SECONDS": "8"}
WORKERS_TIMEOUT = 420  # seconds for a whole study on a busy 2-core box
RUNNING, FAIL, COMPLETE = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL,
                           optuna.trial.TrialState.COMPLETE)


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """`mlflow server` on a PostgreSQL backend store; yields (URL, artifacts folder)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    backend = rdb_url(postgres.create_database("mlflow"))  # MLflow needs the driver named
    with tracking_server(backend, folder / "artifacts", folder / "server.log") as url:
        yield url, folder / "artifacts"


def search_space(path: Path, n_trials: int) -> str:
    """One small backbone at 32 px, 2 epochs, random learning rates."""
    path.write_text(yaml.safe_dump({
        "objective": {"metric": "val_macro_f1", "direction": "maximize"},
        "tiers": {"low": ["Asghar2022CNN"]},
        "image_size": 32, "max_image_size": 32, "weights": "none", "augment": "none",
        "max_epochs": 2, "learning_rate": {"low": 3e-3, "high": 1e-2, "log": True},
        "batch_size": [32], "patience": 2,
        "sampler": {"name": "random", "seed": 5}, "pruner": {"name": "none"},
        "n_trials": n_trials,
    }))
    return str(path)


@contextmanager
def running_workers(
    count: int, tracking_uri: str, experiment: str, folder: Path, **params
) -> Iterator[dict[Path, subprocess.Popen]]:
    """`count` processes of `mlflow run . -e search`, each in its own process group with
    its output in `folder/worker<i>.log`, yielded by log path; all stopped on exit."""
    args = mlflow_run_args("search", experiment, **params)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_ID"}
    env.update(HEARTBEAT, MLFLOW_TRACKING_URI=tracking_uri)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    workers = {}
    for i in range(count):
        log_path = folder / f"worker{i}.log"
        with open(log_path, "w") as log:
            workers[log_path] = subprocess.Popen(
                args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
    try:
        yield workers
    finally:
        for proc in workers.values():
            stop_process_group(proc)


def wait_for(workers: dict[Path, subprocess.Popen], timeout: float = WORKERS_TIMEOUT) -> None:
    if not poll(lambda: all(p.poll() is not None for p in workers.values()), timeout, 1):
        pytest.fail(f"workers still running after {timeout} s:\n" + logs(workers))


def logs(workers: dict[Path, subprocess.Popen]) -> str:
    return "\n".join(f"--- {path.name} (exit {p.returncode}):\n{tail(path, 25)}"
                     for path, p in workers.items())


def trial_runs(client: MlflowClient, experiment: str, parent: str) -> dict[int, list]:
    """Trial number -> the trial runs nested under `parent`."""
    runs = client.search_runs(
        [experiment], f"tags.`{names.TAG_PARENT_RUN}` = '{parent}' "
                      f"and {names.role_filter(names.Role.TRIAL)}")
    by_number: dict[int, list] = {}
    for run in runs:
        by_number.setdefault(int(run.data.tags[names.TAG_OPTUNA_TRIAL]), []).append(run)
    return by_number


def failures(study: optuna.Study) -> str:
    """Why each failed trial failed (its error, or Optuna's stale-heartbeat retry)."""
    return "".join(f"\ntrial {t.number} {t.state.name}: {t.user_attrs.get(names.ERROR_ATTR)} "
                   f"{t.system_attrs}" for t in study.trials if t.state != COMPLETE)


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials other than a surplus one (created past the budget, never run)."""
    return [t for t in study.trials if not t.user_attrs.get(SURPLUS_ATTR)]


def check_promoted_once(client: MlflowClient, study: optuna.Study, model: str) -> None:
    best_run = study.best_trial.user_attrs[RUN_ID_ATTR]
    versions = client.search_model_versions(f"name='{model}'")
    role = {v.run_id: client.get_run(v.run_id).data.tags[names.TAG_ROLE] for v in versions}
    # the best trial once, plus at most one ensemble of the best trials (the YAML's default
    # `ensemble: 3`) as a challenger: however many workers finished, nothing twice
    assert len(role) == len(versions) and best_run in role, role
    assert sorted(role.values()) in (["trial"], ["ensemble", "trial"]), role
    champion = client.get_model_version_by_alias(model, "champion").run_id
    assert champion == best_run or role[champion] == "ensemble"


_ELECTION = """
import json, sys
from leukoml.study import load_search_space
import leukoml.registry  # imported before the start line, as open_storage needs it
from leukoml.study import fill_queue, open_storage
from leukoml.study.search import _open_study
url, space, me = sys.argv[1:4]
print("ready", flush=True)
sys.stdin.readline()
storage = open_storage(url)
study, parent = _open_study(load_search_space(space), "race", storage, me, 5)
print(json.dumps({"me": me, "parent": parent, "added": fill_queue(study, 5, url)}))
"""


def test_workers_starting_at_once_elect_one_leader_and_queue_the_budget_once(
    postgres, tmp_path
):
    # A fresh database: creating Optuna's tables races too.
    url = postgres.create_database("optuna_race")
    space = search_space(tmp_path / "space.yaml", n_trials=5)
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    racers = start_together(_ELECTION, [[url, space, f"run-{i}"] for i in range(4)], tmp_path,
                            env)
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in racers]
    parents = {r["parent"] for r in results}
    assert len(parents) == 1  # one leader, and everybody nests under its run
    assert parents <= {r["me"] for r in results}
    assert sum(r["added"] for r in results) == 5
    study = optuna.load_study(study_name="race", storage=rdb_url(url))
    assert [t.state.name for t in study.trials] == ["WAITING"] * 5
    assert study.user_attrs[PARENT_RUN_ATTR] == parents.pop()


_DATASET_INPUT = """
import sys
import mlflow, pandas as pd
from leukoml.data.tracking import _log_input
url, experiment, name = sys.argv[1:4]
mlflow.set_tracking_uri(url)
frame = pd.DataFrame({"file": [f"f{i}.png" for i in range(40)], "class": ["a", "b"] * 20})
dataset = mlflow.data.from_pandas(frame, source="/data", targets="class", name=name)
with mlflow.start_run(experiment_id=experiment) as run:
    print("ready", flush=True)
    sys.stdin.readline()
    _log_input(dataset, "training")
print(run.info.run_id)
"""


def test_workers_logging_one_new_dataset_at_once_all_record_it(mlflow_server, tmp_path):
    """MLflow's store looks a dataset up, then inserts it: workers whose first trials log
    the same new split at once collide on its key (UniqueViolation; seen failing trial 0
    in CI). Every run must still end with the dataset as its input."""
    tracking_uri, _ = mlflow_server
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("dataset-race")
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    run_ids = []
    for round_ in range(3):  # the collision needs the inserts to overlap: a few rounds
        argv = [tracking_uri, experiment, f"split-{round_}"]
        for out, err in start_together(_DATASET_INPUT, [argv] * 3, tmp_path, env):
            assert "not logged" not in err, err[-3000:]
            run_ids.append(out.strip().splitlines()[-1])
    for run_id in run_ids:
        [dataset_input] = client.get_run(run_id).inputs.dataset_inputs
        assert dataset_input.dataset.name.startswith("split-")


def test_workers_share_one_study_under_one_parent_and_promote_once(
    postgres, mlflow_server, tmp_path
):
    tracking_uri, artifacts = mlflow_server
    n_trials, model = 4, "scale-share"
    storage = postgres.create_database("optuna_share")
    client = MlflowClient(tracking_uri)
    # Created once beforehand: `mlflow run --experiment-name` from workers starting
    # at once would race to create it (docker-compose.yml has a setup service for this).
    experiment = client.create_experiment("scale-share")
    space = search_space(tmp_path / "space.yaml", n_trials)
    with running_workers(3, tracking_uri, "scale-share", tmp_path, data=DATA,
                         search_space=space, study_name="shared",
                         storage=storage, model_name=model) as workers:
        wait_for(workers)
    assert all(p.returncode == 0 for p in workers.values()), logs(workers)

    study = optuna.load_study(study_name="shared", storage=rdb_url(storage))
    trials = counted(study)
    assert budget_used(study) == n_trials
    assert [t.state for t in trials] == [COMPLETE] * n_trials, logs(workers) + failures(study)
    # each worker sampled for itself: no two trials share parameters
    assert len({t.params["learning_rate"] for t in trials}) == n_trials

    parents = client.search_runs([experiment], names.role_filter(names.Role.STUDY))
    assert len(parents) == 1
    parent = parents[0].info.run_id
    assert study.user_attrs[PARENT_RUN_ATTR] == parent
    joined = client.search_runs([experiment], names.role_filter(names.Role.WORKER))
    assert len(joined) == 2 and {r.data.tags[names.TAG_PARENT_RUN] for r in joined} == {parent}

    by_number = trial_runs(client, experiment, parent)
    assert sorted(by_number) == [t.number for t in trials]
    for trial in trials:
        [run] = by_number[trial.number]  # exactly one run per trial, under the one parent
        assert run.info.run_id == trial.user_attrs[RUN_ID_ATTR]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["objective"] == pytest.approx(trial.value)
    ran_on = {runs[0].data.tags["leukoml.worker"] for runs in by_number.values()}
    assert len(ran_on) >= 2, "the trials did not spread over the workers"

    check_promoted_once(client, study, model)
    out = "".join(path.read_text() for path in workers)
    said = re.findall(rf"^{model} version (\d+) \(run \w+\): (?:champion|candidate only)",
                      out, re.MULTILINE)
    # one worker said it, once per version registered
    assert sorted(said) == sorted(v.version for v in
                                  client.search_model_versions(f"name='{model}'")), out[-3000:]
    # artifacts went through the server into its artifacts destination
    assert list(artifacts.rglob("MLmodel"))


def test_a_killed_worker_has_its_trial_failed_retried_and_the_study_completes(
    postgres, mlflow_server, tmp_path
):
    tracking_uri, _ = mlflow_server
    n_trials, model = 2, "scale-kill"  # one trial each: the survivor has none left to start
    storage = postgres.create_database("optuna_kill")
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("scale-kill")
    space = search_space(tmp_path / "space.yaml", n_trials)
    with running_workers(2, tracking_uri, "scale-kill", tmp_path, data=DATA,
                         search_space=space, study_name="killed",
                         storage=storage, model_name=model) as workers:
        # Once both workers train a trial (each with its MLflow run), kill the study's
        # leader, whose run is the parent: the hardest worker to lose. The survivor then
        # has no queued trial left and must fail the stale trial itself while waiting.
        optuna_storage = optuna.storages.RDBStorage(rdb_url(storage))

        def leaders_trial():
            """(the leader's running trial, its run's tags) once both workers train."""
            if any(p.poll() is not None for p in workers.values()):
                pytest.fail("a worker ended before both trained:\n" + logs(workers))
            try:
                study = optuna.load_study(study_name="killed", storage=optuna_storage)
            except KeyError:
                return None
            parent = study.user_attrs.get(PARENT_RUN_ATTR)
            running = {}
            for trial in study.get_trials(states=(RUNNING,)):
                run_id = trial.user_attrs.get(RUN_ID_ATTR)
                if parent and run_id:
                    running[trial.number] = (trial, client.get_run(run_id).data.tags)
            if len(running) != 2:
                return None
            [found] = [(t, tags) for t, tags in running.values()
                       if tags["leukoml.worker_run"] == parent]
            return found

        found = poll(leaders_trial, WORKERS_TIMEOUT)
        if found is None:
            pytest.fail("never saw both workers training:\n" + logs(workers))
        victim, tags = found
        pid = int(tags["leukoml.worker"].rsplit("-", 1)[1])  # the trainer
        group = os.getpgid(pid)
        [leader] = [p for p in workers.values() if p.pid == group]  # in its mlflow run group
        os.killpg(group, signal.SIGKILL)
        leader.wait(30)
        wait_for(workers)
    [(survivor_log, survivor)] = [(log, p) for log, p in workers.items() if p is not leader]
    assert survivor.returncode == 0, logs(workers)
    said = survivor_log.read_text()  # it waited for the lost trial, or found it stale at once
    assert ("still marked RUNNING by another process" in said
            or f"trial {victim.number + 2}" in said or "trial 2" in said), logs(workers)

    study = optuna.load_study(study_name="killed", storage=rdb_url(storage))
    lost = study.trials[victim.number]
    assert lost.state == FAIL
    [retry] = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state == COMPLETE and retry.params == lost.params
    others = [t for t in counted(study) if t.number != victim.number]
    assert [t.state for t in others] == [COMPLETE] * n_trials  # nothing lost, the budget met
    assert budget_used(study) == n_trials
    assert not study.get_trials(states=(RUNNING, optuna.trial.TrialState.WAITING))

    lost_run = client.get_run(lost.user_attrs[RUN_ID_ATTR])
    assert lost_run.info.status == "KILLED"
    assert lost_run.data.tags[names.TAG_OPTUNA_STATE] == "FAIL"
    parent = client.get_run(study.user_attrs[PARENT_RUN_ATTR])
    # the dead leader's own run: marked lost by the survivor, then FINISHED once the
    # survivor finished the study, naming the run that did
    assert "worker lost" in parent.data.tags[names.TAG_FAILURE]
    assert parent.info.status == "FINISHED"
    survivor_run = [r for r in client.search_runs([experiment],
                                                  names.role_filter(names.Role.WORKER))]
    assert [r.info.run_id for r in survivor_run] == [parent.data.tags[names.TAG_FINISHED_BY]]
    by_number = trial_runs(client, experiment, parent.info.run_id)
    assert sorted(by_number) == sorted([victim.number] + [t.number for t in others])
    for trial in others:  # each completed trial: one finished run, not duplicated
        [run] = by_number[trial.number]
        assert run.info.run_id == trial.user_attrs[RUN_ID_ATTR]
        assert run.info.status == "FINISHED"
    check_promoted_once(client, study, model)

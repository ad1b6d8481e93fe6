"""An Optuna study over backbone tiers and training hyper-parameters.

One study = one MLflow parent run; each trial = one nested child run that
logs what `-e train` logs, plus the Optuna tags. The study lives in an
Optuna storage (SQLite by default, any RDB URL, or a journal file), so
running the same command again resumes it and several workers can share it.

The budget is a queue: the study holds `n_trials` trials, run, running or
queued (WAITING), and workers only run queued ones. Optuna pops a queued
trial atomically, so however many workers ask at once, at most `n_trials`
trials train. docs/scale-out.md describes running many workers.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import socket
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
import optuna
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from leukoml import names
from leukoml.config import FloatRange, IntRange, SearchSpace, TrainConfig
from leukoml.errors import LeukomlError

log = logging.getLogger(__name__)
# Heartbeats and stale-trial retries are experimental in Optuna, and chosen on purpose.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_STORAGE = "sqlite:///optuna.db"
PARENT_RUN_ATTR = "mlflow_parent_run_id"
RUN_ID_ATTR = "mlflow_run_id"
TICKET_ATTR = "leukoml_queued"  # user attr of the trials the budget queued
SURPLUS_ATTR = "leukoml_surplus"  # user attr of a trial created past the budget (never run)
HEARTBEAT_ENV = "LEUKOML_HEARTBEAT_SECONDS"
GRACE_ENV = "LEUKOML_GRACE_SECONDS"
DEFAULT_HEARTBEAT_SECONDS = 30
DEFAULT_GRACE_SECONDS = 120
_PARENT_WAIT_SECONDS = 120
_TAG_WORKER_RUN = "leukoml.worker_run"  # on a trial run: the run of the worker process


# --- storage -----------------------------------------------------------------------

def mask_url(url: str) -> str:
    """The storage URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


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


def rdb_url(url: str) -> str:
    """`url` with an explicit PostgreSQL driver.

    SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the `postgres`
    extra installs psycopg2. Any other URL is returned unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
        return f"postgresql+{driver}://{rest}"
    return url


def _is_postgres(url: str) -> bool:
    return url.partition("://")[0].split("+")[0] in ("postgres", "postgresql")


def storage_lock(url: str | None, name: str, timeout: float | None = None):
    """A lock named `name` shared by every worker of the storage `url`.

    PostgreSQL: an advisory lock in that database; SQLite or a journal file:
    a file lock beside it (`registry.promotion_lock`). Other RDBs (MySQL)
    get no lock.
    """
    from leukoml.registry import LOCK_TIMEOUT, promotion_lock

    url = (url or DEFAULT_STORAGE).removeprefix("journal:")
    scheme = url.partition("://")[0].split("+")[0] if "://" in url else ""
    if scheme not in ("", "sqlite", "postgres", "postgresql"):
        return nullcontext()
    if scheme == "sqlite":  # the lock file goes beside the database, not beside ?timeout=30
        url = url.partition("?")[0]
    return promotion_lock(url, name, LOCK_TIMEOUT if timeout is None else timeout)


class _MarkStaleRunKilled(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Retry a trial whose worker died, and mark its MLflow runs KILLED.

    Optuna notices the dead worker (no heartbeat for the grace period), sets
    the trial FAIL and calls this; the retry re-queues the same parameters.
    The dead worker's own run (the one `mlflow run` opened) is marked too, or
    it would show RUNNING forever.
    """

    def __call__(self, study, trial) -> None:
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id:
            client = MlflowClient()
            client.set_tag(run_id, names.TAG_OPTUNA_STATE, "FAIL")
            client.set_tag(run_id, "leukoml.failure", "worker lost (no heartbeat); retried")
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
            worker_run = client.get_run(run_id).data.tags.get(_TAG_WORKER_RUN)
            if worker_run and client.get_run(worker_run).info.status == "RUNNING":
                client.set_tag(worker_run, "leukoml.failure",
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
        schema_lock = storage_lock(rdb, "optuna-schema", 120) if _is_postgres(rdb) else nullcontext()
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
        raise LeukomlError(f"cannot open the Optuna storage {mask_url(url)}: {exc}") from None


# --- sampler, pruner, budget -------------------------------------------------------------

def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    options = dict(space.sampler)
    name = options.pop("name")
    seed = options.pop("seed", space.seed)
    if name in ("random", "grid"):  # grid: the backbones are enqueued, the rest is random
        return optuna.samplers.RandomSampler(seed=seed)
    # group=True: multivariate TPE over the conditional (tier -> backbone) space
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                      n_startup_trials=options.get("n_startup_trials", 5))


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    options = dict(space.pruner)
    name = options.pop("name")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=options.get("n_startup_trials", 3),
                                           n_warmup_steps=options.get("n_warmup_steps", 1))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=options.get("min_resource", 1),
                                              max_resource=space.max_epochs,
                                              reduction_factor=options.get("reduction_factor", 3))
    return optuna.pruners.NopPruner()


def budget_used(study: optuna.Study) -> int:
    """Trials that count toward `n_trials`, across all workers: run, running or queued.

    Every trial counts once, except one that lost its worker and was queued
    again (its retry stands in for it) and a surplus trial, which never ran
    (see `_Objective`). (`optuna.study.MaxTrialsCallback` can only filter by
    state, which would count a retried trial twice.)
    """
    trials = study.get_trials(deepcopy=False)
    replaced = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    return sum(
        1 for t in trials
        if not (t.state == optuna.trial.TrialState.FAIL
                and (t.number in replaced or t.user_attrs.get(SURPLUS_ATTR)))
    )


def fill_queue(study: optuna.Study, n_trials: int, storage: str | None) -> int:
    """Queue trials until the study counts `n_trials`; return how many were added.

    Under the storage's lock, so workers starting at once do not both top up.
    Queued trials fix no parameter: the sampler picks them when one is run.
    """
    with storage_lock(storage, f"study.{study.study_name}.queue"):
        missing = n_trials - budget_used(study)
        for _ in range(missing):
            study.enqueue_trial({}, user_attrs={TICKET_ATTR: True})
    return max(missing, 0)


def _trials(study: optuna.Study, *states: optuna.trial.TrialState) -> list:
    return study.get_trials(deepcopy=False, states=states)


class StudyBudget:
    """Stops this worker once no queued trial is left for it."""

    def __call__(self, study: optuna.Study, trial) -> None:
        if not _trials(study, optuna.trial.TrialState.WAITING):
            study.stop()


# --- sampling ---------------------------------------------------------------------------

def sample_config(trial: optuna.Trial, space: SearchSpace, data: str) -> TrainConfig:
    """Tier, then a backbone of that tier (conditional), then the training knobs."""
    tier = trial.suggest_categorical(names.TIER, list(space.tiers))
    backbone = trial.suggest_categorical(f"{names.BACKBONE}_{tier}", list(space.tiers[tier]))

    lr = space.learning_rate
    if isinstance(lr, FloatRange):
        lr = trial.suggest_float(names.LEARNING_RATE, lr.low, lr.high, log=lr.log)
    patience = space.patience
    if isinstance(patience, IntRange):
        patience = trial.suggest_int(names.PATIENCE, patience.low, patience.high)
    batch_size = space.batch_size[0]
    if len(space.batch_size) > 1:
        batch_size = trial.suggest_categorical(names.BATCH_SIZE, list(space.batch_size))
    class_weight = space.class_weight[0]
    if len(space.class_weight) > 1:
        class_weight = trial.suggest_categorical(names.CLASS_WEIGHT, list(space.class_weight))
    return TrainConfig(
        data=data,
        backbone=backbone,
        learning_rate=float(lr),
        batch_size=int(batch_size),
        patience=int(patience),
        max_epochs=space.max_epochs,
        image_size=space.image_size_for(backbone),
        weights=space.weights,
        seed=space.seed,
        freeze_base=space.freeze_base,
        augment=space.augment,
        monitor=space.objective_metric,
        class_weight=class_weight,
        mixed_precision=space.mixed_precision,
        group_by=space.split.get("group_by") or "",
        drop_cross_split_duplicates=bool(space.split.get("drop_cross_split_duplicates", False)),
    )


# --- the study ------------------------------------------------------------------------------

@dataclass
class SearchOutcome:
    study: optuna.Study
    parent_run_id: str
    best_run_id: str | None


def _open_study(space: SearchSpace, study_name: str, storage, run_id: str) -> tuple[optuna.Study, str]:
    """Create the study (we lead: our run is the parent) or join it (nest under its parent)."""
    direction = space.direction
    kwargs = dict(study_name=study_name, storage=storage, sampler=make_sampler(space),
                  pruner=make_pruner(space))
    try:
        study = optuna.create_study(direction=direction, load_if_exists=False, **kwargs)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kwargs)
        if study.direction.name.lower() != direction:
            raise LeukomlError(
                f"study {study_name!r} exists with direction {study.direction.name.lower()}, "
                f"this search space asks {direction}"
            ) from None
        # Every worker reads the same seed: without this, workers starting together
        # would all sample the same parameters. The creator keeps the seed, so a
        # one-worker study stays reproducible.
        study.sampler.reseed_rng()
        deadline = time.monotonic() + _PARENT_WAIT_SECONDS
        while PARENT_RUN_ATTR not in study.user_attrs:  # its creator is still setting up
            if time.monotonic() > deadline:
                raise LeukomlError(f"study {study_name!r} has no MLflow parent run recorded")
            time.sleep(1)
        return study, study.user_attrs[PARENT_RUN_ATTR]
    if space.sampler["name"] == "grid":  # one trial per listed backbone, in order
        for tier, backbones in space.tiers.items():
            for backbone in backbones:
                study.enqueue_trial({names.TIER: tier, f"{names.BACKBONE}_{tier}": backbone},
                                    user_attrs={TICKET_ATTR: True})
    study.set_user_attr("objective_metric", space.objective_metric)
    study.set_user_attr(PARENT_RUN_ATTR, run_id)  # last: joining workers wait for it
    return study, run_id


class _SurplusTrial(Exception):
    """A trial Optuna created because another worker popped the last queued one."""


class _Objective:
    """Runs one trial as a nested MLflow run; the study survives any failure."""

    def __init__(self, space: SearchSpace, data: str, study_name: str, parent_run_id: str,
                 worker_run_id: str):
        # TensorFlow now, not inside the first trial: a slow import must not hold
        # up that trial's heartbeat thread on a busy machine.
        import leukoml.training  # noqa: F401

        self.space, self.data, self.study_name = space, data, study_name
        self.parent_run_id, self.worker_run_id = parent_run_id, worker_run_id
        self.experiment_id = MlflowClient().get_run(parent_run_id).info.experiment_id
        self._prepared = {}  # image size -> PreparedData, decoded once per worker

    def _dataset(self, config: TrainConfig):
        from leukoml.data import prepare_dataset

        if config.image_size not in self._prepared:
            self._prepared[config.image_size] = prepare_dataset(
                self.data, config.image_size, seed=config.seed, group_by=config.group_by or None,
                drop_cross_split_duplicates=config.drop_cross_split_duplicates)
        return self._prepared[config.image_size]

    def __call__(self, trial: optuna.Trial) -> float:
        from optuna_integration import KerasPruningCallback

        from leukoml.training import train_and_log

        if not trial.user_attrs.get(TICKET_ATTR):
            # Between this worker's look at the queue and its ask, another worker
            # popped the last queued trial, so Optuna created a new one: fail it
            # unrun (it does not count, see `budget_used`) and stop.
            message = "not run: the budget was used up by other workers"
            trial.set_user_attr(SURPLUS_ATTR, True)
            trial.set_user_attr("error", message)  # what the leaderboard shows
            trial.study.stop()
            raise _SurplusTrial(message)
        config = sample_config(trial, self.space, self.data)
        client = MlflowClient()
        run = client.create_run(
            self.experiment_id,
            run_name=names.trial_run_name(trial.number, config.backbone),
            tags={
                names.TAG_PARENT_RUN: self.parent_run_id,
                names.TAG_ROLE: "trial",
                names.TAG_OPTUNA_STUDY: self.study_name,
                names.TAG_OPTUNA_TRIAL: str(trial.number),
                names.TAG_OPTUNA_STATE: "RUNNING",
                "leukoml.worker": _worker_name(),
                _TAG_WORKER_RUN: self.worker_run_id,
            },
        )
        run_id = run.info.run_id
        trial.set_user_attr(RUN_ID_ATTR, run_id)
        trial.set_user_attr(names.BACKBONE, config.backbone)
        mlflow.start_run(run_id=run_id, nested=True)
        status = RunStatus.FAILED
        try:
            data = self._dataset(config)
            pruning = KerasPruningCallback(trial, self.space.objective_metric)
            result = train_and_log(config, data, callbacks=[pruning])
            value = result.objective(self.space.objective_metric)
            self._record(trial, result, data.class_names)
            mlflow.log_metric("objective", value)
            mlflow.set_tag(names.TAG_OPTUNA_STATE, "COMPLETE")
            status = RunStatus.FINISHED
            return value
        except optuna.TrialPruned:  # a normal outcome: its curves stay logged
            mlflow.set_tag(names.TAG_OPTUNA_STATE, "PRUNED")
            epochs = len(client.get_metric_history(run_id, names.LOSS))
            mlflow.log_metric(names.EPOCHS_RUN, epochs)
            status = RunStatus.FINISHED
            raise
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            mlflow.set_tag(names.TAG_OPTUNA_STATE, "FAIL")
            mlflow.log_text(message + "\n", names.ERROR_TXT)
            trial.set_user_attr("error", message[:1000])
            raise
        finally:
            if _failed_elsewhere(trial):  # this worker outlived its grace period
                mlflow.set_tag("leukoml.failure", "no heartbeat for the grace period; retried")
                status = RunStatus.KILLED
            mlflow.end_run(RunStatus.to_string(status))
            gc.collect()

    @staticmethod
    def _record(trial: optuna.Trial, result, class_names: list[str]) -> None:
        """What the leaderboard needs, kept in the study so `-e report` needs only storage."""
        for key in (*names.TEST_SUMMARY, names.EPOCHS_RUN, names.TRAIN_SECONDS):
            trial.set_user_attr(key, float(result.metrics[key]))
        trial.set_user_attr(names.PARAM_COUNT, int(result.model.count_params()))
        trial.set_user_attr("class_f1", {
            c: result.metrics[names.test_per_class("f1", c)] for c in class_names
        })


def _failed_elsewhere(trial: optuna.Trial) -> bool:
    """Whether another worker already failed this trial as lost (heartbeat too late)."""
    return any(t.number == trial.number
               for t in _trials(trial.study, optuna.trial.TrialState.FAIL))


def _worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _summary_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One console line per finished trial."""
    backbone = trial.user_attrs.get(names.BACKBONE, "?")
    lr = trial.params.get(names.LEARNING_RATE)
    parts = [f"trial {trial.number} {trial.state.name:<8} {backbone}"]
    if lr is not None:
        parts.append(f"lr={lr:.2e}")
    if trial.value is not None:
        parts.append(f"{study.user_attrs.get('objective_metric', 'objective')}={trial.value:.4f}")
    if names.TEST_MACRO_F1 in trial.user_attrs:
        parts.append(f"test_macro_f1={trial.user_attrs[names.TEST_MACRO_F1]:.4f}")
    if "error" in trial.user_attrs and trial.state.name == "FAIL":
        parts.append(f"error: {trial.user_attrs['error'][:120]}")
    if trial.user_attrs.get(SURPLUS_ATTR):
        parts = [f"trial {trial.number} {trial.user_attrs['error']}"]
    print("  ".join(parts), flush=True)


def run_search(
    space: SearchSpace,
    data: str,
    study_name: str,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
) -> SearchOutcome:
    """Run (or resume, or join) the study; return it with its parent and best runs.

    Must be called inside an active MLflow run: the run `mlflow run` opened.
    If this call creates the study, that run becomes the study's parent run;
    otherwise trials nest under the parent recorded in the study. `n_trials`
    is the study's total: a larger one than the study has tops it up.
    """
    n_trials = n_trials or space.n_trials
    timeout = timeout or space.timeout
    storage_obj = open_storage(storage)
    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("run_search needs an active MLflow run")
    study, parent_run_id = _open_study(space, study_name, storage_obj, active.info.run_id)
    if parent_run_id == active.info.run_id:
        mlflow.set_tags({names.TAG_STUDY_NAME: study_name, names.TAG_ROLE: "study",
                         names.TAG_RUN_NAME: f"study-{study_name}"})
        mlflow.log_text(space.source, f"{names.SEARCH_SPACE_DIR}/search_space.yaml")
    else:
        mlflow.set_tags({names.TAG_STUDY_NAME: study_name, names.TAG_ROLE: "worker",
                         names.TAG_PARENT_RUN: parent_run_id,
                         names.TAG_RUN_NAME: f"worker-{_worker_name()}"})
        log.info("joining study %r: trials nest under parent run %s", study_name, parent_run_id)

    added = fill_queue(study, n_trials, storage)
    queued = len(_trials(study, optuna.trial.TrialState.WAITING))
    print(f"study {study_name!r} in {mask_url(storage or DEFAULT_STORAGE)}: budget "
          f"{max(n_trials, budget_used(study))}, {queued} trial(s) queued ({added} new)",
          flush=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = _Objective(space, data, study_name, parent_run_id, active.info.run_id)
    _work(study, objective, storage_obj, timeout)
    best_run_id = _best_run_id(study)
    if best_run_id:
        MlflowClient().set_tag(parent_run_id, names.TAG_BEST_TRIAL_RUN, best_run_id)
    return SearchOutcome(study, parent_run_id, best_run_id)


def _work(study: optuna.Study, objective: _Objective, storage, timeout: float | None) -> None:
    """Run queued trials until none is left; then, while other workers run
    trials, fail the stale ones (their worker died) and run their retries.

    Optuna fails stale trials only when a worker starts a trial: without the
    wait, the last worker would leave a dead worker's trial RUNNING and the
    study short of its budget. The wait ends when no trial runs, or at the
    timeout; a storage without heartbeat (a journal file) cannot tell a dead
    worker from a slow one, so there the worker leaves at once.
    """
    waiting, running = optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING
    interval = storage.get_heartbeat_interval() if isinstance(
        storage, optuna.storages.RDBStorage) else None
    deadline = None if timeout is None else time.monotonic() + timeout
    watched = None
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        queued = _trials(study, waiting)
        if queued:
            study.optimize(objective, n_trials=len(queued), timeout=left, catch=(Exception,),
                           callbacks=[StudyBudget(), _summary_line], gc_after_trial=True,
                           show_progress_bar=True)
            continue
        numbers = [t.number for t in _trials(study, running)]
        if not numbers or interval is None:
            return
        if numbers != watched:
            print(f"trial(s) {', '.join(map(str, numbers))} running on other workers: waiting, "
                  f"to retry any whose worker is lost (no heartbeat for "
                  f"{storage.grace_period} s)", flush=True)
            watched = numbers
        time.sleep(interval if left is None else max(0.0, min(interval, left)))
        optuna.storages.fail_stale_trials(study)


def _best_run_id(study: optuna.Study) -> str | None:
    try:
        return study.best_trial.user_attrs.get(RUN_ID_ATTR)
    except ValueError:  # no completed trial
        return None


PROMOTED_ATTR = "promoted_run_id"


def promote_best(outcome: SearchOutcome, model_name: str, storage: str | None):
    """Promote the study's best trial once, by the last worker to finish.

    A worker that still sees trials running leaves it to the one that
    finishes them (workers wait for each other, see `_work`, so that is the
    last one). Under a per-study lock in the study storage, a worker that
    finds the best trial already promoted does nothing, so workers finishing
    at once promote once; a resumed study whose best trial changed is
    promoted again. Queued trials left by a timeout do not hold promotion
    up: the best so far is promoted. Returns the `PromotionResult` or None.
    """
    from leukoml.registry import promote

    study = outcome.study
    running = _trials(study, optuna.trial.TrialState.RUNNING)
    if running:
        print(f"{len(running)} trial(s) still running elsewhere: the last worker promotes",
              flush=True)
        return None
    queued = _trials(study, optuna.trial.TrialState.WAITING)
    if queued:
        print(f"{len(queued)} queued trial(s) not run (timeout): promoting the best so far",
              flush=True)
    best_run_id = _best_run_id(study)
    if not best_run_id:
        return None
    lock_url = (storage or DEFAULT_STORAGE).removeprefix("journal:")
    with storage_lock(storage, f"{model_name}.study.{study.study_name}"):
        if study.user_attrs.get(PROMOTED_ATTR) == best_run_id:
            print(f"best trial run {best_run_id} already promoted", flush=True)
            return None
        result = promote(best_run_id, model_name, lock_url=lock_url)
        study.set_user_attr(PROMOTED_ATTR, best_run_id)
    return result

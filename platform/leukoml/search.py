"""An Optuna study over backbone tiers and training hyper-parameters.

One study = one MLflow parent run; each trial = one nested child run that
logs what `-e train` logs, plus the Optuna tags. The study lives in an
Optuna storage (SQLite by default, any RDB URL, or a journal file), so
running the same command again resumes it and several workers can share it.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
import warnings
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
_HEARTBEAT_SECONDS = 30
_GRACE_SECONDS = 120
_PARENT_WAIT_SECONDS = 120


# --- storage -----------------------------------------------------------------------

def mask_url(url: str) -> str:
    """The storage URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class _MarkStaleRunKilled(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Retry a trial whose worker died, and mark its MLflow run KILLED.

    Optuna notices the dead worker (no heartbeat for the grace period), sets
    the trial FAIL and calls this; the retry re-queues the same parameters.
    """

    def __call__(self, study, trial) -> None:
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id:
            client = MlflowClient()
            client.set_tag(run_id, names.TAG_OPTUNA_STATE, "FAIL")
            client.set_tag(run_id, "leukoml.failure", "worker lost (no heartbeat); retried")
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        log.warning("trial %d lost its worker; marked FAIL and queued again", trial.number)
        super().__call__(study, trial)


def open_storage(url: str | None) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`; fails at once, naming the URL, if unreachable.

    RDB URLs (sqlite, postgresql, mysql) get a heartbeat, so a worker killed
    mid-trial has its trial failed and retried. A path ending in `.journal`
    or `.log` (or `journal:<path>`) is a journal file, for several local
    workers without a database server; it has no heartbeat.
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
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True},
            heartbeat_interval=_HEARTBEAT_SECONDS,
            grace_period=_GRACE_SECONDS,
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
    """Trials that count toward `n_trials`, across all workers.

    Every trial counts once, except one that lost its worker and was queued
    again: its retry stands in for it. (`optuna.study.MaxTrialsCallback` can
    only filter by state, which would count such a trial twice.)
    """
    trials = study.get_trials(deepcopy=False)
    replaced = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    return sum(
        1 for t in trials
        if not (t.state == optuna.trial.TrialState.FAIL and t.number in replaced)
    )


class StudyBudget:
    """Stops this worker once the study as a whole has used its budget."""

    def __init__(self, n_trials: int):
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial) -> None:
        if budget_used(study) >= self.n_trials:
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
        deadline = time.monotonic() + _PARENT_WAIT_SECONDS
        while PARENT_RUN_ATTR not in study.user_attrs:  # its creator is still setting up
            if time.monotonic() > deadline:
                raise LeukomlError(f"study {study_name!r} has no MLflow parent run recorded")
            time.sleep(1)
        return study, study.user_attrs[PARENT_RUN_ATTR]
    if space.sampler["name"] == "grid":  # one trial per listed backbone, in order
        for tier, backbones in space.tiers.items():
            for backbone in backbones:
                study.enqueue_trial({names.TIER: tier, f"{names.BACKBONE}_{tier}": backbone})
    study.set_user_attr("objective_metric", space.objective_metric)
    study.set_user_attr(PARENT_RUN_ATTR, run_id)  # last: joining workers wait for it
    return study, run_id


class _Objective:
    """Runs one trial as a nested MLflow run; the study survives any failure."""

    def __init__(self, space: SearchSpace, data: str, study_name: str, parent_run_id: str):
        self.space, self.data, self.study_name = space, data, study_name
        self.parent_run_id = parent_run_id
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
        except optuna.TrialPruned:
            mlflow.set_tag(names.TAG_OPTUNA_STATE, "PRUNED")  # its curves stay logged
            status = RunStatus.KILLED
            raise
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            mlflow.set_tag(names.TAG_OPTUNA_STATE, "FAIL")
            mlflow.log_text(message + "\n", names.ERROR_TXT)
            trial.set_user_attr("error", message[:1000])
            raise
        finally:
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
    otherwise trials nest under the parent recorded in the study.
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

    used = budget_used(study)
    remaining = n_trials - used
    print(f"study {study_name!r} in {mask_url(storage or DEFAULT_STORAGE)}: "
          f"{used} trial(s) so far, budget {n_trials}", flush=True)
    if remaining > 0:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(
            _Objective(space, data, study_name, parent_run_id),
            n_trials=remaining,
            timeout=timeout,
            catch=(Exception,),
            callbacks=[StudyBudget(n_trials), _summary_line],
            gc_after_trial=True,
            show_progress_bar=True,
        )
    best_run_id = _best_run_id(study)
    if best_run_id:
        MlflowClient().set_tag(parent_run_id, names.TAG_BEST_TRIAL_RUN, best_run_id)
    return SearchOutcome(study, parent_run_id, best_run_id)


def _best_run_id(study: optuna.Study) -> str | None:
    try:
        return study.best_trial.user_attrs.get(RUN_ID_ATTR)
    except ValueError:  # no completed trial
        return None


PROMOTED_ATTR = "promoted_run_id"


def promote_best(outcome: SearchOutcome, model_name: str, storage: str | None):
    """Promote the study's best trial once, by the last worker to finish.

    A worker that still sees trials running or queued leaves it to the one
    that finishes them. Under a per-study lock (the registry's, in the study
    storage), a worker that finds the best trial already promoted does
    nothing, so racing workers promote once; a resumed study whose best
    trial changed is promoted again. Returns the `PromotionResult` or None.
    """
    from leukoml.registry import promote, promotion_lock

    study = outcome.study
    unfinished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,
                                                          optuna.trial.TrialState.WAITING))
    if unfinished:
        print(f"{len(unfinished)} trial(s) still running elsewhere: the last worker promotes",
              flush=True)
        return None
    best_run_id = _best_run_id(study)
    if not best_run_id:
        return None
    url = storage or DEFAULT_STORAGE
    with promotion_lock(url, f"{model_name}.study.{study.study_name}"):
        if study.user_attrs.get(PROMOTED_ATTR) == best_run_id:
            print(f"best trial run {best_run_id} already promoted", flush=True)
            return None
        result = promote(best_run_id, model_name, lock_url=url)
        study.set_user_attr(PROMOTED_ATTR, best_run_id)
    return result

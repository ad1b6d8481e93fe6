"""The search entry point: run, resume or join a study, then promote its best trial.

One study = one MLflow parent run; each trial = one nested child run that
logs what `-e train` logs, plus the Optuna tags. Running the same command
again resumes the study, and several workers can share it
(docs/scale-out.md).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import mlflow
import optuna
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from leukoml import names
from leukoml.errors import LeukomlError
from leukoml.locks import mask_url
from leukoml.study.objective import (
    FIRST_AFTER_FIT_SECONDS,
    NotStarted,
    Objective,
    SurplusTrial,
    worker_name,
)
from leukoml.study.queue import StudyBudget, budget_used, fill_queue, trials_in
from leukoml.study.results import AnytimeCurve, log_figures, log_settings, started_at
from leukoml.study.space import SearchSpace
from leukoml.study.storage import DEFAULT_STORAGE, open_storage, storage_lock

log = logging.getLogger(__name__)
# Heartbeats and stale-trial retries are experimental in Optuna, and chosen on purpose.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

_PARENT_WAIT_SECONDS = 120


def _ran(record: logging.LogRecord) -> bool:
    """Optuna logs a trial's exception with its traceback; a trial that never ran (surplus,
    or not started for lack of time) has its one line from `_summary_line` instead."""
    return not (record.exc_info and isinstance(record.exc_info[1], (SurplusTrial, NotStarted)))


logging.getLogger("optuna.study._optimize").addFilter(_ran)


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


@dataclass
class SearchOutcome:
    study: optuna.Study
    parent_run_id: str
    best_run_id: str | None


def _open_study(space: SearchSpace, study_name: str, storage, run_id: str,
                n_trials: int) -> tuple[optuna.Study, str]:
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
        while names.PARENT_RUN_ATTR not in study.user_attrs:  # its creator is still setting up
            if time.monotonic() > deadline:
                raise LeukomlError(f"study {study_name!r} has no MLflow parent run recorded")
            time.sleep(1)
        return study, study.user_attrs[names.PARENT_RUN_ATTR]
    if space.sampler["name"] == "grid":  # one trial per listed backbone, in order
        for tier, backbones in space.tiers.items():
            for backbone in backbones:
                study.enqueue_trial({names.TIER: tier, f"{names.BACKBONE}_{tier}": backbone},
                                    user_attrs={names.TICKET_ATTR: True})
    portfolio = space.portfolio[:n_trials]  # trials of the budget, run before the sampler's
    for params in portfolio:
        study.enqueue_trial(params, user_attrs={names.TICKET_ATTR: True}, skip_if_exists=True)
    if portfolio:
        print(f"portfolio: {len(portfolio)} configuration(s) first ("
              f"{', '.join(_portfolio_backbone(p) for p in portfolio)}), then the sampler",
              flush=True)
    study.set_user_attr(names.OBJECTIVE_ATTR, space.objective_metric)
    study.set_metric_names([space.objective_metric])  # dashboards and plots name the value
    started_at(study)
    study.set_user_attr(names.PARENT_RUN_ATTR, run_id)  # last: joining workers wait for it
    return study, run_id


def _portfolio_backbone(params: dict) -> str:
    tier = params.get(names.TIER)
    return params.get(f"{names.BACKBONE}_{tier}", "any backbone")


def _summary_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One console line per finished trial."""
    backbone = trial.user_attrs.get(names.BACKBONE, "?")
    lr = trial.user_attrs.get(names.CONFIG_ATTR, trial.params).get(names.LEARNING_RATE)
    parts = [f"trial {trial.number} {trial.state.name:<8} {backbone}"]
    if lr is not None:
        parts.append(f"lr={lr:.2e}")
    if trial.value is not None:
        parts.append(f"{study.user_attrs.get(names.OBJECTIVE_ATTR, 'objective')}={trial.value:.4f}")
    if names.TEST_MACRO_F1 in trial.user_attrs:
        parts.append(f"test_macro_f1={trial.user_attrs[names.TEST_MACRO_F1]:.4f}")
    if trial.user_attrs.get(names.STOPPED_BY) == names.STOPPED_BY_DEADLINE:
        parts.append("stopped by the study's deadline: its best epoch so far is kept")
    if names.ERROR_ATTR in trial.user_attrs and trial.state.name == "FAIL":
        parts.append(f"error: {trial.user_attrs[names.ERROR_ATTR][:120]}")
    if trial.user_attrs.get(names.SURPLUS_ATTR):
        parts = [f"trial {trial.number} {trial.user_attrs[names.ERROR_ATTR]}"]
    if names.NOT_STARTED_ATTR in trial.user_attrs:
        parts = [f"trial {trial.number} {trial.user_attrs[names.NOT_STARTED_ATTR]}"]
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
    started = time.monotonic()
    n_trials = n_trials or space.n_trials
    timeout = timeout or space.timeout
    storage_obj = open_storage(storage)
    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("run_search needs an active MLflow run")
    study, parent_run_id = _open_study(space, study_name, storage_obj, active.info.run_id,
                                       n_trials)
    if parent_run_id == active.info.run_id:
        mlflow.set_tags({names.TAG_STUDY_NAME: study_name, names.TAG_ROLE: names.Role.STUDY,
                         names.TAG_RUN_NAME: f"study-{study_name}"})
        mlflow.log_text(space.source, f"{names.SEARCH_SPACE_DIR}/search_space.yaml")
    else:
        mlflow.set_tags({names.TAG_STUDY_NAME: study_name, names.TAG_ROLE: names.Role.WORKER,
                         names.TAG_PARENT_RUN: parent_run_id,
                         names.TAG_RUN_NAME: f"worker-{worker_name()}"})
        log.info("joining study %r: trials nest under parent run %s", study_name, parent_run_id)

    added = fill_queue(study, n_trials, storage)
    queued = len(trials_in(study, optuna.trial.TrialState.WAITING))
    budget = max(n_trials, budget_used(study))
    print(f"study {study_name!r} in {mask_url(storage or DEFAULT_STORAGE)}: budget "
          f"{budget}, {queued} trial(s) queued ({added} new)", flush=True)
    if parent_run_id == active.info.run_id:
        log_settings(parent_run_id, study_name, storage or DEFAULT_STORAGE, budget, timeout)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    deadline = None if timeout is None else started + timeout
    objective = Objective(space, data, study_name, parent_run_id, active.info.run_id, deadline)
    if _prepare_ahead(objective, parent_run_id, deadline):
        _work(study, objective, storage_obj, deadline,
              AnytimeCurve(parent_run_id, started_at(study)))
    log_figures(parent_run_id, study, time.monotonic() - started)
    _finish_parent(study, parent_run_id, active.info.run_id)
    best_run_id = _best_run_id(study)
    if best_run_id:
        MlflowClient().set_tag(parent_run_id, names.TAG_BEST_TRIAL_RUN, best_run_id)
    return SearchOutcome(study, parent_run_id, best_run_id)


def _prepare_ahead(objective: Objective, parent_run_id: str, deadline: float | None) -> bool:
    """Prepare the data before the first trial and say what it took of the budget, in one
    line and as the parent's prepare_<phase>_seconds; False if too little is left for a
    trial (less than the time a trial keeps for its evaluation alone)."""
    seconds = objective.prepare_ahead()
    MlflowClient().log_batch(parent_run_id, metrics=[
        Metric(names.prepare_seconds(phase), value, int(time.time() * 1000), 0)
        for phase, value in seconds.items()])
    spent = sum(seconds.values())
    left = None if deadline is None else deadline - time.monotonic()
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if v >= 0.5) or "reused"
    print(f"data prepared in {spent:.0f} s ({phases})"
          + ("" if left is None else f"; {max(left, 0):.0f} s of the budget left for trials"),
          flush=True)
    if left is not None and left < FIRST_AFTER_FIT_SECONDS:
        print(f"not starting a trial: preparing the data left {max(left, 0):.0f} s of the "
              f"budget; run `leukoml prepare --data {objective.data}` once (or give a longer "
              "timeout), then search", flush=True)
        return False
    return True


def _finish_parent(study: optuna.Study, parent_run_id: str, run_id: str) -> None:
    """A study whose leader was killed and that a later run finished ends FINISHED: its
    parent run (KILLED or FAILED when its process died) is marked so, naming the run."""
    if parent_run_id == run_id:
        return  # `mlflow run` ends our own run
    states = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    if trials_in(study, *states):
        return  # not finished yet: the last worker will do it
    client = MlflowClient()
    if client.get_run(parent_run_id).info.status in ("KILLED", "FAILED"):
        client.set_tag(parent_run_id, names.TAG_FINISHED_BY, run_id)
        client.set_terminated(parent_run_id, "FINISHED")
        print(f"study parent run {parent_run_id} ended FINISHED (its process had died; "
              f"the study was finished by run {run_id})", flush=True)


def _work(study: optuna.Study, objective: Objective, storage, deadline: float | None,
          curve: AnytimeCurve | None = None) -> None:
    """Run queued trials until none is left; then, while other workers run
    trials, fail the stale ones (their worker died) and run their retries.

    Optuna fails stale trials only when a worker starts a trial: without the
    wait, the last worker would leave a dead worker's trial RUNNING and the
    study short of its budget. The wait ends when no trial runs, or at the
    timeout; a storage without heartbeat (a journal file) cannot tell a dead
    worker from a slow one, so there the worker leaves at once.
    """
    waiting, running = optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING
    callbacks = [StudyBudget(), _summary_line, *([curve] if curve else [])]
    interval = storage.get_heartbeat_interval() if isinstance(
        storage, optuna.storages.RDBStorage) else None
    watched = None
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if (left is not None and left <= 0) or getattr(objective, "out_of_time", False):
            return
        queued = trials_in(study, waiting)
        if queued:
            study.optimize(objective, n_trials=len(queued), timeout=left, catch=(Exception,),
                           callbacks=callbacks, gc_after_trial=True,
                           show_progress_bar=True)
            continue
        numbers = [t.number for t in trials_in(study, running)]
        if not numbers or interval is None:
            return
        if numbers != watched:
            print(f"trial(s) {', '.join(map(str, numbers))} still marked RUNNING by another "
                  f"process (a live worker, or one that was killed): waiting; a trial without "
                  f"a heartbeat for {storage.grace_period} s is failed and retried here",
                  flush=True)
            watched = numbers
        time.sleep(interval if left is None else max(0.0, min(interval, left)))
        optuna.storages.fail_stale_trials(study)


def _best_run_id(study: optuna.Study) -> str | None:
    try:
        return study.best_trial.user_attrs.get(names.RUN_ID_ATTR)
    except ValueError:  # no completed trial
        return None


def promote_best(outcome: SearchOutcome, model_name: str, storage: str | None,
                 ensemble: int = 0) -> list:
    """Promote the study's best trial once, by the last worker to finish; then, with
    `ensemble` >= 2, the average of that many best trials as a challenger.

    A worker that still sees trials running leaves it to the one that
    finishes them (workers wait for each other, see `_work`, so that is the
    last one). Under a per-study lock in the study storage, a worker that
    finds the best trial already promoted does nothing, so workers finishing
    at once promote once; a resumed study whose best trial changed is
    promoted again. Queued trials left by a timeout do not hold promotion
    up: the best so far is promoted. Returns the `PromotionResult`s.
    """
    from leukoml.registry import promote
    from leukoml.study.ensemble import build_ensemble

    study = outcome.study
    running = trials_in(study, optuna.trial.TrialState.RUNNING)
    if running:
        print(f"{len(running)} trial(s) still running elsewhere: the last worker promotes",
              flush=True)
        return []
    queued = trials_in(study, optuna.trial.TrialState.WAITING)
    if queued:
        print(f"{len(queued)} queued trial(s) not run (timeout): promoting the best so far",
              flush=True)
    best_run_id = _best_run_id(study)
    if not best_run_id:
        return []
    lock_url = storage or DEFAULT_STORAGE
    with storage_lock(storage, f"{model_name}.study.{study.study_name}"):
        if study.user_attrs.get(names.PROMOTED_ATTR) == best_run_id:
            print(f"best trial run {best_run_id} already promoted", flush=True)
            return []
        results = [promote(best_run_id, model_name, lock_url=lock_url)]
        if results[0].promoted:
            MlflowClient().log_metric(outcome.parent_run_id, names.CHAMPION_TEST_MACRO_F1,
                                      results[0].candidate_f1)
        study.set_user_attr(names.PROMOTED_ATTR, best_run_id)
        built = build_ensemble(study, ensemble, outcome.parent_run_id) if ensemble >= 2 else None
        if built is not None:
            results.append(promote(built.run_id, model_name, lock_url=lock_url))
    return results

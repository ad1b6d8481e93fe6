"""The study's budget as a queue: `n_trials` trials, run, running or queued (WAITING).

Workers only run queued trials. Optuna pops a queued trial atomically, so
however many workers ask at once, at most `n_trials` trials train.
"""

from __future__ import annotations

import optuna

from leukoml import names
from leukoml.study.storage import storage_lock


def trials_in(study: optuna.Study, *states: optuna.trial.TrialState) -> list:
    return study.get_trials(deepcopy=False, states=states)


def budget_used(study: optuna.Study) -> int:
    """Trials that count toward `n_trials`, across all workers: run, running or queued.

    Every trial counts once, except one that lost its worker and was queued
    again (its retry stands in for it) and a surplus trial or one left unstarted
    for lack of time, which never ran (see `Objective`).
    (`optuna.study.MaxTrialsCallback` can only filter by state, which would
    count a retried trial twice.)
    """
    trials = study.get_trials(deepcopy=False)
    replaced = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    return sum(
        1 for t in trials
        if not (t.state == optuna.trial.TrialState.FAIL
                and (t.number in replaced or t.user_attrs.get(names.SURPLUS_ATTR)
                     or t.user_attrs.get(names.NOT_STARTED_ATTR)))
    )


def fill_queue(study: optuna.Study, n_trials: int, storage: str | None) -> int:
    """Queue trials until the study counts `n_trials`; return how many were added.

    Under the storage's lock, so workers starting at once do not both top up.
    Queued trials fix no parameter: the sampler picks them when one is run.
    """
    with storage_lock(storage, f"study.{study.study_name}.queue"):
        missing = n_trials - budget_used(study)
        for _ in range(missing):
            study.enqueue_trial({}, user_attrs={names.TICKET_ATTR: True})
    return max(missing, 0)


class StudyBudget:
    """Stops this worker once no queued trial is left for it."""

    def __call__(self, study: optuna.Study, trial) -> None:
        if not trials_in(study, optuna.trial.TrialState.WAITING):
            study.stop()

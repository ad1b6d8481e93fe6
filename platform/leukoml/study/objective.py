"""One trial = one nested MLflow run around one `train_and_log` call, with pruning."""

from __future__ import annotations

import gc
import os
import shutil
import socket
import time
from pathlib import Path

import mlflow
import optuna
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from leukoml import names
from leukoml.backbones import get_backbone
from leukoml.config import TrainConfig
from leukoml.study.queue import trials_in
from leukoml.study.dimensions import Fixed
from leukoml.study.space import BACKBONE_DEFAULT, SearchSpace
from leukoml.tracking import start_run_with_system_metrics


class SurplusTrial(Exception):
    """A trial Optuna created because another worker popped the last queued one."""


# Seconds kept after the first trial's fit, before any trial measured it: scoring 240
# validation and test images, Grad-CAM and logging the model took 6-17 s on 2 busy cores.
FIRST_AFTER_FIT_SECONDS = 30.0


class NotStarted(Exception):
    """A trial left unstarted: the time left cannot hold its minimum epochs."""


class Objective:
    """Runs one trial as a nested MLflow run; the study survives any failure."""

    def __init__(self, space: SearchSpace, data: str, study_name: str, parent_run_id: str,
                 worker_run_id: str, deadline: float | None = None):
        # TensorFlow now, not inside the first trial: a slow import must not hold
        # up that trial's heartbeat thread on a busy machine.
        import leukoml.training  # noqa: F401

        self.space, self.data, self.study_name = space, data, study_name
        self.parent_run_id, self.worker_run_id = parent_run_id, worker_run_id
        self.deadline = deadline  # time.monotonic() at which the study's budget ends
        self.experiment_id = MlflowClient().get_run(parent_run_id).info.experiment_id
        self._prepared = {}  # DataSpec -> PreparedData, decoded once per worker
        self.out_of_time = False  # a trial was left unstarted: this worker starts no more

    def prepare_ahead(self) -> dict[str, float]:
        """Prepare the data before any trial, at the size a first trial most likely uses: the
        preparation is timed apart, no trial's epochs pay for it, and the index it builds
        (siblings, copies) serves every other size. Seconds per phase, 0 when reused."""
        space = self.space
        if space.image_size == BACKBONE_DEFAULT:
            size = min(max(e.min_size, min(e.default_size, space.max_image_size))
                       for e in map(get_backbone, space.backbones))
        else:
            size = space.image_size.value if isinstance(space.image_size, Fixed) else (
                space.image_size.values[0])
        crop = space.dimensions.get("crop")
        first = TrainConfig(
            data=self.data, backbone=space.backbones[0], image_size=size, seed=space.seed,
            group_by=space.split.get("group_by") or "siblings",
            drop_cross_split_duplicates=bool(space.split.get("drop_cross_split_duplicates")),
            **({} if crop is None else {"crop": crop.value if isinstance(crop, Fixed)
                                        else crop.values[0]}))
        return self._dataset(first).seconds

    def _dataset(self, config: TrainConfig):
        from leukoml.data import prepare_dataset

        spec = config.data_spec()
        if spec not in self._prepared:
            self._prepared[spec] = prepare_dataset(spec)
        return self._prepared[spec]

    def __call__(self, trial: optuna.Trial) -> float:
        from leukoml.study.pruning import Pruning
        from leukoml.training import train_and_log
        from leukoml.training.callbacks import Deadline, EpochBudget

        if not trial.user_attrs.get(names.TICKET_ATTR):
            # Between this worker's look at the queue and its ask, another worker
            # popped the last queued trial, so Optuna created a new one: fail it
            # unrun (it does not count, see `budget_used`) and stop.
            message = "not run: the budget was used up by other workers"
            trial.set_user_attr(names.SURPLUS_ATTR, True)
            trial.set_user_attr(names.ERROR_ATTR, message)  # what the leaderboard shows
            trial.study.stop()
            raise SurplusTrial(message)
        config = self.space.sample(trial, self.data)
        self._check_time_left(trial, config)
        client = MlflowClient()
        run = client.create_run(
            self.experiment_id,
            run_name=names.trial_run_name(trial.number, config.backbone),
            tags={
                names.TAG_PARENT_RUN: self.parent_run_id,
                names.TAG_ROLE: names.Role.TRIAL,
                names.TAG_OPTUNA_STUDY: self.study_name,
                names.TAG_OPTUNA_TRIAL: str(trial.number),
                names.TAG_OPTUNA_STATE: "RUNNING",
                names.TAG_WORKER: worker_name(),
                names.TAG_WORKER_RUN: self.worker_run_id,
            },
        )
        run_id = run.info.run_id
        trial.set_user_attr(names.RUN_ID_ATTR, run_id)
        trial.set_user_attr(names.BACKBONE, config.backbone)
        trial.set_user_attr(names.CONFIG_ATTR, self.space.searched(config))
        start_run_with_system_metrics(run_id=run_id, nested=True)
        status, budget = RunStatus.FAILED, None
        backup = self._backup_dir(trial)
        try:
            data = self._dataset(config)
            deadline = None if self.deadline is None else Deadline(self.deadline)
            callbacks = [Pruning(trial, self.space.objective_metric, deadline)]
            if deadline is not None:
                budget = EpochBudget(self.deadline, config.max_epochs, self.space.min_epochs,
                                     after_fit=_after_fit_seconds(trial.study))
                callbacks += [budget, deadline]
            result = train_and_log(config, data, callbacks=callbacks, backup_dir=backup)
            value = result.objective(self.space.objective_metric)
            self._record(trial, result, data.class_names)
            mlflow.log_metric("objective", value)
            if deadline is not None and deadline.reached_at_epoch is not None:
                # Its best weights so far are a model like any other: the trial competes
                # (COMPLETE, so Optuna's best trial and the sampler see it), marked.
                trial.set_user_attr(names.STOPPED_BY, names.STOPPED_BY_DEADLINE)
                mlflow.set_tag(names.TAG_STOPPED, (
                    f"stopped by the study's deadline in epoch {deadline.reached_at_epoch + 1}; "
                    f"its best weights so far are the run's model"))
            mlflow.set_tag(names.TAG_OPTUNA_STATE, "COMPLETE")
            if budget is not None and budget.fit_ended is not None:
                trial.set_user_attr(names.AFTER_FIT_SECONDS_ATTR,
                                    time.monotonic() - budget.fit_ended)
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
            trial.set_user_attr(names.ERROR_ATTR, message[:1000])
            raise
        finally:
            if budget is not None and budget.pace is not None:
                trial.set_user_attr(names.EPOCH_SECONDS_ATTR, budget.pace)
                trial.set_user_attr(names.FIRST_EPOCH_SECONDS_ATTR, budget.times[0])
            if _failed_elsewhere(trial):  # this worker outlived its grace period
                mlflow.set_tag(names.TAG_FAILURE, "no heartbeat for the grace period; retried")
                status = RunStatus.KILLED
            mlflow.end_run(RunStatus.to_string(status))
            shutil.rmtree(backup, ignore_errors=True)  # kept only if this process is killed
            gc.collect()

    def _check_time_left(self, trial: optuna.Trial, config: TrainConfig) -> None:
        """Leave a trial unstarted (and the study stopped) when an earlier trial of the same
        backbone and input size shows that its `min_epochs` (the first traces the graph,
        which costs more) and the evaluation after them no longer fit before the deadline.
        Without such a trial it starts: `EpochBudget` sizes it, and the deadline stops it
        as a last resort."""
        if self.deadline is None:
            return
        after_fit = _after_fit_seconds(trial.study)
        needs = [t.user_attrs[names.FIRST_EPOCH_SECONDS_ATTR]
                 + (self.space.min_epochs - 1) * t.user_attrs[names.EPOCH_SECONDS_ATTR]
                 + max(t.user_attrs[names.EPOCH_SECONDS_ATTR], after_fit)
                 for t in trial.study.get_trials(deepcopy=False)
                 if names.FIRST_EPOCH_SECONDS_ATTR in t.user_attrs
                 and t.user_attrs.get(names.BACKBONE) == config.backbone
                 and t.user_attrs.get(names.CONFIG_ATTR, {}).get(names.IMAGE_SIZE)
                 == config.image_size]
        left = self.deadline - time.monotonic()
        if not needs or min(needs) <= left:
            return
        message = (f"not started: {config.backbone} at {config.image_size} px needs "
                   f"~{min(needs):.0f} s for its {self.space.min_epochs} minimum epochs and "
                   f"their evaluation, {max(left, 0):.0f} s of the study's budget are left")
        trial.set_user_attr(names.NOT_STARTED_ATTR, message)
        self.out_of_time = True
        trial.study.stop()
        raise NotStarted(message)

    def _backup_dir(self, trial: optuna.Trial) -> Path:
        """Where Keras backs the trial up each epoch: a retry of a trial whose worker was
        killed (Optuna's `failed_trial`) finds the lost trial's epochs and resumes."""
        from leukoml.data import cache_root

        frozen = trial.study.get_trials(deepcopy=False)[trial.number]
        original = frozen.system_attrs.get("failed_trial", trial.number)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.study_name)
        return cache_root() / "backups" / safe / f"trial-{original}"

    @staticmethod
    def _record(trial: optuna.Trial, result, class_names: list[str]) -> None:
        """What the leaderboard needs, kept in the study so `-e report` needs only storage."""
        for key in names.TRIAL_RECORD:
            value = result.metrics[key]
            trial.set_user_attr(key, int(value) if key == names.EPOCHS_RUN else float(value))
        trial.set_user_attr(names.PARAM_COUNT, int(result.model.count_params()))
        trial.set_user_attr(names.CLASS_F1_ATTR, {
            c: result.metrics[names.test_per_class("f1", c)] for c in class_names
        })


def _after_fit_seconds(study: optuna.Study) -> float:
    """Seconds a trial needs after its fit (scoring with TTA, Grad-CAM, logging the model):
    the most an earlier complete trial of the study took, else a first guess."""
    measured = [t.user_attrs[names.AFTER_FIT_SECONDS_ATTR] for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if names.AFTER_FIT_SECONDS_ATTR in t.user_attrs]
    return max(measured, default=FIRST_AFTER_FIT_SECONDS)


def _failed_elsewhere(trial: optuna.Trial) -> bool:
    """Whether another worker already failed this trial as lost (heartbeat too late)."""
    return any(t.number == trial.number
               for t in trials_in(trial.study, optuna.trial.TrialState.FAIL))


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"

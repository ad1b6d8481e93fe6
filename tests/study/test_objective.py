"""One trial in process: pruning, the study's deadline, and resuming a killed trial."""

from __future__ import annotations

import time

import keras
import mlflow
import optuna
import pytest
from helpers import TINY
from mlflow.tracking import MlflowClient

from leukoml import names
from leukoml.config import TrainConfig
from leukoml.data import prepare_dataset
from leukoml.names import TICKET_ATTR
from leukoml.study import Objective, parse_search_space
from leukoml.study.search import _work

DATA = "synthetic:per_class=20,size=32"
SPACE = {"tiers": {"low": ["Asghar2022CNN"]}, "image_size": 32, "max_image_size": 32,
         "learning_rate": 1e-3, "crop": "none", "augment": "none", "tta": "none",
         "batch_size": 16}


def run_one(study: optuna.Study, objective: Objective) -> optuna.trial.FrozenTrial:
    study.enqueue_trial({}, user_attrs={TICKET_ATTR: True})
    study.optimize(objective, n_trials=1, catch=(Exception,))
    return study.trials[-1]


def test_a_pruned_trial_keeps_its_curve_and_its_run_finishes(tracking_uri):
    space = parse_search_space({**SPACE, "max_epochs": 4, "objective": {"metric": "val_loss"}})
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    with mlflow.start_run() as parent:
        objective = Objective(space, DATA, "p", parent.info.run_id, parent.info.run_id)
        trial = run_one(study, objective)
    assert trial.state == optuna.trial.TrialState.PRUNED  # any val_loss is above 0
    run = mlflow.get_run(trial.user_attrs[names.RUN_ID_ATTR])
    assert run.info.status == "FINISHED"
    assert run.data.tags[names.TAG_OPTUNA_STATE] == "PRUNED"
    assert run.data.metrics[names.EPOCHS_RUN] == 1 == len(trial.intermediate_values)
    assert names.TEST_MACRO_F1 not in run.data.metrics


def test_the_deadline_stops_a_trial_too_long_for_it_and_its_model_competes(tracking_uri):
    """A trial that cannot shrink (min_epochs = max_epochs) meets the deadline as a last
    resort; before, it was PRUNED and the study had nothing to promote."""
    space = parse_search_space({**SPACE, "max_epochs": 5000, "min_epochs": 5000,
                                "patience": 5000, "pruner": {"name": "none"}})
    study = optuna.create_study(direction="maximize")
    with mlflow.start_run() as parent:
        objective = Objective(space, DATA, "d", parent.info.run_id, parent.info.run_id,
                              deadline=time.monotonic() + 25.0)
        trial = run_one(study, objective)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs[names.STOPPED_BY] == names.STOPPED_BY_DEADLINE
    assert study.best_trial.number == trial.number and trial.value is not None
    run = mlflow.get_run(trial.user_attrs[names.RUN_ID_ATTR])
    assert run.info.status == "FINISHED" and "deadline" in run.data.tags[names.TAG_STOPPED]
    assert run.data.tags[names.TAG_OPTUNA_STATE] == "COMPLETE"
    assert run.data.metrics[names.EPOCHS_RUN] < 5000
    assert mlflow.search_logged_models(filter_string=f"source_run_id = '{run.info.run_id}'",
                                       output_format="list")  # the best-so-far model is kept


class Clock:
    """A wall clock that advances ten seconds per epoch: `Tick` moves it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tick(keras.callbacks.Callback):
    def __init__(self, clock: Clock):
        super().__init__()
        self.clock = clock

    def on_epoch_end(self, epoch, logs=None):
        self.clock.now += 10.0


def test_a_trial_fits_its_epochs_and_cosine_schedule_into_the_time_it_has(tracking_uri):
    """40 planned epochs of 10 s with 75 s left: 6 fit with one epoch's time kept for the
    evaluation, and the cosine decay reaches its floor at the sixth."""
    from leukoml.training import recipe, train_and_log
    from leukoml.training.callbacks import EpochBudget

    config = TrainConfig(**{**TINY, "data": DATA, "max_epochs": 40, "patience": 40,
                            "schedule": "cosine", "warmup_epochs": 1})
    data = prepare_dataset(config.data_spec())
    clock = Clock()
    budget = EpochBudget(75.0, config.max_epochs, min_epochs=2, clock=clock)
    with mlflow.start_run() as run:
        result = train_and_log(config, data, callbacks=[Tick(clock), budget], log_model=False)
    assert len(result.history["loss"]) == budget.planned == 6
    client = MlflowClient()
    planned = [m.value for m in client.get_metric_history(run.info.run_id,
                                                          names.PLANNED_EPOCHS)]
    assert planned == [6] * 6
    final_rate = float(result.model.optimizer.learning_rate)  # the schedule at the last step
    assert final_rate == pytest.approx(config.peak_learning_rate() * recipe.COSINE_FLOOR,
                                       rel=1e-3)


def test_a_trial_without_the_time_for_its_minimum_epochs_is_not_started(tracking_uri):
    space = parse_search_space({**SPACE, "max_epochs": 10, "min_epochs": 3})
    study = optuna.create_study(direction="maximize")
    earlier = optuna.trial.create_trial(value=0.5, user_attrs={  # 100 s an epoch, 32 px
        names.BACKBONE: "Asghar2022CNN", names.CONFIG_ATTR: {names.IMAGE_SIZE: 32},
        names.FIRST_EPOCH_SECONDS_ATTR: 130.0, names.EPOCH_SECONDS_ATTR: 100.0})
    study.add_trial(earlier)
    for _ in range(3):
        study.enqueue_trial({}, user_attrs={TICKET_ATTR: True})
    with mlflow.start_run() as parent:
        deadline = time.monotonic() + 400.0  # 3 epochs and the evaluation need 430 s
        objective = Objective(space, DATA, "n", parent.info.run_id, parent.info.run_id,
                              deadline=deadline)
        _work(study, objective, None, deadline)
    trial = study.trials[1]
    assert [t.state.name for t in study.trials[2:]] == ["WAITING", "WAITING"]  # one line only
    assert trial.state == optuna.trial.TrialState.FAIL
    assert "not started" in trial.user_attrs[names.NOT_STARTED_ATTR]
    assert "3 minimum epochs" in trial.user_attrs[names.NOT_STARTED_ATTR]
    assert names.RUN_ID_ATTR not in trial.user_attrs  # no MLflow run was created
    children = mlflow.search_runs(filter_string=f"tags.`{names.TAG_PARENT_RUN}` = "
                                                f"'{parent.info.run_id}'")
    assert children.empty


class Crash(keras.callbacks.Callback):
    """Dies at the end of an epoch, as a killed worker would (no cleanup)."""

    def __init__(self, at_epoch: int):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt("killed")


def test_a_killed_run_resumes_from_its_last_finished_epoch(tracking_uri, tmp_path):
    from leukoml.training import train_and_log

    config = TrainConfig(**{**TINY, "data": DATA, "max_epochs": 5, "patience": 5})
    data = prepare_dataset(config.data_spec())
    backup = tmp_path / "backup"
    with mlflow.start_run() as first, pytest.raises(KeyboardInterrupt):
        train_and_log(config, data, callbacks=[Crash(2)], backup_dir=backup)
    assert any(backup.iterdir())
    with mlflow.start_run() as second:
        train_and_log(config, data, backup_dir=backup)
    client = MlflowClient()
    done = [m.step for m in client.get_metric_history(first.info.run_id, names.LOSS)]
    resumed = [m.step for m in client.get_metric_history(second.info.run_id, names.LOSS)]
    assert done == [1, 2, 3] and resumed == [4, 5]  # nothing recomputed
    assert client.get_run(second.info.run_id).data.metrics[names.RESUMED_AT_EPOCH] == 4


def test_a_backup_torn_by_a_kill_mid_write_falls_back_or_starts_over(tracking_uri, tmp_path):
    """Before: a kill while Keras wrote its backup left a file the retry could not open, and
    the retried trial failed ('bad object header version number')."""
    from leukoml.training import train_and_log

    config = TrainConfig(**{**TINY, "data": DATA, "max_epochs": 5, "patience": 5})
    data = prepare_dataset(config.data_spec())
    backup = tmp_path / "backup"
    with mlflow.start_run(), pytest.raises(KeyboardInterrupt):
        train_and_log(config, data, callbacks=[Crash(2)], backup_dir=backup)
    (backup / "latest.weights.h5").write_bytes(b"torn")  # the epoch-3 write, interrupted
    with mlflow.start_run() as fallback:
        train_and_log(config, data, backup_dir=backup)
    client = MlflowClient()
    assert client.get_run(fallback.info.run_id).data.metrics[names.RESUMED_AT_EPOCH] == 3

    backup.mkdir()
    (backup / "latest.weights.h5").write_bytes(b"torn")  # and nothing to fall back on
    with mlflow.start_run() as fresh:
        train_and_log(config, data, backup_dir=backup)
    steps = [m.step for m in client.get_metric_history(fresh.info.run_id, names.LOSS)]
    assert steps == [1, 2, 3, 4, 5]

"""Ensembles: a study's best trials averaged into one served model.

The top-k completed trials (by the study's objective, i.e. by validation)
keep their own input size, crop, test-time views and temperature; their
calibrated probabilities are averaged and the average is calibrated once
more, on validation. The trials share one split, so the ensemble is scored on
the same validation and test images, logged as a run nested in the study with
a served model that holds every member (served exactly like one model), and
promoted only if it beats the champion by the registry's own comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlflow
import numpy as np
import optuna
from mlflow.tracking import MlflowClient

from leukoml import names
from leukoml.data import DataSpec, PreparedData, prepare_dataset
from leukoml.data.tracking import log_data
from leukoml.evaluation import (
    Evaluation,
    calibration_metrics,
    evaluate_predictions,
    plot_confusion,
)
from leukoml.evaluation.calibration import fit_temperature, with_temperature
from leukoml.serving import ServingConfig, find_serving_model, load_served_model
from leukoml.serving.package import log_serving_model

log = logging.getLogger(__name__)

DEFAULT_SIZE = 3


@dataclass
class Ensemble:
    run_id: str
    model_uri: str
    members: list[str]  # trial run ids, best first
    validation: Evaluation
    test: Evaluation
    temperature: float
    calibration: dict[str, float]  # test_ece (and its interval), test_uncalibrated_ece, ...

    def summary(self) -> dict:
        return {"run_id": self.run_id, "members": self.members,
                "temperature": round(self.temperature, 4),
                names.SELECTED_VAL_ACCURACY: round(self.validation.value("accuracy"), 4),
                **{k: round(v, 4) for k, v in {**self.test.metrics, **self.calibration}.items()
                   if k in names.TRIAL_RECORD}}


def top_trials(study: optuna.Study, size: int) -> list[optuna.trial.FrozenTrial]:
    done = [t for t in study.get_trials(deepcopy=False,
                                        states=(optuna.trial.TrialState.COMPLETE,))
            if names.RUN_ID_ATTR in t.user_attrs]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(done, key=lambda t: t.value, reverse=reverse)[:size]


def _split_files(data: PreparedData) -> dict[str, list[str]]:
    return {name: [data.files[i] for i in data.splits[name]] for name in ("val", "test")}


def build_ensemble(study: optuna.Study, size: int = DEFAULT_SIZE,
                   parent_run_id: str | None = None) -> Ensemble | None:
    """Average the study's `size` best trials; None if fewer than two can be combined."""
    trials = top_trials(study, size)
    if len(trials) < 2:
        log.info("ensemble: %d completed trial(s), nothing to combine", len(trials))
        return None
    run_ids = [t.user_attrs[names.RUN_ID_ATTR] for t in trials]
    served = [load_served_model(find_serving_model(r)) for r in run_ids]
    datas = [prepare_dataset(DataSpec.from_run(r)) for r in run_ids]
    if any(_split_files(d) != _split_files(datas[0]) for d in datas[1:]):
        log.warning("ensemble: the trials do not share one split; not combined")
        return None
    first = datas[0]
    val_idx, test_idx = first.splits["val"], first.splits["test"]
    val = np.mean([m.probabilities(np.asarray(d.images[val_idx])) for m, d in
                   zip(served, datas)], axis=0)
    test = np.mean([m.probabilities(np.asarray(d.images[test_idx])) for m, d in
                    zip(served, datas)], axis=0)
    temperature = fit_temperature(val, first.labels[val_idx])
    groups = first.group_ids()
    test_labels, test_groups = first.labels[test_idx], groups[test_idx]
    averaged = test
    val, test = with_temperature(val, temperature), with_temperature(test, temperature)
    calibration = calibration_metrics(test, test_labels, first.class_names, test_groups,
                                      uncalibrated=averaged)
    validation = evaluate_predictions(first.labels[val_idx], val.argmax(axis=1),
                                      first.class_names, groups[val_idx], names.best("val"))
    tested = evaluate_predictions(test_labels, test.argmax(axis=1), first.class_names,
                                  test_groups)
    parent = parent_run_id or study.user_attrs.get(names.PARENT_RUN_ATTR)
    tags = {names.TAG_ROLE: names.Role.ENSEMBLE, names.TAG_OPTUNA_STUDY: study.study_name,
            names.TAG_RUN_NAME: f"ensemble-top{len(trials)}"}
    if parent:
        tags[names.TAG_PARENT_RUN] = parent
    client = MlflowClient()
    created = client.create_run(client.get_run(run_ids[0]).info.experiment_id, tags=tags)
    with mlflow.start_run(run_id=created.info.run_id, nested=True) as run:
        mlflow.log_params({names.ENSEMBLE_MEMBERS: ",".join(run_ids),
                           names.BACKBONE: "+".join(m.backbone for m in served)})
        log_data(first)
        metrics = {**validation.metrics, **tested.metrics, **calibration,
                   names.TEMPERATURE: temperature,
                   **{names.val_test_gap(k): validation.value(k) - tested.value(k)
                      for k in names.GAP_KINDS}}
        mlflow.log_metrics(metrics)
        figure = plot_confusion(tested.confusion, f"ensemble of {len(trials)}")
        mlflow.log_figure(figure, names.CONFUSION_PNG)
        config = ServingConfig(
            list(first.class_names), tuple(m.config.members[0] for m in served),
            temperature=temperature,
            test_scores={k: tested.metrics[k] for k in names.TEST_SUMMARY})
        info = log_serving_model([m.keras_model for m in served], config)
        mlflow.log_metrics({**tested.metrics, **calibration}, model_id=info.model_id)
    log.info("ensemble of trials %s: test accuracy %.4f %s", [t.number for t in trials],
             tested.value("accuracy"), tested.interval("accuracy"))
    return Ensemble(run.info.run_id, info.model_uri, run_ids, validation, tested, temperature,
                    calibration)

"""Accuracy and honest model selection on the official Kaggle split, on a CPU budget.

Train on TRAIN (validation carved from it, grouped by the detected siblings),
score on TEST: the split the data set's author reports 0.8705 test accuracy
on. Phases (each optional):

- `search`: a study with `search_spaces/cpu.yaml` for `--minutes`; for every
  completed trial its selected validation accuracy (with the 95% group-
  bootstrap interval) beside its test accuracy, the Spearman rank correlation
  of the two across trials, and whether the best trial's test accuracy falls
  inside its validation interval; the study's wall time against its budget.
- `ensemble`: the study's top trials averaged (`leukoml.study.ensemble`).
- `cells`: the test cells (sibling groups) every completed trial of `search`
  gets wrong, their copies, and the accuracy ceiling they leave.
- `defaults`: `-e train` with every parameter at its default.
- `selection`: does validation rank trials as test does? `cpu.yaml` at 64 px
  without pruning and with short trials (`SELECTION`), so that many trials
  complete with a test score, for the Spearman correlation across them.
- `selection_ensemble`: the selection study's top trials averaged, as
  `ensemble` does for `search` (`--store` the folder that study ran in).

    python benchmarks/kaggle_accuracy.py --minutes 90 --phases search,ensemble,defaults

Writes benchmarks/results/kaggle_accuracy.json (phases not run keep their last result;
each phase records the machine and load it ran with).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path

import mlflow
import optuna
import yaml
from _common import KAGGLE, RESULTS, machine, print_table, write_result
from _study import scratch_stores, spent

from leukoml import names
from leukoml.config import TrainConfig
from leukoml.data import prepare_dataset
from leukoml.study import parse_search_space, run_search
from leukoml.training import train_and_log

AUTHOR_ACCURACY = 0.8705
CPU_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "cpu.yaml"
RUN_STATES = ("COMPLETE", "PRUNED", "FAIL")


def selection(study: optuna.Study) -> dict:
    """Does validation predict test? Per completed trial, and across trials."""
    from scipy.stats import spearmanr

    rows = []
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        rows.append({"trial": t.number, "backbone": a[names.BACKBONE], "objective": t.value,
                     "val_accuracy": a[names.SELECTED_VAL_ACCURACY],
                     "val_low": a[names.ci_low(names.SELECTED_VAL_ACCURACY)],
                     "val_high": a[names.ci_high(names.SELECTED_VAL_ACCURACY)],
                     **{k: a[k] for k in (names.TEST_ACCURACY, names.TEST_MACRO_F1,
                                          names.ci_low(names.TEST_ACCURACY),
                                          names.ci_high(names.TEST_ACCURACY))},
                     **{k: a[k] for k in (names.TEST_ECE, names.TEST_UNCALIBRATED_ECE)
                        if k in a}})
    best = next(r for r in rows if r["trial"] == study.best_trial.number)
    rho = None
    if len(rows) >= 3:
        rho = float(spearmanr([r["objective"] for r in rows],
                              [r[names.TEST_MACRO_F1] for r in rows]).statistic)
    return {
        "trials": rows,
        "best": best,
        "best_val_minus_test_accuracy": best["val_accuracy"] - best[names.TEST_ACCURACY],
        "best_test_inside_val_interval": best["val_low"] <= best[names.TEST_ACCURACY]
        <= best["val_high"],
        "spearman_val_objective_vs_test_macro_f1": rho,
        "spearman_val_vs_test_accuracy": float(spearmanr(
            [r["val_accuracy"] for r in rows], [r[names.TEST_ACCURACY] for r in rows]).statistic)
        if len(rows) >= 3 else None,
    }


# the selection phase's changes to cpu.yaml: every trial runs to a test score
SELECTION = {"image_size": 64, "max_epochs": 10, "patience": 4, "warmup_epochs": 1,
             "pruner": {"name": "none"}, "ensemble": 0}


def search(data: str, minutes: float, storage: str, name: str = "kaggle-cpu",
           changes: dict | None = None) -> tuple[dict, optuna.Study]:
    raw = {**yaml.safe_load(CPU_SPACE.read_text()), **(changes or {}), "timeout": minutes * 60}
    space = parse_search_space(raw, source=yaml.safe_dump(raw))
    started = time.perf_counter()
    with mlflow.start_run(run_name=f"{name}-study"):
        outcome = run_search(space, data, name, storage=storage)
    seconds = time.perf_counter() - started
    study = outcome.study
    epochs, states = spent(study)
    best = study.best_trial
    result = {"search_space": str(CPU_SPACE.name), "changes": changes or {},
              "budget_seconds": minutes * 60,
              "seconds": round(seconds), "overrun": round(seconds / (minutes * 60) - 1, 4),
              "trials": sum(states[s] for s in RUN_STATES), "trial_states": dict(states),
              "epochs": epochs, "best_trial": best.number, "best_params": best.params,
              "best_run_id": best.user_attrs[names.RUN_ID_ATTR],
              **{k: round(best.user_attrs[k], 4) for k in names.TRIAL_RECORD},
              "selection": selection(study)}
    return result, study


# phase -> the study whose top trials (by validation) it averages
ENSEMBLES = {"ensemble": "kaggle-cpu", "selection_ensemble": "kaggle-selection"}


def ensemble(study_name: str, storage: str) -> dict:
    from leukoml.study.ensemble import build_ensemble

    study = optuna.load_study(study_name=study_name, storage=storage)
    started = time.perf_counter()
    with mlflow.start_run(run_name=f"{study_name}-ensemble"):
        built = build_ensemble(study)
    return {"study": study_name, "seconds": round(time.perf_counter() - started),
            **built.summary()}


def _test_cells(run_id: str):
    """One row per test image of a trial's run: its cell (sibling group), class, correct."""
    import pandas as pd

    rows = mlflow.load_table(names.PREDICTIONS_TABLE, run_ids=[run_id])
    manifest = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id,
                                                               artifact_path=names.MANIFEST))
    return rows.merge(manifest[manifest["split"] == "test"][["file", "group"]], on="file")


def hard_cells(study_name: str, storage: str) -> dict:
    """The test cells every completed trial of the study calls another class.

    TEST is ~80 cells in 2,487 copies (a monocyte is ~155 of them), so a cell
    that every model gets wrong bounds the accuracy any of them reaches; the
    accuracy on the other cells says how much is left to the recipe."""
    import pandas as pd

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    tables = [_test_cells(t.user_attrs[names.RUN_ID_ATTR]) for t in trials]
    both = pd.concat(tables, keys=[t.number for t in trials], names=["trial", "row"])
    share = both.groupby(["trial", "true", "group"])["correct"].mean().unstack("trial")
    hard = share[(share < 0.5).all(axis=1)]
    copies = tables[0].groupby(["true", "group"]).size()
    cells = [{"class": true, "group": int(group), "copies": int(copies[(true, group)]),
              "predicted_as": both[(both["true"] == true) & (both["group"] == group)]
              ["predicted"].mode().iloc[0], "right_share_mean": round(float(row.mean()), 4)}
             for (true, group), row in hard.iterrows()]
    per_trial = []
    for trial, table in zip(trials, tables):
        other = ~table.set_index(["true", "group"]).index.isin(hard.index)
        per_trial.append({"trial": trial.number,
                          names.TEST_ACCURACY: round(float(table["correct"].mean()), 4),
                          "accuracy_on_other_cells": round(float(table["correct"][other].mean()),
                                                           4)})
    return {"study": study_name, "trials": len(trials), "test_images": len(tables[0]),
            "test_cells": len(copies), "hard_cells": cells,
            "accuracy_ceiling_with_hard_cells_wrong": round(
                1 - sum(c["copies"] for c in cells) / len(tables[0]), 4),
            "per_trial": per_trial}


def defaults(data: str) -> dict:
    config = TrainConfig(data=data)
    prepared = prepare_dataset(config.data_spec())
    started = time.perf_counter()
    with mlflow.start_run(run_name="train-defaults"):
        result = train_and_log(config, prepared)
    return {"seconds": round(time.perf_counter() - started), "config": config.to_params(),
            "split": prepared.split_source, "sizes": prepared.split_sizes(),
            "epochs": result.metrics[names.EPOCHS_RUN],
            **{k: round(result.metrics[k], 4) for k in (
                *names.TEST_SUMMARY, names.ci_low(names.TEST_ACCURACY),
                names.ci_high(names.TEST_ACCURACY), names.without_tta(names.TEST_ACCURACY),
                names.TEST_ECE, names.ci_low(names.TEST_ECE), names.ci_high(names.TEST_ECE),
                names.TEST_UNCALIBRATED_ECE, names.SELECTED_VAL_ACCURACY)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(KAGGLE))
    parser.add_argument("--minutes", type=float, default=90)
    parser.add_argument("--phases", default="search,ensemble,defaults")
    parser.add_argument("--store", default="", help="reuse this scratch folder (ensemble phase)")
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    previous = RESULTS / "kaggle_accuracy.json"
    out = json.loads(previous.read_text()) if previous.is_file() else {}
    for stale in ("image_size", "budget_minutes", "split", "split_sizes"):  # of an older run
        out.pop(stale, None)
    out.pop("machine", None)  # of an older run: now per phase
    out.update({"data": args.data, "author_test_accuracy": AUTHOR_ACCURACY})
    tracking, storage = scratch_stores("kaggle-accuracy", args.store or None)
    out["store"] = str(Path(storage.removeprefix("sqlite:///")).parent)
    runs = {  # --phases name -> (result key, what runs it)
        "search": ("search", lambda: search(args.data, args.minutes, storage)[0]),
        **{phase: (phase, partial(ensemble, study, storage)) for phase, study in ENSEMBLES.items()},
        "cells": ("hard_cells", partial(hard_cells, "kaggle-cpu", storage)),
        "defaults": ("train_defaults", lambda: defaults(args.data)),
        "selection": ("selection_study", lambda: search(
            args.data, args.minutes, storage, "kaggle-selection", SELECTION)[0])}
    for phase, (key, run) in runs.items():
        if phase in phases:  # each phase keeps the machine and load it ran with
            started_on = machine()
            out[key] = {**run(), "machine": started_on,
                        "load_average_1m_at_end": os.getloadavg()[0]}
            write_result("kaggle_accuracy", out)
    rows = [{"what": "data set author", names.TEST_ACCURACY: AUTHOR_ACCURACY}]
    for key, what in (("search", "cpu.yaml search, best trial"), ("ensemble", "ensemble"),
                      ("selection_study", "90-min selection study, best trial"),
                      ("selection_ensemble", "its top-3 ensemble"),
                      ("train_defaults", "-e train defaults")):
        if key in out:
            rows.append({"what": what, **out[key]})
    print_table(rows, [("", "what"), ("test acc", names.TEST_ACCURACY, ".4f"),
                       ("macro-F1", names.TEST_MACRO_F1, ".4f")])


if __name__ == "__main__":
    main()

"""Accuracy on the official Kaggle split, with a CPU budget: a search vs one frozen config.

Train on TRAIN (validation carved from it, stratified), score on TEST: the
split the data set's author reports 0.8705 test accuracy on. First a study
over small low-tier backbones at a small image size (`weights: none`) for
`--minutes`; then, with the same time budget, the default configuration
alone (no search), so the gain from searching is visible.

    python benchmarks/kaggle_accuracy.py --minutes 60

Prints a table and writes benchmarks/results/kaggle_accuracy.json.
"""

from __future__ import annotations

import argparse
import time

import keras
import mlflow

from _common import KAGGLE, machine, print_table, write_result
from _study import run_study, scratch_stores, spent
from leukoml import names
from leukoml.config import TrainConfig
from leukoml.data import prepare_dataset
from leukoml.training import train_and_log

AUTHOR_ACCURACY = 0.8705
RUN_STATES = ("COMPLETE", "PRUNED", "FAIL")
BACKBONES = ["Asghar2022CNN", "MobileNetV3Small", "MobileNetV3Large", "MobileNetV2", "MobileNet",
             "EfficientNetB0"]


class Deadline(keras.callbacks.Callback):
    """Stop training once the time budget is spent (the weights of the best epoch are kept)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.end = time.monotonic() + seconds

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() > self.end:
            self.model.stop_training = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(KAGGLE))
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    budget = args.minutes * 60
    info = machine()

    _, storage = scratch_stores("kaggle-accuracy")
    space = {
        "objective": {"metric": "val_macro_f1", "direction": "maximize"},
        "tiers": {"low": BACKBONES}, "image_size": args.image_size,
        "max_image_size": args.image_size, "weights": "none", "max_epochs": 40,
        "learning_rate": {"low": 3e-4, "high": 3e-3, "log": True}, "batch_size": [32, 64],
        "patience": {"low": 3, "high": 6},
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 4},
        "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 3},
        "n_trials": 100, "timeout": budget,
    }
    study, seconds = run_study(space, args.data, "kaggle-accuracy", storage)
    best = study.best_trial
    epochs, states = spent(study)
    searched = {"seconds": round(seconds), "trials": sum(states[s] for s in RUN_STATES),
                "trial_states": dict(states), "epochs": epochs,
                "best_trial": best.number, "backbone": best.user_attrs[names.BACKBONE],
                "params": best.params, "best_epochs": int(best.user_attrs[names.EPOCHS_RUN]),
                "val_macro_f1": round(best.value, 4),
                **{k: round(best.user_attrs[k], 4) for k in names.TEST_SUMMARY}}

    frozen_config = TrainConfig(data=args.data, image_size=args.image_size, max_epochs=1000,
                                monitor="val_macro_f1")  # leukoml's defaults, one run
    data = prepare_dataset(args.data, args.image_size, seed=frozen_config.seed)
    started = time.perf_counter()
    with mlflow.start_run(run_name="frozen-defaults"):
        result = train_and_log(frozen_config, data, callbacks=[Deadline(budget)])
    frozen = {"seconds": round(time.perf_counter() - started), "backbone": frozen_config.backbone,
              "learning_rate": frozen_config.learning_rate, "batch_size": frozen_config.batch_size,
              "patience": frozen_config.patience, "epochs": result.metrics[names.EPOCHS_RUN],
              **{k: round(result.metrics[k], 4) for k in names.TEST_SUMMARY}}

    out = {"machine": info, "data": args.data, "image_size": args.image_size,
           "budget_minutes": args.minutes, "split": data.split_source,
           "split_sizes": data.split_sizes(), "author_test_accuracy": AUTHOR_ACCURACY,
           "search": searched, "frozen_defaults": frozen}
    write_result("kaggle_accuracy", out)
    print(f"{info['cpu']}, {info['cores']} cores; official split ({data.split_sizes()}), "
          f"{args.image_size} px, {args.minutes:.0f} min each")
    author = {"what": "data set author", names.TEST_ACCURACY: AUTHOR_ACCURACY}
    print_table([{"what": f"search ({searched['trials']} trials, best {searched['backbone']})",
                  **searched}, {"what": f"frozen defaults ({frozen['backbone']})", **frozen}, author],
                [("", "what"), ("test acc", names.TEST_ACCURACY),
                 ("bal acc", names.TEST_BALANCED_ACCURACY), ("macro-F1", names.TEST_MACRO_F1)])


if __name__ == "__main__":
    main()

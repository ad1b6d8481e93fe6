"""Validation carved from Kaggle TRAIN at random vs by `group_by`, both scored on official TEST.

The worked example of issue 6: the same small model, trained twice on TRAIN
with validation carved (a) at random, stratified, and (b) by the file-name
group `^_(\\d+)_`; copies found between train and val, the validation score
the model was selected on, and the score on the official TEST folder (which
shares no image with TRAIN). The gap between the two is what a leaky
validation split hides.

    python benchmarks/group_split.py [--backbone MobileNetV3Small] [--max-epochs 30]

Prints a table and writes benchmarks/results/group_split.json.
"""

from __future__ import annotations

import argparse
import time

import mlflow
from _common import KAGGLE, machine, print_table, write_result
from _study import scratch_stores

from leukoml import names
from leukoml.config import TrainConfig
from leukoml.data import prepare_dataset
from leukoml.training import train_and_log

KAGGLE_GROUPS = r"^_(\d+)_"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(KAGGLE))
    parser.add_argument("--backbone", default="MobileNetV3Small")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=8e-4)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=5)
    args = parser.parse_args()
    info = machine()
    scratch_stores("group-split")
    rows = []
    for label, group_by in (("random (stratified)", ""), (f"grouped by {KAGGLE_GROUPS}", KAGGLE_GROUPS)):
        config = TrainConfig(data=args.data, backbone=args.backbone, image_size=args.image_size,
                             learning_rate=args.learning_rate, max_epochs=args.max_epochs,
                             patience=args.patience, monitor="val_macro_f1", group_by=group_by)
        data = prepare_dataset(config.data, config.image_size, seed=config.seed,
                               group_by=config.group_by or None)
        started = time.perf_counter()
        with mlflow.start_run(run_name=f"val {label}"):
            result = train_and_log(config, data, log_model=False)
        rows.append({"validation": label, "split_source": data.split_source,
                     "sizes": data.split_sizes(),
                     "copies_train_val": data.leakage.shared_pairs("train", "val"),
                     "copies_train_test": data.leakage.shared_pairs("train", "test"),
                     "epochs": result.metrics[names.EPOCHS_RUN],
                     "seconds": round(time.perf_counter() - started),
                     "val_macro_f1": round(result.objective(names.val(names.MACRO_F1)), 4),
                     **{k: round(result.metrics[k], 4) for k in names.TEST_SUMMARY}})
    write_result("group_split", {"machine": info, "recipe": vars(args), "rows": rows})
    print(f"{info['cpu']}, {info['cores']} cores; {args.backbone}, {args.image_size} px, "
          f"lr {args.learning_rate}, up to {args.max_epochs} epochs, best by val macro-F1")
    print_table(rows, [("validation carved from TRAIN", "validation"),
                       ("train/val copies", "copies_train_val"), ("val F1", "val_macro_f1"),
                       ("test F1", names.TEST_MACRO_F1), ("test acc", names.TEST_ACCURACY)])


if __name__ == "__main__":
    main()

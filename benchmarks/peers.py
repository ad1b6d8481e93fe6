"""Peers, side by side: leukoml against KerasTuner, AutoKeras and a plain Keras script.

Same official Kaggle split (fit on TRAIN, score on the 2,487 TEST images), same
wall-clock budget per arm, same machine, one arm after the other:

- `leukoml`: `leukoml search` with `search_spaces/cpu.yaml` (validation carved
  from TRAIN by detected sibling groups), its best trial by validation and the
  top-3 ensemble;
- `kerastuner`: KerasTuner Hyperband over a comparable space (the same four
  low-tier `keras.applications` from scratch, learning rate, flips + any-angle
  rotation), 96 px whole fields, a random 20% validation split (KerasTuner's
  usual `validation_split`);
- `autokeras`: `autokeras.ImageClassifier`, if it installs and runs beside this
  TensorFlow (its error is recorded when it does not);
- `script`: the 30-line Keras script every trial must beat (MobileNetV3Small,
  RandomFlip + RandomRotation, Adam, ReduceLROnPlateau, early stopping);
- `script_bn`: the same script with the one fix a careful user finds when its
  validation sits at chance: batch-norm momentum 0.9 instead of Keras' 0.999
  (`keras.applications` from scratch).

Peers see whole fields resized to 96 px, as their users would feed them.
Every arm's TEST predictions are scored by the same code, with 95% intervals
that resample sibling groups, and each peer is compared with leukoml's best
trial by a paired group bootstrap of the accuracy difference.

    pip install -e ".[peers]"
    python benchmarks/peers.py --minutes 90 [--arms leukoml,kerastuner,autokeras,script]

Each arm runs in its own process; writes benchmarks/results/peers.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import KAGGLE, RESULTS, machine, print_table, write_result

ARMS = ("leukoml", "kerastuner", "autokeras", "script", "script_bn")
SIZE = 96  # px, peers' input: cpu.yaml's largest size
BACKBONES = ("MobileNetV3Small", "MobileNetV3Large", "MobileNetV2", "EfficientNetB0")
MAX_EPOCHS = 24  # cpu.yaml's


def deadline_callback(deadline: float):
    """Stops the running fit at the budget's end (checked after each batch)."""
    import keras

    class Deadline(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.monotonic() > deadline:
                self.model.stop_training = True

    return Deadline()


def stop_oracle_at(oracle, deadline: float) -> None:
    """A KerasTuner oracle has no time budget: after `deadline` it creates no new trial."""
    populate = oracle.populate_space

    def timed(trial_id):
        if time.monotonic() > deadline:
            return {"status": "STOPPED", "values": None}
        return populate(trial_id)

    oracle.populate_space = timed


def load_arrays(folder: Path, **options):
    import keras

    ds = keras.utils.image_dataset_from_directory(folder, image_size=(SIZE, SIZE),
                                                  batch_size=256, **options)
    names = ds.class_names
    x, y = zip(*((a.numpy().astype("uint8"), b.numpy()) for a, b in ds))
    return np.concatenate(x), np.concatenate(y), names


def test_arrays(data: Path):
    import keras

    ds = keras.utils.image_dataset_from_directory(data / "TEST", image_size=(SIZE, SIZE),
                                                  batch_size=256, shuffle=False)
    files = [str(Path(p).relative_to(data / "TEST")) for p in ds.file_paths]
    x = np.concatenate([a.numpy().astype("uint8") for a, _ in ds])
    return x, files, ds.class_names


def arm_script(data: Path, deadline: float, bn_momentum: float | None = None) -> dict:
    """The plain script, as a Keras user writes it (whole fields, random validation)."""
    import keras
    from keras import layers

    train, val = keras.utils.image_dataset_from_directory(
        data / "TRAIN", validation_split=0.2, subset="both", seed=0, image_size=(SIZE, SIZE))
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        layers.RandomFlip("horizontal_and_vertical"),
        layers.RandomRotation(0.5, fill_mode="reflect"),
        keras.applications.MobileNetV3Small(input_shape=(SIZE, SIZE, 3), weights=None,
                                            classes=len(train.class_names)),
    ])
    if bn_momentum is not None:
        for layer in model.layers[-1].layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = bn_momentum
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(train.prefetch(2), validation_data=val.prefetch(2), epochs=60,
                        verbose=2, callbacks=[
                            keras.callbacks.ReduceLROnPlateau(factor=0.3, patience=3),
                            keras.callbacks.EarlyStopping(patience=8, restore_best_weights=True),
                            deadline_callback(deadline)])
    return {"model": model, "epochs": len(history.history["loss"]),
            "val_accuracy": max(history.history["val_accuracy"]),
            "config": "MobileNetV3Small 96 px, Adam 1e-3, ReduceLROnPlateau, patience 8"
                      + (f", batch-norm momentum {bn_momentum}" if bn_momentum else "")}


def _hypermodel(n_classes: int):
    import keras
    from keras import layers

    def build(hp):
        name = hp.Choice("backbone", list(BACKBONES))
        model = keras.Sequential([
            keras.Input((SIZE, SIZE, 3)),
            layers.RandomFlip("horizontal_and_vertical"),
            layers.RandomRotation(0.5, fill_mode="reflect"),
            getattr(keras.applications, name)(input_shape=(SIZE, SIZE, 3), weights=None,
                                              classes=n_classes),
        ])
        model.compile(optimizer=keras.optimizers.Adam(
            hp.Float("learning_rate", 1e-4, 3e-3, sampling="log")),
            loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    return build


def arm_kerastuner(data: Path, deadline: float, scratch: Path) -> dict:
    import keras
    import keras_tuner as kt

    x, y, classes = load_arrays(data / "TRAIN", shuffle=True, seed=0)
    cut = int(0.8 * len(x))
    tuner = kt.Hyperband(_hypermodel(len(classes)), objective="val_accuracy",
                         max_epochs=MAX_EPOCHS, factor=3, seed=0, directory=scratch,
                         project_name="kerastuner", overwrite=True)
    stop_oracle_at(tuner.oracle, deadline)
    tuner.search(x[:cut], y[:cut], validation_data=(x[cut:], y[cut:]), batch_size=32,
                 verbose=2, callbacks=[keras.callbacks.EarlyStopping(patience=5),
                                       deadline_callback(deadline)])
    best = tuner.oracle.get_best_trials(1)[0]
    return {"model": tuner.get_best_models(1)[0], "trials": len(tuner.oracle.trials),
            "val_accuracy": best.score, "config": dict(best.hyperparameters.values)}


def arm_autokeras(data: Path, deadline: float, scratch: Path) -> dict:
    import autokeras as ak

    x, y, _ = load_arrays(data / "TRAIN", shuffle=True, seed=0)
    classifier = ak.ImageClassifier(max_trials=100, overwrite=True, seed=0,
                                    directory=str(scratch), project_name="autokeras")
    stop_oracle_at(classifier.tuner.oracle, deadline)
    classifier.fit(x, y, validation_split=0.2, epochs=MAX_EPOCHS, verbose=2,
                   callbacks=[deadline_callback(deadline)])
    return {"model": classifier.export_model(), "trials": len(classifier.tuner.oracle.trials)}


def arm_leukoml(data: Path, minutes: float, scratch: Path) -> dict:
    """The search as `kaggle_accuracy.py` runs it, plus its top-3 ensemble."""
    import mlflow
    from _study import scratch_stores
    from kaggle_accuracy import search

    from leukoml import names
    from leukoml.study.ensemble import build_ensemble

    _, storage = scratch_stores("peers-leukoml", str(scratch))
    result, study = search(str(data), minutes, storage)
    started = time.perf_counter()
    with mlflow.start_run(run_name="peers-ensemble"):
        ensemble = build_ensemble(study)
    result["ensemble"] = {"seconds": round(time.perf_counter() - started), **ensemble.summary()}
    table = mlflow.load_table(names.PREDICTIONS_TABLE, run_ids=[result["best_run_id"]])
    prefix = "TEST/"
    files = [f.split(prefix, 1)[1] if prefix in f else f for f in table["file"]]
    return {"files": files, "predicted": list(table["predicted"]), "study": result}


def run_arm(arm: str, data: Path, minutes: float, out: Path) -> None:
    """One arm in this process; writes its TEST predictions (by file) to `out`."""
    started = time.monotonic()
    deadline = started + minutes * 60
    scratch = Path(tempfile.mkdtemp(prefix=f"leukoml-peers-{arm}-"))
    record: dict = {"arm": arm}
    try:
        if arm == "leukoml":
            record.update(arm_leukoml(data, minutes, scratch))
        else:
            fitted = {"script": lambda: arm_script(data, deadline),
                      "script_bn": lambda: arm_script(data, deadline, bn_momentum=0.9),
                      "kerastuner": lambda: arm_kerastuner(data, deadline, scratch),
                      "autokeras": lambda: arm_autokeras(data, deadline, scratch)}[arm]()
            model = fitted.pop("model")
            x, files, classes = test_arrays(data)
            predicted = model.predict(x, batch_size=256, verbose=0).argmax(axis=1)
            record.update(fitted, files=files, predicted=[classes[p] for p in predicted])
    except Exception as exc:  # a peer that does not run is a result too
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    record["seconds"] = round(time.monotonic() - started)
    record["finished_at"] = time.strftime("%Y-%m-%d %H:%M")
    out.write_text(json.dumps(record, default=str))


def _test_files(data: Path) -> tuple[list[str], list[str]]:
    """(class names, TEST files as CLASS/name), sorted: the order `predictions` follow."""
    classes = sorted(p.name for p in (data / "TEST").iterdir() if p.is_dir())
    return classes, sorted(f"{c}/{p.name}" for c in classes for p in (data / "TEST" / c).iterdir())


def align(record: dict, data: Path) -> None:
    """Turn an arm's {file: class name} answers into `predictions`: one class index per TEST
    file in `_test_files` order, as a string (kept in the JSON for later paired tests)."""
    if "predicted" not in record:
        return
    classes, files = _test_files(data)
    lookup = dict(zip(record.pop("files"), record.pop("predicted")))
    missing = [f for f in files if f not in lookup]
    if missing:
        record["error"] = f"{len(missing)} TEST images without a prediction, e.g. {missing[0]}"
        return
    record["predictions"] = "".join(str(classes.index(lookup[f].upper())) for f in files)


def score(records: list[dict], data: Path) -> list[dict]:
    """Accuracy and macro-F1 with group intervals; paired difference to leukoml's."""
    from leukoml.data import sibling_ids
    from leukoml.evaluation import evaluate_predictions, paired_difference

    classes, files = _test_files(data)
    groups = sibling_ids(data / "TEST", files)
    truth = np.array([classes.index(f.split("/")[0]) for f in files])
    by_arm = {r["arm"]: np.array([int(c) for c in r["predictions"]])
              for r in records if "predictions" in r}
    for record in records:
        if record["arm"] not in by_arm:
            continue
        found = evaluate_predictions(truth, by_arm[record["arm"]], classes, groups=groups)
        for kind in ("accuracy", "macro_f1"):
            record[f"test_{kind}"] = round(found.value(kind), 4)
            interval = found.interval(kind)
            record[f"test_{kind}_ci"] = [round(interval.low, 4), round(interval.high, 4)]
        if "leukoml" in by_arm and record["arm"] != "leukoml":
            diff = paired_difference(truth, by_arm["leukoml"], by_arm[record["arm"]], groups,
                                     len(classes), metric="accuracy")
            record["leukoml_minus_peer_accuracy"] = round(diff.value, 4)
            record["leukoml_minus_peer_ci"] = [round(diff.interval.low, 4),
                                               round(diff.interval.high, 4)]
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(KAGGLE))
    parser.add_argument("--minutes", type=float, default=90, help="wall-clock budget per arm")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm here
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = Path(args.data)
    if args.arm:
        run_arm(args.arm, data, args.minutes, Path(args.out))
        return
    info, records = machine(), []
    for arm in args.arms.split(","):
        out = Path(tempfile.mkstemp(suffix=f"-{arm}.json")[1])
        print(f"== {arm}: {args.minutes:g} minutes", flush=True)
        subprocess.run([sys.executable, __file__, "--arm", arm, "--out", str(out),
                        "--data", str(data), "--minutes", str(args.minutes)], check=False)
        text = out.read_text()
        records.append(json.loads(text) if text else {"arm": arm, "error": "no result"})
    for record in records:
        align(record, data)
    arms = [r["arm"] for r in records]
    previous = RESULTS / "peers.json"
    kept = [r for r in json.loads(previous.read_text())["arms"] if r["arm"] not in arms] \
        if previous.is_file() else []  # arms not rerun keep their last result
    result = {"machine": info, "data": str(data), "budget_minutes_per_arm": args.minutes,
              "image_size_peers": SIZE, "arms": score(kept + records, data)}
    write_result("peers", result)
    print_table(result["arms"], [("arm", "arm"), ("test acc", "test_accuracy", ".4f"),
                                 ("macro-F1", "test_macro_f1", ".4f"), ("seconds", "seconds")])


if __name__ == "__main__":
    main()

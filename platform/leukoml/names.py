"""MLflow names (params, metrics, tags, artifact paths), defined once.

Training, search, report, registry and the tests all import these, so the
columns of the MLflow UI line up across runs by construction.
"""

from __future__ import annotations

import re

# --- params -----------------------------------------------------------------
BACKBONE = "backbone"
TIER = "tier"
LEARNING_RATE = "learning_rate"
BATCH_SIZE = "batch_size"
PATIENCE = "patience"
MAX_EPOCHS = "max_epochs"
IMAGE_SIZE = "image_size"
WEIGHTS = "weights"
SEED = "seed"
FREEZE_BASE = "freeze_base"
AUGMENT = "augment"
MONITOR = "monitor"
CLASS_WEIGHT = "class_weight"
MIXED_PRECISION = "mixed_precision"
DATASET = "dataset"
DATASET_FINGERPRINT = "dataset_fingerprint"
CLASS_NAMES = "class_names"
N_TRAIN = "n_train"
N_VAL = "n_val"
N_TEST = "n_test"
N_SKIPPED = "n_skipped"
SPLIT_SOURCE = "split_source"
GROUP_BY = "group_by"
DROP_CROSS_SPLIT_DUPLICATES = "drop_cross_split_duplicates"
PARAM_COUNT = "param_count"

# Hyper-parameters an Optuna trial samples; logged under these same names.
SAMPLED_PARAMS = (TIER, BACKBONE, LEARNING_RATE, BATCH_SIZE, PATIENCE)

# --- per-epoch metrics (Keras' own names) -------------------------------------
LOSS = "loss"
ACCURACY = "accuracy"
MACRO_F1 = "macro_f1"
BALANCED_ACCURACY = "balanced_accuracy"
EPOCH_SECONDS = "epoch_seconds"
IMAGES_PER_SECOND = "images_per_second"
EPOCH_METRICS = (LOSS, ACCURACY, MACRO_F1, BALANCED_ACCURACY)


def direction(metric: str) -> str:
    """"min" for losses, "max" for everything else leukoml logs."""
    return "min" if metric.endswith("loss") else "max"


def val(metric: str) -> str:
    """Keras' name for a metric on the validation set."""
    return f"val_{metric}"


def best(metric: str) -> str:
    """The value of a per-epoch metric at the epoch whose weights were kept."""
    return f"best_{metric}"


# --- summary metrics ----------------------------------------------------------
BEST_EPOCH = "best_epoch"
EPOCHS_RUN = "epochs_run"
TRAIN_SECONDS = "train_seconds"
COPIES_TRAIN_TEST = "data_copies_train_test"  # exact or near duplicate pairs across splits
COPIES_TRAIN_VAL = "data_copies_train_val"
TEST_ACCURACY = "test_accuracy"
TEST_BALANCED_ACCURACY = "test_balanced_accuracy"
TEST_MACRO_F1 = "test_macro_f1"
TEST_SUMMARY = (TEST_ACCURACY, TEST_BALANCED_ACCURACY, TEST_MACRO_F1)

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]+")


def safe(name: str) -> str:
    """A class name made safe for an MLflow metric or column name."""
    return _UNSAFE.sub("_", name).strip() or "_"


def test_per_class(kind: str, class_name: str) -> str:
    """`test_precision_<class>`, `test_recall_<class>`, `test_f1_<class>`."""
    if kind not in ("precision", "recall", "f1"):
        raise ValueError(f"unknown per-class metric kind {kind!r}")
    return f"test_{kind}_{safe(class_name)}"


# --- tags -------------------------------------------------------------------
TAG_DEVICE = "leukoml.device"
TAG_ROLE = "leukoml.role"  # "train", "study", "trial", "worker", "explain", "promotion"
TAG_STUDY_NAME = "study_name"
TAG_GRADCAM_LAYER = "leukoml.gradcam_layer"
TAG_LEAKAGE = "leukoml.leakage_warning"
TAG_OPTUNA_STUDY = "optuna.study_name"
TAG_OPTUNA_TRIAL = "optuna.trial_number"
TAG_OPTUNA_STATE = "optuna.state"
TAG_BEST_TRIAL_RUN = "leukoml.best_trial_run_id"
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"

# --- artifacts ----------------------------------------------------------------
MODEL_ARTIFACT = "model"
CONFUSION_PNG = "evaluation/confusion_matrix.png"
CONFUSION_CSV = "evaluation/confusion_matrix.csv"
CLASSIFICATION_REPORT = "evaluation/classification_report.json"
SKIPPED_FILES = "data/skipped_files.csv"
SPLIT_SIZES = "data/split_sizes.json"
LEAKAGE_REPORT = "data/leakage_report.json"
LEAKAGE_SUMMARY = "data/leakage_summary.txt"
ERROR_TXT = "error.txt"
GRADCAM_DIR = "gradcam"
REPORT_DIR = "report"
LEADERBOARD_CSV = "report/leaderboard.csv"
SEARCH_SPACE_DIR = "search_space"


def trial_run_name(number: int, backbone: str) -> str:
    return f"trial-{number}-{backbone}"

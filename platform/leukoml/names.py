"""MLflow names (params, metrics, tags, artifact paths), defined once.

Training, search, report, registry and the tests all import these, so the
columns of the MLflow UI line up across runs by construction.
"""

from __future__ import annotations

import re

SPLITS = ("train", "val", "test")
# MLflow dataset-input contexts of the three splits
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}

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
PEAK_LEARNING_RATE = "peak_learning_rate"  # `learning_rate: auto` resolved
ENSEMBLE_MEMBERS = "ensemble_members"  # the trial runs an ensemble averages

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


def epoch_number(index: int) -> int:
    """Keras' 0-based epoch index as Keras prints it ("Epoch 1/40"): the one numbering of
    metric steps, `best_epoch` and messages, so the UI's step axis matches the console."""
    return index + 1


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
BEST_EPOCH = "best_epoch"  # 1-based, like every epoch leukoml logs or prints
EPOCHS_RUN = "epochs_run"
TRAIN_SECONDS = "train_seconds"
COPIES_TRAIN_TEST = "data_copies_train_test"  # exact or near duplicate pairs across splits
COPIES_TRAIN_VAL = "data_copies_train_val"
CELLS_NOT_FOUND = "data_cells_not_found"  # crop: cell kept these images whole
SIBLINGS_TRAIN_VAL = "data_val_images_with_train_sibling"
SIBLINGS_TRAIN_TEST = "data_test_images_with_train_sibling"
TEST_ACCURACY = "test_accuracy"
TEST_BALANCED_ACCURACY = "test_balanced_accuracy"
TEST_MACRO_F1 = "test_macro_f1"
TEST_SUMMARY = (TEST_ACCURACY, TEST_BALANCED_ACCURACY, TEST_MACRO_F1)
TEST_ECE = "test_ece"  # expected calibration error of the served (calibrated) probabilities
TEST_UNCALIBRATED_ECE = "test_uncalibrated_ece"

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]+")


def safe(name: str) -> str:
    """A class name made safe for an MLflow metric or column name."""
    return _UNSAFE.sub("_", name).strip() or "_"


def per_class(prefix: str, kind: str, class_name: str) -> str:
    """`<prefix>_precision_<class>`, `<prefix>_recall_<class>`, `<prefix>_f1_<class>`."""
    if kind not in ("precision", "recall", "f1"):
        raise ValueError(f"unknown per-class metric kind {kind!r}")
    return f"{prefix}_{kind}_{safe(class_name)}"


def test_per_class(kind: str, class_name: str) -> str:
    return per_class("test", kind, class_name)


def ci_low(metric: str) -> str:
    """The lower bound of `metric`'s 95% group-bootstrap interval."""
    return f"{metric}_ci_low"


def ci_high(metric: str) -> str:
    return f"{metric}_ci_high"


TEMPERATURE = "calibration_temperature"


def without_tta(metric: str) -> str:
    """A test score of the plain model, beside the served (test-time augmented) one."""
    return f"{metric}_no_tta"


def calibration(prefix: str, key: str, class_names: list[str]) -> str:
    """`<prefix>_nll|brier|ece|roc_auc_macro`, `<prefix>_roc_auc_<class>` (key roc_auc_<k>)."""
    if key.startswith("roc_auc_") and key[8:].isdigit():
        return f"{prefix}_roc_auc_{safe(class_names[int(key[8:])])}"
    return f"{prefix}_{key}"


def val_test_gap(kind: str) -> str:
    """Selected validation score minus test score: near 0 when validation predicts test."""
    return f"val_test_gap_{kind}"


# --- tags -------------------------------------------------------------------
TAG_DEVICE = "leukoml.device"
TAG_ROLE = "leukoml.role"  # one of Role's values: what the run is


class Role:
    """The values of `TAG_ROLE`."""

    TRAIN, STUDY, WORKER, TRIAL, ENSEMBLE = "train", "study", "worker", "trial", "ensemble"
    REPORT, PROMOTION, EXPLAIN, EXPORT = "report", "promotion", "explain", "export"
    EVALUATE, PREPARE = "evaluate", "prepare"


def role_filter(role: str) -> str:
    """An MLflow `search_runs` filter for the runs of one role."""
    return f"tags.`{TAG_ROLE}` = '{role}'"


TAG_STUDY_NAME = "study_name"
TAG_GRADCAM_LAYER = "leukoml.gradcam_layer"
TAG_LEAKAGE = "leukoml.leakage_warning"
TAG_GAP_WARNING = "leukoml.val_test_gap_warning"
TAG_OPTUNA_STUDY = "optuna.study_name"
TAG_OPTUNA_TRIAL = "optuna.trial_number"
TAG_OPTUNA_STATE = "optuna.state"
TAG_BEST_TRIAL_RUN = "leukoml.best_trial_run_id"
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_WORKER = "leukoml.worker"  # on a trial run: host-pid of the process that ran it
TAG_WORKER_RUN = "leukoml.worker_run"  # on a trial run: the run of that worker process
TAG_FAILURE = "leukoml.failure"  # why the run failed: bad input, a lost worker
TAG_STOPPED = "leukoml.stopped"
TAG_FINISHED_BY = "leukoml.finished_by_run"  # on a parent run a later run finished
RESUMED_AT_EPOCH = "resumed_at_epoch"  # metric: the epoch a retried trial resumed at

# --- the Model Registry: aliases, and tags of a model version ------------------------
CANDIDATE = "candidate"  # every registered version, last first
CHAMPION = "champion"  # the version served: moved only when better
TAG_DECISION = "leukoml.promotion.decision"  # "champion" or "not promoted"
TAG_REASON = "leukoml.promotion.reason"
TAG_CANDIDATE_F1 = "leukoml.promotion.candidate_macro_f1"
TAG_CHAMPION_F1 = "leukoml.promotion.champion_macro_f1"
TAG_DIFFERENCE_CI = "leukoml.promotion.difference_ci"
TAG_DISTINGUISHABLE = "leukoml.promotion.distinguishable"
TAG_COMPARED_WITH = "leukoml.promotion.compared_with_version"
TAG_EVAL_IMAGES = "leukoml.promotion.eval_images"
TAG_PROMOTED_VERSION = "leukoml.promotion.model_version"  # on a promote run: name/version
TAG_EXPORT = "leukoml.export"  # on a champion version: the formats exported, or the error
# model-version tags beyond the params they copy
TAG_VERSION_STUDY = "study"
TAG_VERSION_TRIAL = "trial"
TAG_SOURCE_RUN = "source_run_id"

# --- leukoml prepare: a dataset card -------------------------------------------------
DATASET_CARD = "data/card.json"
DATA_IMAGES = "data_images"
DATA_SKIPPED = "data_skipped_files"
DATA_COPY_PAIRS = "data_copy_pairs"
DATA_SIBLING_GROUPS = "data_sibling_groups"


def prepare_seconds(phase: str) -> str:
    """prepare_<phase>_seconds: listing, decode, copies, siblings, split (0 when reused)."""
    return f"prepare_{phase}_seconds"


# --- export (ONNX, TFLite, SavedModel) -------------------------------------------------
EXPORT_DIR = "export"  # run artifacts: the exported files and export.json


def export_metric(fmt: str, key: str, member: int | None = None) -> str:
    """export_<fmt>_<key> (max_abs_diff, bytes), _member<k> in an ensemble."""
    return f"export_{fmt}_{key}" + ("" if member is None else f"_member{member}")


# --- Optuna study and trial attributes ------------------------------------------------
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study: the study's MLflow parent run
RUN_ID_ATTR = "mlflow_run_id"  # trial: its MLflow run
TICKET_ATTR = "leukoml_queued"  # trial: queued by the budget
SURPLUS_ATTR = "leukoml_surplus"  # trial: created past the budget, never run
PROMOTED_ATTR = "promoted_run_id"  # study: the trial run promoted last
OBJECTIVE_ATTR = "objective_metric"  # study: the metric trials are ranked by
ERROR_ATTR = "error"  # trial: why it failed
CLASS_F1_ATTR = "class_f1"  # trial: test F1 per class

DEFAULT_MODEL_NAME = "wbc-classifier"
DEFAULT_EXPERIMENT = "leukoml"  # where runs go unless MLflow is told another experiment
# experiment tag: the MLflow 3 UI opens an untagged experiment on its GenAI trace page
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the value that opens it on training runs

# --- artifacts ----------------------------------------------------------------
MODEL_ARTIFACT = "model"
CONFUSION_PNG = "evaluation/confusion_matrix.png"
CONFUSION_CSV = "evaluation/confusion_matrix.csv"
CLASSIFICATION_REPORT = "evaluation/classification_report.json"
RELIABILITY_PNG = "evaluation/reliability_diagram.png"
PREDICTIONS_TABLE = "evaluation/predictions.json"  # one row per test image: an mlflow.log_table
SKIPPED_FILES = "data/skipped_files.csv"
DATA_SPEC = "data/spec.json"
MANIFEST = "data/manifest.csv"
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


# --- what a trial keeps in the study (user attrs): the leaderboard needs only the storage
SELECTED_VAL_ACCURACY = best(val(ACCURACY))  # validation accuracy of the kept weights
GAP_KINDS = ("accuracy", "macro_f1")
TRIAL_RECORD = (
    *TEST_SUMMARY,
    *(bound(m) for m in (TEST_ACCURACY, TEST_MACRO_F1) for bound in (ci_low, ci_high)),
    TEST_ECE, ci_low(TEST_ECE), ci_high(TEST_ECE), TEST_UNCALIBRATED_ECE,
    SELECTED_VAL_ACCURACY, ci_low(SELECTED_VAL_ACCURACY), ci_high(SELECTED_VAL_ACCURACY),
    *(val_test_gap(kind) for kind in GAP_KINDS),
    EPOCHS_RUN, TRAIN_SECONDS,
)

# -e evaluate: a registered model scored on a lab's own labelled images
EXTERNAL = "external"  # metric prefix: external_accuracy, external_f1_<class>, ...
TAG_EVALUATED_MODEL = "leukoml.evaluated_model_uri"
TAG_MODEL_URI = "leukoml.model_uri"  # on an explain or export run: the model it read
TAG_EVALUATED_VERSION = "leukoml.evaluated_model_version"
TAG_COMPARED_MODEL = "leukoml.compared_model_uri"
TAG_VERDICT = "leukoml.verdict"
EXTERNAL_SUMMARY = "external/summary.json"
EXTERNAL_VERDICT = "external/verdict.txt"
EXTERNAL_PREDICTIONS = "external/predictions.json"  # an mlflow.log_table the UI can filter
EXTERNAL_CONFUSION_PNG = "external/confusion_matrix.png"
EXTERNAL_RELIABILITY_PNG = "external/reliability_diagram.png"
EXTERNAL_GALLERY_PNG = "external/misclassified_gradcam.png"
EXTERNAL_UNKNOWN_CSV = "external/unknown_classes.csv"


# --- anytime studies (issue 26): budget, deadline, portfolio, the parent's results --------
STOPPED_BY = "stopped_by"  # trial user attr, leaderboard column, model-version tag
STOPPED_BY_DEADLINE = "deadline"  # its value: the study's deadline cut the trial short
CONFIG_ATTR = "config"  # trial user attr: every searched dimension's value as trained
NOT_STARTED_ATTR = "not_started"  # trial user attr: why it was not started (time left too short)
PLANNED_EPOCHS = "planned_epochs"  # metric per epoch: the epochs a trial fits into its time
EPOCH_SECONDS_ATTR = "epoch_seconds"  # trial user attr: its pace, to size later trials
FIRST_EPOCH_SECONDS_ATTR = "first_epoch_seconds"  # trial user attr: with graph tracing
AFTER_FIT_SECONDS_ATTR = "after_fit_seconds"  # trial user attr: evaluation and logging time
# the study's parent run: resolved params (`mlflow run` already logged its -P values, '' and
# 0 for defaults, and params cannot change) and results as metrics
PARAM_STUDY_NAME = "study.name"
PARAM_STUDY_STORAGE = "study.storage"  # password masked
PARAM_STUDY_N_TRIALS = "study.n_trials"
PARAM_STUDY_TIMEOUT = "study.timeout_seconds"
PARAM_STUDY_SEARCH_SPACE = "study.search_space"
STUDY_STARTED_ATTR = "started_at"  # study user attr: Unix time its first run started it
BEST_SO_FAR = "best_val_so_far"  # parent metric, step = seconds since the study started
STUDY_BEST_VALUE = "study_best_value"  # the best trial's objective (validation)
STUDY_BEST_TRIAL = "study_best_trial"  # its number
STUDY_BEST_TEST_ACCURACY = "study_best_test_accuracy"
STUDY_BEST_TEST_MACRO_F1 = "study_best_test_macro_f1"
CHAMPION_TEST_MACRO_F1 = "champion_test_macro_f1"  # when the study's best became champion
STUDY_SECONDS = "study_seconds"  # wall clock of this run of the study
TRIAL_SECONDS = "trial_seconds"  # the trials' own wall clock, summed


def trials_counted(kind: str) -> str:
    """Parent metric: trials by outcome (complete, pruned, failed, stopped_by_deadline,
    not_started)."""
    return f"trials_{kind}"

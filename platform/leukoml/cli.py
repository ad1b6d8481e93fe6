"""The `leukoml` command; each MLproject entry point calls one sub-command.

Thin by design: parse arguments, call one function, turn a `LeukomlError`
into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from leukoml import names
from leukoml.errors import LeukomlError

log = logging.getLogger("leukoml")



def _default_search_space() -> str:
    """`search_spaces/smoke.yaml` of the working directory, else of this checkout."""
    relative = Path("search_spaces") / "smoke.yaml"
    return str(relative if relative.is_file() else Path(__file__).resolve().parents[2] / relative)


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _int(text: str) -> int:
    """An int, also from mlflow's float spelling ("32.0")."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}")
    return int(value)


OPTION_TYPES = {"int": _int, "float": float, "bool": _bool, "str": str, "choice": str}


def option(name: str) -> str:
    """The command-line option of a config field: learning_rate -> --learning-rate."""
    return "--" + name.replace("_", "-")


def _add_train(sub) -> None:
    """One option per `TrainConfig` field: name, type, default and help come from it."""
    from leukoml.config import TrainConfig

    p = sub.add_parser("train", help="train one backbone and log it to MLflow",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name, (default, param) in TrainConfig.params().items():
        p.add_argument(option(name), dest=name, type=OPTION_TYPES[param.kind], default=default,
                       choices=param.choices or None, help=param.help)
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    import mlflow

    from leukoml import names
    from leukoml.config import TrainConfig
    from leukoml.data import prepare_dataset
    from leukoml.training import train_and_log

    config = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.field_names()}).validated()
    data = prepare_dataset(config.data_spec())
    _warn_if_leaking(data)
    with mlflow.start_run(log_system_metrics=True):
        mlflow.set_tags({names.TAG_ROLE: "train", names.TAG_RUN_NAME: f"train-{config.backbone}"})
        result = train_and_log(config, data)
        run_id = mlflow.active_run().info.run_id
    m = result.metrics
    print(
        f"run {run_id}: {config.backbone} test accuracy {m[names.TEST_ACCURACY]:.4f}, "
        f"balanced accuracy {m[names.TEST_BALANCED_ACCURACY]:.4f}, "
        f"macro-F1 {m[names.TEST_MACRO_F1]:.4f}"
    )
    return 0


def _warn_if_leaking(data) -> None:
    """Say it loudly: a test score from a split that shares images is not a result."""
    if data.leakage.train_shares_images:
        bar = "!" * 78
        print(f"{bar}\nWARNING: train shares images with val/test; scores will be inflated.\n"
              f"{data.leakage.summary_text()}\nUse split folders, --group-by siblings or "
              f"--drop-cross-split-duplicates true.\n{bar}", file=sys.stderr, flush=True)


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="run, resume or join an Optuna study over backbones")
    p.add_argument("--data", default="synthetic",
                   help="dataset folder, or 'synthetic' for the embedded generator")
    p.add_argument("--search-space", default=_default_search_space(),
                   help="a search_spaces/*.yaml file")
    p.add_argument("--n-trials", type=int, default=0,
                   help="total trials of the study across workers (0: the YAML's n_trials)")
    p.add_argument("--timeout", type=float, default=0,
                   help="seconds this worker may start trials for (0: the YAML's timeout)")
    p.add_argument("--study-name", default="",
                   help="reuse a name to resume or join a study (default: a new one)")
    p.add_argument("--storage", default="",
                   help="Optuna storage URL or journal file (default: sqlite:///optuna.db)")
    p.add_argument("--model-name", default=names.DEFAULT_MODEL_NAME,
                   help="registered model the best trial is promoted into")
    p.set_defaults(func=_run_search)


def _run_search(args) -> int:
    import time

    import mlflow

    from leukoml.report import format_top, log_report
    from leukoml.study import promote_best, run_search
    from leukoml.study.search import check_search_inputs
    from leukoml.study.space import load_search_space

    space = load_search_space(args.search_space)
    check_search_inputs(space, args.data, args.storage or None)  # before any run or trial
    study_name = args.study_name or f"{Path(args.search_space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    with mlflow.start_run():
        outcome = run_search(space, args.data, study_name, storage=args.storage or None,
                             n_trials=args.n_trials or None, timeout=args.timeout or None)
    board = log_report(outcome.study, outcome.parent_run_id)
    print(f"\nstudy {study_name!r}: leaderboard (parent run {outcome.parent_run_id})")
    print(format_top(board))
    if not outcome.best_run_id:
        print("no trial completed; nothing to promote")
        return 0
    print(f"best trial run: {outcome.best_run_id}")
    for result in promote_best(outcome, args.model_name, args.storage or None, space.ensemble):
        print(f"{args.model_name} version {result.version} (run {result.run_id}): "
              f"{'champion' if result.promoted else 'candidate only'} ({result.reason})")
    return 0


def _add_promote(sub) -> None:
    p = sub.add_parser("promote", help="register a training run's model; make it champion if better")
    p.add_argument("--run-id", required=True, help="the finished training run to promote")
    p.add_argument("--model-name", default=names.DEFAULT_MODEL_NAME, help="registered model name")
    p.add_argument("--force", type=_bool, default=False,
                   help="make it champion even if not better or not comparable")
    p.add_argument("--lock-url", default="",
                   help="postgresql://... (advisory lock), sqlite:///path or a file path (file "
                        "lock beside it); empty: a file lock in the leukoml cache dir")
    p.set_defaults(func=_run_promote)


def _run_promote(args) -> int:
    import mlflow

    from leukoml import names
    from leukoml.registry import check_promotable, promote

    check_promotable(args.run_id)  # a bad run id stops here: nothing registered, no run
    with mlflow.start_run():
        mlflow.set_tags({names.TAG_ROLE: "promotion",
                         names.TAG_RUN_NAME: f"promote-{args.model_name}"})
        result = promote(args.run_id, args.model_name, force=args.force,
                         lock_url=args.lock_url or None)
        mlflow.set_tags({**result.tags(),
                         "leukoml.promotion.model_version": f"{args.model_name}/{result.version}"})
    verdict = "is the champion" if result.promoted else (
        f"is not promoted; champion stays version {result.champion_version}")
    print(f"{args.model_name} version {result.version} (run {args.run_id}) {verdict}: "
          f"{result.reason}")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="rebuild a study's report from its Optuna storage")
    p.add_argument("--study-name", required=True, help="the study to report on")
    p.add_argument("--storage", default="",
                   help="Optuna storage URL or journal file (default: sqlite:///optuna.db)")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    import mlflow
    import optuna

    from leukoml import names
    from leukoml.report import format_top, log_report
    from leukoml.study import open_storage

    storage = open_storage(args.storage or None)
    try:
        study = optuna.load_study(study_name=args.study_name, storage=storage)
    except KeyError:
        raise LeukomlError(f"no study named {args.study_name!r} in that storage") from None
    parent = study.user_attrs.get(names.PARENT_RUN_ATTR)
    with mlflow.start_run() as run:  # this run only points at the study's parent
        mlflow.set_tags({names.TAG_ROLE: "report", names.TAG_STUDY_NAME: args.study_name,
                         names.TAG_RUN_NAME: f"report-{args.study_name}",
                         **({names.TAG_PARENT_RUN: parent} if parent else {})})
        board = log_report(study, parent or run.info.run_id)
    print(format_top(board))
    print(f"report of study {args.study_name!r} written to run {parent or run.info.run_id}")
    return 0


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="Grad-CAM overlays of a served model for image files")
    p.add_argument("--model-uri", required=True,
                   help="a leukoml serving model, e.g. models:/wbc-classifier@champion")
    p.add_argument("--images", required=True, help="an image file or a folder of images")
    p.add_argument("--output-dir", default="gradcam-output",
                   help="where the overlay PNGs are written (also logged to the run)")
    p.set_defaults(func=_run_explain)


def _run_explain(args) -> int:
    import mlflow

    from leukoml import names
    from leukoml.explain import explain_images
    from leukoml.serving import load_served_model

    served = load_served_model(args.model_uri)
    with mlflow.start_run() as run:
        mlflow.set_tags({names.TAG_ROLE: "explain", "leukoml.model_uri": args.model_uri,
                         names.TAG_RUN_NAME: f"explain-{served.backbone}"})
        written = explain_images(served.keras_model, served.class_names, served.image_size,
                                 args.images, args.output_dir,
                                 crop=served.config.members[0].crop)
        mlflow.log_artifacts(args.output_dir, names.GRADCAM_DIR)
    print(f"{len(written)} Grad-CAM overlay(s) in {args.output_dir}, logged to run "
          f"{run.info.run_id} under {names.GRADCAM_DIR}/")
    return 0


def _add_evaluate(sub) -> None:
    from leukoml.external.plan import TTA_CHOICES

    p = sub.add_parser("evaluate", help="score a served model on your own labelled images",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-uri", default=f"models:/{names.DEFAULT_MODEL_NAME}@champion",
                   help="the leukoml model to score (models:/name@alias, models:/name/3, ...)")
    p.add_argument("--data", required=True,
                   help="a folder of class folders, or of images with a labels CSV")
    p.add_argument("--labels", default="",
                   help="a CSV with a file (path, name or number) and a label column; empty: "
                        "<data>/labels.csv if present, else the class folders")
    p.add_argument("--class-map", default="",
                   help="YAML mapping or external,model CSV from the folder's class names to "
                        "the model's (or 'unknown'); empty: match names case-insensitively")
    p.add_argument("--tta", default="model", choices=TTA_CHOICES,
                   help="test-time views: as the model was registered, or none/flips/dihedral")
    p.add_argument("--compare-to", default="",
                   help="a second model scored on the same images, with a paired test")
    p.add_argument("--gallery", type=_int, default=16,
                   help="misclassified images shown with Grad-CAM (0: none)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    from leukoml.external import EvaluateRequest, plan_evaluation

    request = EvaluateRequest(args.model_uri, args.data, args.labels, args.class_map,
                              args.tta, args.compare_to, args.gallery)
    plan = plan_evaluation(request)  # every input checked; no TensorFlow yet
    print(f"evaluating {plan.model.uri} on {len(plan.images.files)} image(s) of "
          f"{plan.images.root} ({plan.images.source})", flush=True)
    import mlflow

    from leukoml.external.score import log_result, score

    result, model, predictions = score(plan)
    with mlflow.start_run() as run:
        log_result(plan, result, model, predictions)
    evaluation = result.evaluation
    if evaluation is not None:
        print(f"accuracy {evaluation.value('accuracy'):.4f} {evaluation.interval('accuracy')}, "
              f"balanced accuracy {evaluation.value('balanced_accuracy'):.4f}, macro-F1 "
              f"{evaluation.value('macro_f1'):.4f} {evaluation.interval('macro_f1')}")
    print(result.verdict)
    if result.comparison:
        print(result.comparison["summary"])
    print(f"logged to run {run.info.run_id}")
    return 0


def _list_backbones(args) -> int:
    from leukoml.backbones import list_backbones

    print(f"{'backbone':<20} {'tier':<7} {'params (M)':>10} {'default px':>10} {'min px':>7}")
    for b in list_backbones(args.tier):
        print(f"{b.name:<20} {b.tier:<7} {b.params_m:>10.1f} {b.default_size:>10} {b.min_size:>7}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from leukoml import __version__

    parser = argparse.ArgumentParser(prog="leukoml", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"leukoml {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="keep TensorFlow's start-up messages and debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_promote(sub)
    _add_search(sub)
    _add_report(sub)
    _add_explain(sub)
    _add_evaluate(sub)
    p = sub.add_parser("backbones", help="list the registered backbones and their tiers")
    p.add_argument("--tier", choices=("low", "medium", "high"), help="only this tier")
    p.set_defaults(func=_list_backbones)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    args = build_parser().parse_args(argv)
    if not any(os.environ.get(k) for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME",
                                           "MLFLOW_EXPERIMENT_ID")):
        os.environ["MLFLOW_EXPERIMENT_NAME"] = names.DEFAULT_EXPERIMENT  # not "Default"
    if args.verbose:
        os.environ["LEUKOML_VERBOSE"] = "1"  # workers and `mlflow run` children inherit it
        logging.getLogger("leukoml").setLevel(logging.DEBUG)
    else:
        from leukoml.quiet import filter_stderr

        filter_stderr()
    try:
        return args.func(args)
    except LeukomlError as exc:
        print(f"leukoml {args.command}: error: {exc}", file=sys.stderr)
        _discard_empty_run()
        return 2


def _discard_empty_run() -> None:
    """Delete the run `mlflow run` opened for us if bad input stopped us before anything was
    logged to it: a FAILED run with nothing in it only hides the real ones."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        run = client.get_run(run_id)
        children = client.search_runs([run.info.experiment_id],
                                      f"tags.`{names.TAG_PARENT_RUN}` = '{run_id}'",
                                      max_results=1)
        if run.data.metrics or children or client.list_artifacts(run_id):
            return
        client.set_terminated(run_id, "FAILED")  # then `mlflow run` leaves it alone
        client.delete_run(run_id)
        print(f"(the empty MLflow run {run_id} that `mlflow run` opened was deleted)",
              file=sys.stderr)
    except Exception as exc:  # the tracking server itself may be the bad input
        log.debug("could not delete run %s: %s", run_id, exc)


if __name__ == "__main__":
    sys.exit(main())

"""`leukoml train` and `leukoml promote`: one run, and its way into the registry."""

from __future__ import annotations

import sys

from leukoml import names
from leukoml.commands._options import OPTION_TYPES, _bool, option


def add_train(sub) -> None:
    """One option per `TrainConfig` field: name, type, default and help come from it."""
    from leukoml.config import TrainConfig

    p = sub.add_parser("train", help="train one backbone and log it to MLflow")
    for name, (default, param) in TrainConfig.params().items():
        p.add_argument(option(name), dest=name, type=OPTION_TYPES[param.kind], default=default,
                       choices=param.choices or None, help=param.help)
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from leukoml.config import TrainConfig

    # checked before MLflow or TensorFlow is imported: a bad option fails in a second
    config = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.field_names()}).validated()

    from leukoml.data import check_source

    check_source(config.data_spec())  # a bad folder fails in a second, before pandas
    from leukoml.data import prepare_dataset

    data = prepare_dataset(config.data_spec())  # what decoding finds fails before TensorFlow
    _warn_if_leaking(data)
    import mlflow

    from leukoml.tracking import start_run_with_system_metrics
    from leukoml.training import train_and_log

    with start_run_with_system_metrics():
        mlflow.set_tags({names.TAG_ROLE: names.Role.TRAIN, names.TAG_RUN_NAME: f"train-{config.backbone}"})
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


def add_promote(sub) -> None:
    p = sub.add_parser("promote", help="register a training run's model; make it champion if better")
    p.add_argument("--run-id", required=True, help="the finished training run to promote")
    p.add_argument("--model-name", default=names.DEFAULT_MODEL_NAME, help="registered model name")
    p.add_argument("--force", type=_bool, default=False,
                   help="make it champion even if not better or not comparable")
    p.add_argument("--lock-url", default="",
                   help="postgresql://... (advisory lock), sqlite:///path or a file path (file "
                        "lock beside it); empty: a file lock in the leukoml cache dir")
    p.add_argument("--export", default="onnx,tflite",
                   help="formats a new champion is exported to (onnx, tflite, savedmodel), "
                        "or none")
    p.set_defaults(func=_run_promote)


def _run_promote(args) -> int:
    import mlflow

    from leukoml import names
    from leukoml.registry import check_promotable, promote
    from leukoml.serving.export import parse_formats
    from leukoml.tracking import start_run

    export = () if args.export.strip().lower() == "none" else parse_formats(args.export)
    check_promotable(args.run_id)  # a bad run id stops here: nothing registered, no run
    with start_run():
        mlflow.set_tags({names.TAG_ROLE: names.Role.PROMOTION,
                         names.TAG_RUN_NAME: f"promote-{args.model_name}"})
        result = promote(args.run_id, args.model_name, force=args.force,
                         lock_url=args.lock_url or None, export=export)
        mlflow.set_tags({**result.tags(),
                         names.TAG_PROMOTED_VERSION: f"{args.model_name}/{result.version}"})
    verdict = "is the champion" if result.promoted else (
        f"is not promoted; champion stays version {result.champion_version}")
    print(f"{args.model_name} version {result.version} (run {args.run_id}) {verdict}: "
          f"{result.reason}")
    return 0

"""`leukoml explain`, `evaluate`, `export` and `backbones`: working with a served model."""

from __future__ import annotations

from leukoml import names
from leukoml.commands._options import _int


def _model_uri(parser, verb: str) -> None:
    parser.add_argument("--model-uri", default=f"models:/{names.DEFAULT_MODEL_NAME}@champion",
                        help=f"the leukoml model to {verb} (models:/name@alias, models:/name/3, "
                             "runs:/<run id>/model, ...)")


def add_explain(sub) -> None:
    p = sub.add_parser("explain", help="Grad-CAM overlays of a served model for image files")
    _model_uri(p, "explain")
    p.add_argument("--images", required=True, help="an image file or a folder of images")
    p.add_argument("--output-dir", default="gradcam-output",
                   help="where the overlay PNGs are written (also logged to the run)")
    p.set_defaults(func=_run_explain)


def _run_explain(args) -> int:
    from pathlib import Path

    from leukoml.errors import LeukomlError
    from leukoml.serving import serving_config

    if not Path(args.images).expanduser().exists():  # checked before the model, and TensorFlow
        raise LeukomlError(f"images: {args.images!r} is neither an image file nor a folder")
    serving_config(args.model_uri)  # a bad URI, alias or run id stops here, before TensorFlow
    import mlflow

    from leukoml.explain import explain_images
    from leukoml.serving import load_served_model
    from leukoml.tracking import start_run

    served = load_served_model(args.model_uri)
    with start_run() as run:
        mlflow.set_tags({names.TAG_ROLE: names.Role.EXPLAIN, names.TAG_MODEL_URI: args.model_uri,
                         names.TAG_RUN_NAME: f"explain-{served.backbone}"})
        written = explain_images(served, args.images, args.output_dir)
        mlflow.log_artifacts(args.output_dir, names.GRADCAM_DIR)
    print(f"{len(written)} Grad-CAM overlay(s) in {args.output_dir}, logged to run "
          f"{run.info.run_id} under {names.GRADCAM_DIR}/")
    return 0


def add_evaluate(sub) -> None:
    from leukoml.config import EVALUATE_TTA

    p = sub.add_parser("evaluate", help="score a served model on your own labelled images")
    _model_uri(p, "score")
    p.add_argument("--data", required=True,
                   help="a folder of class folders, or of images with a labels CSV")
    p.add_argument("--labels", default="",
                   help="a CSV with a file (path, name or number) and a label column; empty: "
                        "<data>/labels.csv if present, else the class folders")
    p.add_argument("--class-map", default="",
                   help="YAML mapping or external,model CSV from the folder's class names to "
                        "the model's (or 'unknown'); empty: match names case-insensitively")
    p.add_argument("--tta", default="model", choices=EVALUATE_TTA,
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
    from leukoml.external.score import log_result, score
    from leukoml.tracking import start_run

    result, model, predictions = score(plan)
    with start_run() as run:
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


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a served model's network to ONNX, TFLite or a "
                                      "SavedModel, parity-checked against Keras")
    _model_uri(p, "export")
    p.add_argument("--output-dir", "--out", default="exported", help="where the files are "
                   "written (also logged to the run under export/)")
    p.add_argument("--formats", "--format", default="onnx,tflite",
                   help="onnx, tflite, savedmodel, or several joined by commas")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from leukoml.serving import serving_config
    from leukoml.serving.export import export_served, parse_formats

    formats = parse_formats(args.formats)
    serving_config(args.model_uri)  # a bad URI stops here, before TensorFlow
    import mlflow

    from leukoml.registry import validation_files
    from leukoml.serving import load_served_model
    from leukoml.serving.export import export_metrics
    from leukoml.tracking import start_run

    served = load_served_model(args.model_uri)
    check = validation_files(mlflow.models.get_model_info(args.model_uri).run_id)
    summary = export_served(served, args.output_dir, formats,
                            [path.read_bytes() for path in check])
    with start_run() as run:
        mlflow.set_tags({names.TAG_ROLE: names.Role.EXPORT, names.TAG_MODEL_URI: args.model_uri,
                         names.TAG_RUN_NAME: f"export-{served.backbone}"})
        mlflow.log_artifacts(args.output_dir, names.EXPORT_DIR)
        mlflow.log_metrics(export_metrics(summary))
    for member in summary["members"]:
        print(f"{member['backbone']}: " + ", ".join(
            f"{args.output_dir}/{member['files'][f]} ({member['bytes'][f] / 1e6:.1f} MB, max "
            f"|difference| from Keras {member['max_abs_difference'][f]:.1g})" for f in formats))
    print(f"parity checked on {summary['parity_checked_on']}; export.json says how to feed "
          f"them; logged to run {run.info.run_id} under {names.EXPORT_DIR}/")
    return 0


def list_backbones(args) -> int:
    from leukoml.backbones import list_backbones

    print(f"{'backbone':<20} {'tier':<7} {'params (M)':>10} {'default px':>10} {'min px':>7}")
    for b in list_backbones(args.tier):
        print(f"{b.name:<20} {b.tier:<7} {b.params_m:>10.1f} {b.default_size:>10} {b.min_size:>7}")
    return 0

"""The `leukoml` command; each MLproject entry point calls one sub-command.

Thin by design: parse arguments, call one function, turn a `LeukomlError`
into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from leukoml.errors import LeukomlError

log = logging.getLogger("leukoml")


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_train(sub) -> None:
    from leukoml.config import TrainConfig

    defaults = TrainConfig()
    p = sub.add_parser("train", help="train one backbone and log it to MLflow")
    p.add_argument("--data", default=defaults.data,
                   help="dataset folder, or 'synthetic' for the embedded generator")
    p.add_argument("--backbone", default=defaults.backbone)
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--patience", type=int, default=defaults.patience)
    p.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
    p.add_argument("--image-size", type=int, default=defaults.image_size)
    p.add_argument("--weights", default=defaults.weights, help="imagenet, none, or a weights file")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--freeze-base", type=_bool, default=defaults.freeze_base)
    p.add_argument("--augment", type=_bool, default=defaults.augment)
    p.add_argument("--monitor", default=defaults.monitor, help="early-stopping metric")
    p.add_argument("--class-weight", default=defaults.class_weight, help="none or balanced")
    p.add_argument("--mixed-precision", type=_bool, default=defaults.mixed_precision)
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    import mlflow

    from leukoml import names
    from leukoml.data import prepare_dataset
    from leukoml.config import TrainConfig
    from leukoml.training import train_and_log

    config = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.field_names()}).validated()
    data = prepare_dataset(config.data, config.image_size, seed=config.seed)
    with mlflow.start_run():
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


def _list_backbones(args) -> int:
    from leukoml.backbones import list_backbones

    print(f"{'backbone':<20} {'tier':<7} {'params (M)':>10} {'default px':>10} {'min px':>7}")
    for b in list_backbones(args.tier):
        print(f"{b.name:<20} {b.tier:<7} {b.params_m:>10.1f} {b.default_size:>10} {b.min_size:>7}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leukoml", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    p = sub.add_parser("backbones", help="list the registered backbones and their tiers")
    p.add_argument("--tier", choices=("low", "medium", "high"))
    p.set_defaults(func=_list_backbones)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LeukomlError as exc:
        print(f"leukoml {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `leukoml` command; each MLproject entry point calls one sub-command.

Thin by design: parse arguments, call one function, turn a `LeukomlError`
into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from leukoml import names
from leukoml.commands import data, models, study, training
from leukoml.commands._options import _bool, _int, option  # noqa: F401 (tests, config)
from leukoml.errors import LeukomlError

log = logging.getLogger("leukoml")


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: its --help shows every option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from leukoml import __version__

    parser = argparse.ArgumentParser(prog="leukoml", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"leukoml {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="keep TensorFlow's start-up messages and debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)
    data.add_prepare(sub)
    training.add_train(sub)
    training.add_promote(sub)
    study.add_search(sub)
    study.add_report(sub)
    models.add_explain(sub)
    models.add_evaluate(sub)
    models.add_export(sub)
    p = sub.add_parser("backbones", help="list the registered backbones and their tiers")
    p.add_argument("--tier", choices=("low", "medium", "high"), help="only this tier")
    p.set_defaults(func=models.list_backbones)
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

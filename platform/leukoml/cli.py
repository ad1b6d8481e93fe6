"""The `leukoml` command; each MLproject entry point calls one sub-command.

Thin by design: parse arguments, call one function, turn a bad argument or a
`LeukomlError` into a one-line message, recorded on the failed MLflow run, and
exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from leukoml import names
from leukoml.commands import data, models, study, training
from leukoml.commands._options import _bool, _int, option  # noqa: F401 (tests, config)
from leukoml.errors import LeukomlError, did_you_mean

log = logging.getLogger("leukoml")
MAX_TAG_CHARS = 5000  # MLflow refuses tag values past 8000 characters

_INVALID_CHOICE = re.compile(r"argument (\S+): invalid choice: '([^']*)'")


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: its --help shows every option's default; a bad argument is
    one line with the closest valid choice, recorded on the run `mlflow run` opened."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        found = _INVALID_CHOICE.match(message)
        if found:
            choices = [c for a in self._actions if found[1] in (*a.option_strings, a.dest)
                       for c in a.choices or ()]
            message += did_you_mean(found[2], choices)
        sys.exit(_fail(self.prog, f"{message}; see '{self.prog} --help'"))


class _Parser(_CommandParser):
    """The top-level parser: an unknown option names the sub-command's closest one."""

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._subparsers._group_actions[0].choices[parsed.command]
            command.error(_unknown_options(command, extras))
        return parsed


def _unknown_options(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """`mlflow run -P max_epoch=2` passes an undeclared parameter on as `--max_epoch 2`:
    name it, and the closest option, as the user spelled them (MLflow or command line)."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        spell, what = (lambda o: o), "option"
    else:
        spell, what = (lambda o: o.lstrip("-").replace("-", "_")), "parameter"
    known = [spell(o) for a in parser._actions for o in a.option_strings if o.startswith("--")]
    named = [f"{spell(t)!r}{did_you_mean(spell(t), known)}" for t in extras if t.startswith("-")]
    if not named:
        return f"unrecognized arguments: {' '.join(extras)}"
    return f"unknown {what}(s) {', '.join(named)}"


def build_parser() -> argparse.ArgumentParser:
    from leukoml import __version__

    parser = _Parser(prog="leukoml", description=__doc__.splitlines()[0],
                     formatter_class=argparse.HelpFormatter)
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
        return _fail(f"leukoml {args.command}", str(exc))


def _fail(prog: str, message: str) -> int:
    """Print one line for bad input, say it on the MLflow run too; exit status 2."""
    text = f"{prog}: error: {message}"
    print(text, file=sys.stderr, flush=True)
    _record_failure(text)
    return 2


def _record_failure(text: str) -> None:
    """Leave the run that failed FAILED, saying why (tag `leukoml.failure`, `error.txt`),
    so that the MLflow UI explains it: the run `mlflow run` opened before leukoml started
    (MLFLOW_RUN_ID), else one leukoml ended FAILED. Deleting it instead made `mlflow run`
    crash with a traceback when it ended the deleted run; a FAILED run it leaves alone and
    prints its one line, `=== Run (ID ...) failed ===`."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    try:
        if not run_id and "mlflow" in sys.modules:  # never imported: no run was opened
            last = sys.modules["mlflow"].last_active_run()
            run_id = last.info.run_id if last and last.info.status == "FAILED" else None
        if not run_id:
            return
        from mlflow.tracking import MlflowClient

        from leukoml.tracking import tag_experiment

        client = MlflowClient()
        run = client.get_run(run_id)
        tag_experiment(run.info.experiment_id, client)  # so the UI lists this run at all
        client.set_tag(run_id, names.TAG_FAILURE, text[:MAX_TAG_CHARS])
        client.log_text(run_id, text + "\n", names.ERROR_TXT)
        if run.info.status == "RUNNING":
            client.set_terminated(run_id, "FAILED")
    except Exception as exc:  # noqa: BLE001 (the tracking server itself may be the bad input)
        log.warning("could not record the failure on MLflow run %s: %s", run_id, exc)


if __name__ == "__main__":
    sys.exit(main())

"""`leukoml search` and `leukoml report`: an Optuna study and its report."""

from __future__ import annotations

from pathlib import Path

from leukoml import names
from leukoml.commands._options import _int
from leukoml.errors import LeukomlError


def _shipped_spaces() -> Path:
    """`search_spaces/` of the working directory, else of this checkout."""
    relative = Path("search_spaces")
    return relative if relative.is_dir() else Path(__file__).resolve().parents[3] / relative


def add_search(sub) -> None:
    p = sub.add_parser("search", help="run, resume or join an Optuna study over backbones")
    p.add_argument("--data", default="synthetic",
                   help="dataset folder, or 'synthetic' for the embedded generator")
    p.add_argument("--search-space", default="auto",
                   help="a search_spaces/*.yaml file; auto: smoke.yaml for synthetic data, "
                        "else default.yaml with a GPU, cpu.yaml without")
    p.add_argument("--n-trials", type=_int, default=0,
                   help="total trials of the study across workers (0: the YAML's n_trials)")
    p.add_argument("--timeout", type=float, default=0,
                   help="seconds this worker may start trials for (0: the YAML's timeout)")
    p.add_argument("--study-name", default="",
                   help="reuse a name to resume or join a study; empty: a new one, named by "
                        "the time")
    p.add_argument("--storage", default="",
                   help="Optuna storage URL or journal file; empty: sqlite:///optuna.db")
    p.add_argument("--model-name", default=names.DEFAULT_MODEL_NAME,
                   help="registered model the best trial is promoted into")
    p.set_defaults(func=_run_search)


def _run_search(args) -> int:
    import time

    from leukoml.study.inputs import AUTO_SPACE, check_search_inputs, pick_search_space
    from leukoml.study.space import load_search_space

    picked = args.search_space in ("", AUTO_SPACE)
    if picked:
        args.search_space, why = pick_search_space(args.data, _shipped_spaces())
    space = load_search_space(args.search_space)
    check_search_inputs(space, args.data, args.storage or None)  # before any run or trial
    if picked:
        print(f"search space: {args.search_space} ({why}; give search_space to choose)",
              flush=True)
    import mlflow

    from leukoml.report import format_top, log_report
    from leukoml.study import promote_best, run_search
    from leukoml.tracking import start_run

    study_name = args.study_name or f"{Path(args.search_space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    with start_run():
        mlflow.log_param(names.PARAM_STUDY_SEARCH_SPACE, str(args.search_space))
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


def add_report(sub) -> None:
    p = sub.add_parser("report", help="rebuild a study's report from its Optuna storage")
    p.add_argument("--study-name", required=True, help="the study to report on")
    p.add_argument("--storage", default="",
                   help="Optuna storage URL or journal file; empty: sqlite:///optuna.db")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    import mlflow
    import optuna

    from leukoml import names
    from leukoml.report import format_top, log_report
    from leukoml.study import open_storage
    from leukoml.tracking import start_run

    storage = open_storage(args.storage or None)
    try:
        study = optuna.load_study(study_name=args.study_name, storage=storage)
    except KeyError:
        raise LeukomlError(f"no study named {args.study_name!r} in that storage") from None
    parent = study.user_attrs.get(names.PARENT_RUN_ATTR)
    with start_run() as run:  # this run only points at the study's parent
        mlflow.set_tags({names.TAG_ROLE: names.Role.REPORT, names.TAG_STUDY_NAME: args.study_name,
                         names.TAG_RUN_NAME: f"report-{args.study_name}",
                         **({names.TAG_PARENT_RUN: parent} if parent else {})})
        board = log_report(study, parent or run.info.run_id)
    print(format_top(board))
    print(f"report of study {args.study_name!r} written to run {parent or run.info.run_id}")
    return 0

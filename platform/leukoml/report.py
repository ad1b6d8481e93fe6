"""The study report: leaderboard, comparison figures and one self-contained HTML page.

The leaderboard and most figures come from the study storage alone (trial
params and user attributes), so `mlflow run . -e report` can rebuild the
report of any study, whichever workers ran it. The best trial's confusion
matrix and Grad-CAM grids are read from its MLflow run.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from leukoml import names  # noqa: E402
from leukoml.evaluation import plot_confusion  # noqa: E402
from leukoml.progress import progress  # noqa: E402

log = logging.getLogger(__name__)

FIXED_COLUMNS = ["number", "state", names.STOPPED_BY, names.TIER, names.BACKBONE]
SCORE_COLUMNS = ["objective", *names.TRIAL_RECORD, "leak_suspected", names.PARAM_COUNT,
                 "run_id", "error"]
# studies run before trials kept their config (names.CONFIG_ATTR): what trial.params holds
_OLD_DIMENSIONS = (names.LEARNING_RATE, names.BATCH_SIZE, names.PATIENCE, names.CLASS_WEIGHT)
GAP_WARNING = 0.05  # as training's: validation above test by more, outside its interval
TIER_COLOURS = {"low": "#4c9f70", "medium": "#3f7cac", "high": "#c8553d"}


def _ran(trial: optuna.trial.FrozenTrial) -> bool:
    """Queued trials never ran, nor did those a worker created past the budget (see
    `names.SURPLUS_ATTR`) or left unstarted for lack of time."""
    return trial.state != optuna.trial.TrialState.WAITING and not (
        trial.user_attrs.get(names.SURPLUS_ATTR) or trial.user_attrs.get(names.NOT_STARTED_ATTR))


def _config(trial: optuna.trial.FrozenTrial) -> dict:
    """The value of every searched dimension the trial trained with."""
    if names.CONFIG_ATTR in trial.user_attrs:
        return dict(trial.user_attrs[names.CONFIG_ATTR])
    return {key: trial.params.get(key) for key in _OLD_DIMENSIONS}


def _whole(column: str, rows: list[dict]) -> bool:
    """Whether a column holds whole numbers only (blanks aside): shown as 6, not 6.0000."""
    if column in (names.EPOCHS_RUN, names.PARAM_COUNT):  # older studies kept them as floats
        return True
    values = [row[column] for row in rows if row.get(column) is not None]
    return bool(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """One row per trial that ran, best objective first; pruned and failed trials last.

    Columns: the trial, every searched dimension with the value it used, its scores.
    """
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if not _ran(trial):
            continue
        params = dict(trial.params)
        tier = params.get(names.TIER)
        row = {
            "number": trial.number,
            "state": trial.state.name,
            names.STOPPED_BY: trial.user_attrs.get(names.STOPPED_BY),
            names.TIER: tier,
            names.BACKBONE: params.get(f"{names.BACKBONE}_{tier}",
                                       trial.user_attrs.get(names.BACKBONE)),
            **_config(trial),
            "objective": trial.value,
            "run_id": trial.user_attrs.get(names.RUN_ID_ATTR),
            "error": trial.user_attrs.get(names.ERROR_ATTR),
        }
        for key in (*names.TRIAL_RECORD, names.PARAM_COUNT):
            row[key] = trial.user_attrs.get(key)
        row["leak_suspected"] = _leak_suspected(row)
        if trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values:
            row[names.EPOCHS_RUN] = len(trial.intermediate_values)
        rows.append(row)
    dimensions = [key for row in rows for key in row
                  if key not in FIXED_COLUMNS and key not in SCORE_COLUMNS]
    columns = [*FIXED_COLUMNS, *dict.fromkeys(dimensions or _OLD_DIMENSIONS), *SCORE_COLUMNS]
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    ascending = study.direction == optuna.study.StudyDirection.MINIMIZE
    frame["_complete"] = frame["state"] != "COMPLETE"
    frame = frame.sort_values(["_complete", "objective", "number"],
                              ascending=[True, ascending, True], na_position="last")
    for column in (c for c in columns if _whole(c, rows)):
        frame[column] = frame[column].astype("Int64")
    return frame.drop(columns="_complete").reset_index(drop=True)


def _leak_suspected(row: dict) -> bool | None:
    """Validation beat test by more than GAP_WARNING, and test fell below validation's
    95% interval: the trial was probably selected on images that leak from train."""
    gap = row.get(names.val_test_gap("accuracy"))
    low = row.get(names.ci_low(names.SELECTED_VAL_ACCURACY))
    if gap is None or low is None:
        return None
    return bool(gap > GAP_WARNING and row[names.TEST_ACCURACY] < low)


def format_top(board: pd.DataFrame, n: int = 10) -> str:
    """The head of the leaderboard for the console."""
    columns = ["number", "state", names.BACKBONE, names.TIER, "objective", names.TEST_MACRO_F1,
               names.TEST_ACCURACY, names.EPOCHS_RUN, names.STOPPED_BY]
    top = board[columns].head(n).copy()
    top[names.STOPPED_BY] = top[names.STOPPED_BY].fillna("")
    return top.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="")


# --- figures ------------------------------------------------------------------------------

def _complete(board: pd.DataFrame) -> pd.DataFrame:
    return board[board["state"] == "COMPLETE"].copy()


def _label(row) -> str:
    return f"#{row['number']} {row[names.BACKBONE]}"


def plot_score_vs_params(board: pd.DataFrame) -> plt.Figure | None:
    """Does parameter count buy accuracy? Test macro-F1 and accuracy against parameters."""
    done = _complete(board).dropna(subset=[names.PARAM_COUNT, names.TEST_MACRO_F1])
    if done.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True, constrained_layout=True)
    for ax, metric, title in ((axes[0], names.TEST_MACRO_F1, "test macro-F1"),
                              (axes[1], names.TEST_ACCURACY, "test accuracy")):
        sns.scatterplot(data=done, x=names.PARAM_COUNT, y=metric, hue=names.TIER, s=80,
                        palette=TIER_COLOURS, hue_order=[t for t in TIER_COLOURS
                                                         if t in set(done[names.TIER])], ax=ax)
        for _, row in done.iterrows():
            ax.annotate(_label(row), (row[names.PARAM_COUNT], row[metric]), fontsize=8,
                        xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("trained parameters (count, log scale)")
        ax.set_ylabel(title)
        ax.set_title(f"{title} vs model size")
        ax.grid(alpha=0.3)
    return fig


def plot_class_f1(study: optuna.Study, board: pd.DataFrame) -> plt.Figure | None:
    """Per-class test F1, trials x classes: which classes each backbone confuses."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    rows = {_label(row): trials[row["number"]].user_attrs.get(names.CLASS_F1_ATTR)
            for _, row in _complete(board).iterrows()}
    rows = {k: v for k, v in rows.items() if v}
    if not rows:
        return None
    frame = pd.DataFrame(rows).T
    fig, ax = plt.subplots(figsize=(1.2 * frame.shape[1] + 3.5, 0.45 * len(frame) + 1.8),
                           constrained_layout=True)
    sns.heatmap(frame, annot=True, fmt=".2f", cmap="viridis", vmin=0, vmax=1, ax=ax,
                cbar_kws={"label": "test F1"})
    ax.set_title("per-class test F1 (rows: trials, best first)")
    ax.set_xlabel("class")
    ax.set_ylabel("trial")
    ax.tick_params(axis="x", labelrotation=30)
    return fig


def plot_objective_vs_time(board: pd.DataFrame, metric: str) -> plt.Figure | None:
    done = board.dropna(subset=["objective", names.TRAIN_SECONDS])
    if done.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    sns.scatterplot(data=done, x=names.TRAIN_SECONDS, y="objective", hue=names.TIER,
                    style=names.BACKBONE, palette=TIER_COLOURS, s=80, ax=ax)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel(f"objective: {metric}")
    ax.set_title("objective vs training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


def optuna_figure(plot, study: optuna.Study, **kwargs) -> plt.Figure | None:
    """One of `optuna.visualization.matplotlib`'s plots as a figure; None when Optuna cannot
    draw it yet (too few trials, a single-valued space, no intermediate values)."""
    import warnings

    with warnings.catch_warnings():  # the matplotlib backend is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            axes = plot(study, **kwargs)
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:
            log.info("no %s: %s", plot.__name__, exc)
            return None
    axes = np.ravel(axes)[0] if isinstance(axes, np.ndarray) else axes
    if not axes.has_data():
        plt.close(axes.figure)
        return None
    axes.figure.set_size_inches(7, 4.5)
    return axes.figure


def optuna_figures(study: optuna.Study, metric: str) -> dict[str, plt.Figure | None]:
    """Optimisation history, parameter importances, intermediate values and timeline."""
    from optuna.visualization import matplotlib as views

    return {
        "optimisation_history.png": optuna_figure(views.plot_optimization_history, study,
                                                  target_name=metric),
        "param_importances.png": optuna_figure(views.plot_param_importances, study,
                                               target_name=metric),
        "intermediate_values.png": optuna_figure(views.plot_intermediate_values, study),
        "timeline.png": optuna_figure(views.plot_timeline, study),
    }


def plot_best_confusion(run_id: str, title: str) -> plt.Figure | None:
    try:
        path = MlflowClient().download_artifacts(run_id, names.CONFUSION_CSV)
    except Exception as exc:  # the run or its artifact is gone
        log.warning("no confusion matrix for run %s: %s", run_id, exc)
        return None
    return plot_confusion(pd.read_csv(path, index_col=0), title, counts=False)


# --- assembling -----------------------------------------------------------------------------

def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _gradcam_pngs(run_id: str) -> dict[str, bytes]:
    client = MlflowClient()
    try:
        items = client.list_artifacts(run_id, names.GRADCAM_DIR)
    except Exception:
        return {}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for item in items:
            if item.path.endswith(".png"):
                local = client.download_artifacts(run_id, item.path, tmp)
                out[f"best_gradcam_{Path(item.path).name}"] = Path(local).read_bytes()
    return out


def build_report(study: optuna.Study) -> tuple[pd.DataFrame, dict[str, bytes], str]:
    """(leaderboard, {file name: PNG bytes}, report.html) for `study`."""
    board = leaderboard(study)
    metric = study.user_attrs.get(names.OBJECTIVE_ATTR, "objective")
    figures = {
        "score_vs_params.png": plot_score_vs_params(board),
        "per_class_f1.png": plot_class_f1(study, board),
        "objective_vs_time.png": plot_objective_vs_time(board, metric),
        **optuna_figures(study, metric),
    }
    best = _complete(board).head(1)
    if not best.empty and best.iloc[0]["run_id"]:
        row = best.iloc[0]
        figures["best_confusion_matrix.png"] = plot_best_confusion(
            row["run_id"], f"best trial #{row['number']} {row[names.BACKBONE]}: row-normalised")
    pngs = {name: _png(fig) for name, fig in progress(figures.items(), len(figures), "report",
                                                      unit="figure") if fig is not None}
    if not best.empty and best.iloc[0]["run_id"]:
        pngs.update(_gradcam_pngs(best.iloc[0]["run_id"]))
    return board, pngs, render_html(study, board, pngs, metric)


def render_html(study: optuna.Study, board: pd.DataFrame, pngs: dict[str, bytes],
                metric: str) -> str:
    """One self-contained page: every image is embedded as a data URI."""
    shown = board.drop(columns=["run_id"]).copy()
    shown["error"] = shown["error"].fillna("").str.slice(0, 80)
    table = shown.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}",
                          classes="leaderboard", border=0)
    counts = board["state"].value_counts().to_dict()
    images = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"><figcaption>{html.escape(name)}</figcaption></figure>'
        for name, data in pngs.items()
    )
    summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>leukoml study {html.escape(study.study_name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table.leaderboard {{ border-collapse: collapse; font-size: 0.85rem; }}
table.leaderboard th, table.leaderboard td {{ padding: 0.25rem 0.6rem; text-align: right; }}
table.leaderboard tr:nth-child(even) {{ background: #f3f5f8; }}
figure {{ display: inline-block; margin: 1rem; vertical-align: top; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Study {html.escape(study.study_name)}</h1>
<p>{len(board)} trials ({html.escape(summary)}); objective: {html.escape(metric)}
({study.direction.name.lower()}).</p>
<h2>Leaderboard</h2>
{table}
<h2>Figures</h2>
{images}
</body></html>
"""


def log_report(study: optuna.Study, run_id: str) -> pd.DataFrame:
    """Write `report/` (leaderboard.csv, figures, report.html) into the run `run_id`."""
    board, pngs, page = build_report(study)
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / names.REPORT_DIR
        folder.mkdir()
        board.to_csv(folder / Path(names.LEADERBOARD_CSV).name, index=False)
        (folder / "leaderboard.html").write_text(board.to_html(index=False, na_rep=""))
        (folder / "report.html").write_text(page)
        for name, data in pngs.items():
            (folder / name).write_bytes(data)
        client.log_artifacts(run_id, str(folder), names.REPORT_DIR)
    log.info("report of study %r logged to run %s", study.study_name, run_id)
    return board


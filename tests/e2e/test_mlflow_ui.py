"""The MLflow UI in a real headless Chromium, over a real `mlflow server`, after a real study.

Issue 27: the `leukoml` experiment opened on the GenAI "Send your first trace" page, the
trials only behind clicks. leukoml tags its experiments `mlflow.experimentKind =
custom_model_development`; these tests look at what the UI then shows, without a click.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import yaml
from helpers import mlflow_run_args, poll, run_cli, skip_outside_ci, tracking_server
from mlflow.tracking import MlflowClient

from leukoml import names

pytestmark = pytest.mark.e2e

GENAI_PAGE = "Send your first trace"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """Debian's Chromium (`apt-get install chromium`; .ci/run installs it), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def headless_page(width: int = 1500, height: int = 900) -> Iterator:
    """A Playwright page in Debian's headless Chromium (Playwright's own browser download
    needs the internet; its driver drives an installed Chromium as well). Skips where
    Chromium is missing, except in CI (`skip_outside_ci`)."""
    from playwright.sync_api import sync_playwright

    chromium = chromium_path()
    if chromium is None:
        skip_outside_ci("Chromium (apt-get install chromium) not found")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def wait_for_texts(page, texts: list[str], timeout: float = 90) -> str:
    """The page's visible text once it shows every one of `texts` (a React page renders
    after its fetches, which send the test no event); fails after `timeout` s quoting the
    URL it ended on and what it showed."""
    def shown() -> str:
        text = page.inner_text("body")
        return text if all(t in text for t in texts) else ""

    found = poll(shown, timeout)
    if not found:
        missing = [t for t in texts if t not in page.inner_text("body")]
        pytest.fail(f"{page.url} never showed {missing}; it showed:\n"
                    f"{page.inner_text('body')[:3000]}")
    return found


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The quick start in miniature: `mlflow run . -e search --experiment-name leukoml`
    (2 trials of 2 epochs at 32 px) into a fresh SQLite store, the experiment created by
    `mlflow run` itself, as in the README; then `mlflow server` on it."""
    folder = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    space = folder / "tiny.yaml"
    space.write_text(yaml.safe_dump({
        "tiers": {"low": ["Asghar2022CNN"]}, "image_size": 32, "max_image_size": 32,
        "weights": "none", "crop": "none", "augment": "none", "tta": "none", "max_epochs": 2,
        "learning_rate": 1e-3, "batch_size": 32, "patience": 2, "ensemble": 0,
        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}, "n_trials": 2}))
    args = mlflow_run_args("search", "leukoml", data="synthetic:per_class=10,size=32",
                           search_space=space, storage=f"sqlite:///{folder / 'optuna.db'}",
                           model_name="ui-wbc")
    # cwd: the store's default artifact root ./mlruns is this folder's, not the checkout's
    proc = run_cli(args, cwd=folder, env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("leukoml")
    assert experiment.tags[names.TAG_EXPERIMENT_KIND] == names.EXPERIMENT_KIND
    [parent] = client.search_runs([experiment.experiment_id],
                                  names.role_filter(names.Role.STUDY))
    trials = client.search_runs([experiment.experiment_id],
                                names.role_filter(names.Role.TRIAL))
    assert len(trials) == 2
    runs = client.search_runs([experiment.experiment_id])
    with tracking_server(uri, folder / "served", folder / "server.log") as url:
        yield {"url": url, "experiment": experiment.experiment_id,
               "parent": parent.info.run_name, "trials": [r.info.run_name for r in trials],
               "runs": len(runs)}


@pytest.mark.xfail(strict=True, reason=(
    "MLflow 3.18.0 ignores the experiment's kind tag on /#/experiments/<id> and opens the "
    "GenAI overview ('Send your first trace', ?workflowType=genai) unless this browser chose "
    "'Model training' before; in the runs view the trials are collapsed under the study run"))
def test_the_experiment_page_opens_on_the_study_and_its_trials(study):
    with headless_page() as page:
        page.goto(f"{study['url']}/#/experiments/{study['experiment']}")

        def settled() -> str:  # on one page or the other
            text = page.inner_text("body")
            return text if GENAI_PAGE in text or study["parent"] in text else ""

        text = poll(settled, 90)
        assert text, f"{page.url} showed neither the GenAI page nor the study run"
        assert GENAI_PAGE not in text, page.url
        assert all(trial in text for trial in study["trials"]), text


def test_the_training_runs_view_lists_the_study_and_every_trial_run(study):
    """The link that does open on training runs: the study's parent run is listed, and the
    run count includes its trials (nested under it, collapsed)."""
    with headless_page() as page:
        page.goto(f"{study['url']}/#/experiments/{study['experiment']}/runs"
                  f"?workflowType=machine_learning")
        text = wait_for_texts(page, [study["parent"], f"{study['runs']} matching runs"])
        assert GENAI_PAGE not in text


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception),
                                             ("", pytest.skip.Exception)])
def test_a_missing_chromium_skips_outside_ci_and_fails_in_ci(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(sys.modules[__name__], "chromium_path", lambda: None)
    with pytest.raises(outcome, match="Chromium"):
        with headless_page():
            pass

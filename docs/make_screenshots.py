"""Regenerate the README's MLflow UI screenshots from the quick start's store, in one command.

Starts `mlflow server` on the store (by default `sqlite:///mlflow.db` and `mlruns/` in the
current folder: run it from the repository root after the quick start), opens the latest
study's experiment in headless Chromium on its training runs, expands the study's parent
run and picks the columns one compares trials by (docs/mlflow_ui_study.png), then the
compare page of its completed trials with the parallel-coordinates axes chosen
(docs/mlflow_ui_compare.png). Every step waits for what it needs to see, up to a bound.

    apt-get install chromium && pip install -e ".[docs]"   # Playwright drives Debian's
    python docs/make_screenshots.py                        # Chromium: no browser download
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient
from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

DOCS = Path(__file__).resolve().parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000  # the longest any element may take to render on a busy 2-core box
ASSISTANT_MS = 15_000  # how long the side panel may take to open after the page
COLUMNS = ("backbone", "tier", "learning_rate", "optuna.state", "objective", "test_macro_f1",
           "epochs_run")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, seconds: float = 180) -> None:
    """Poll `url` until it answers (the server sends no other sign that it listens)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"mlflow server exited with {server.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"mlflow server not up after {seconds} s: {url}")


def latest_study(client: MlflowClient):
    """(parent run, ids of its completed trial runs) of the most recent study."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, "tags.`leukoml.role` = 'study'",
                               order_by=["start_time DESC"], max_results=1)
    if not found:
        sys.exit("no leukoml study in this store: run the quick start first")
    parent = found[0]
    trials = client.search_runs([parent.info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
                                f"and tags.`leukoml.role` = 'trial'")
    return parent, [r.info.run_id for r in trials if r.data.tags.get("optuna.state") == "COMPLETE"]


def close_assistant(page: Page) -> None:
    """Hide the MLflow Assistant side panel (MLflow 3.18 opens it after the page itself),
    which is not part of comparing runs."""
    prompt = page.get_by_placeholder("Ask a question")
    try:
        prompt.wait_for(timeout=ASSISTANT_MS)
    except PlaywrightTimeout:  # an MLflow without the assistant
        return
    page.get_by_role("button", name="Close").first.click()
    prompt.wait_for(state="hidden")


def choose_columns(page: Page) -> None:
    """Show what one compares trials by, hide the columns that are empty for trials."""
    page.get_by_role("button", name="Columns").click()
    search = page.get_by_placeholder("Search columns")
    search.wait_for(timeout=WAIT_MS)
    for label in ("Dataset", "Source", "Models"):
        page.get_by_text(label, exact=True).last.click()
    for label in COLUMNS:
        search.fill(label)
        page.get_by_text(label, exact=True).last.click()
    page.keyboard.press("Escape")
    search.wait_for(state="hidden", timeout=WAIT_MS)


def choose_axes(page: Page) -> None:
    """Parallel coordinates of the sampled params against the objective (MLflow's
    default picks the first few params and metrics alphabetically)."""
    page.get_by_role("button", name="Clear All").click()
    for box, labels in ((0, ["backbone", "learning_rate", "batch_size"]), (1, ["objective"])):
        page.locator(".du-bois-light-select-selector").nth(box).click()
        options = page.locator(".rc-virtual-list-holder:visible")
        options.wait_for(timeout=WAIT_MS)
        for label in labels:
            option = page.locator(f".du-bois-light-select-item-option[title='{label}']")
            for _ in range(60):  # a virtual list renders what is scrolled into view only
                if option.count():
                    break
                options.evaluate("e => e.scrollTop += 120")
                page.wait_for_function("() => new Promise(r => requestAnimationFrame(r))")
            option.last.click()
        page.keyboard.press("Escape")
        options.wait_for(state="hidden", timeout=WAIT_MS)
    page.locator(".js-plotly-plot .parcoords").first.wait_for(timeout=WAIT_MS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                        help="the quick start's store (default: ./mlflow.db)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    client = MlflowClient(args.tracking_uri)
    parent, trial_ids = latest_study(client)
    experiment = parent.info.experiment_id
    port = free_port()
    # the venv's mlflow first on PATH; artifacts stay where the quick start wrote them
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(["mlflow", "server", "--backend-store-uri", args.tracking_uri,
                               "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/health", server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium,
                                                 args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            page.set_default_timeout(WAIT_MS)
            # MLflow 3.18 opens /#/experiments/<id> on GenAI unless told the workflow
            page.goto(f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning")
            study_row = page.get_by_role("row").filter(has_text=parent.info.run_name)
            study_row.wait_for()
            close_assistant(page)
            choose_columns(page)
            study_row.locator("button").last.click()  # expand the nested trial runs
            page.get_by_text("trial-0-", exact=False).first.wait_for()
            page.screenshot(path=str(DOCS / "mlflow_ui_study.png"))

            page.goto(f"{base}/#/compare-runs?runs={json.dumps(trial_ids)}"
                      f"&experiments={json.dumps([experiment])}&workflowType=machine_learning")
            page.get_by_role("button", name="Clear All").wait_for()
            close_assistant(page)
            choose_axes(page)
            page.screenshot(path=str(DOCS / "mlflow_ui_compare.png"))
            browser.close()
    finally:
        os.killpg(server.pid, 15)  # mlflow server runs uvicorn in a child
        server.wait(timeout=30)
    print(DOCS / "mlflow_ui_study.png", DOCS / "mlflow_ui_compare.png")


if __name__ == "__main__":
    main()

"""Screenshot the MLflow UI comparing a study's trials, in a real headless Chromium.

Starts `mlflow ui` on the given tracking store, opens the experiment with the
study's parent run expanded, then the run-comparison page of its trials, and
chooses the parallel-coordinates axes (sampled params against the objective),
and saves both as PNGs under docs/.

    apt-get install chromium && pip install -e ".[docs]"   # Playwright drives Debian's
                                                           # /usr/bin/chromium: no download
    python docs/make_ui_screenshot.py --tracking-uri sqlite:///mlflow.db
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient
from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


def close_assistant(page) -> None:
    """Hide the MLflow Assistant side panel, which is not part of comparing runs."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
        page.wait_for_timeout(1000)


def choose_columns(page) -> None:
    """Show what one compares trials by: backbone, tier, state, objective, test macro-F1."""
    page.get_by_role("button", name="Columns").click()
    page.wait_for_timeout(1000)
    for label in ("Dataset", "Source", "Models"):  # on by default, empty for trials
        page.get_by_text(label, exact=True).last.click()
    search = page.get_by_placeholder("Search columns")
    for label in ("backbone", "tier", "learning_rate", "optuna.state", "objective",
                  "test_macro_f1", "epochs_run"):
        search.fill(label)
        page.wait_for_timeout(500)
        page.get_by_text(label, exact=True).last.click()
    page.keyboard.press("Escape")
    page.wait_for_timeout(1500)


def choose_axes(page) -> None:
    """Parallel coordinates of the sampled params against the objective (MLflow's
    default picks the first few params and metrics alphabetically)."""
    page.get_by_role("button", name="Clear All").click()
    page.wait_for_timeout(1000)
    for box, labels in ((0, ["backbone", "learning_rate", "batch_size"]), (1, ["objective"])):
        page.locator(".du-bois-light-select-selector").nth(box).click()
        page.wait_for_timeout(800)
        for label in labels:
            option = page.locator(f".du-bois-light-select-item-option[title='{label}']")
            options_list = page.locator(".rc-virtual-list-holder:visible")
            for _ in range(60):  # the list is virtual: scroll until the option is rendered
                if option.count():
                    break
                options_list.evaluate("e => e.scrollTop += 120")
                page.wait_for_timeout(150)
            option.last.click()
            page.wait_for_timeout(500)
        page.keyboard.press("Escape")
        page.wait_for_timeout(800)
    page.wait_for_timeout(2000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    client = MlflowClient(args.tracking_uri)
    parent = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`leukoml.role` = 'study'", order_by=["start_time DESC"], max_results=1)[0]
    experiment = parent.info.experiment_id
    trials = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = "
                                              f"'{parent.info.run_id}' and tags.`leukoml.role` = 'trial'")
    run_ids = [r.info.run_id for r in trials if r.data.tags.get("optuna.state") == "COMPLETE"]

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                               args.tracking_uri, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            page.goto(f"{base}/#/experiments/{experiment}/runs")
            page.wait_for_timeout(6000)
            close_assistant(page)
            choose_columns(page)
            study_row = page.get_by_role("row").filter(has_text="study-")
            study_row.locator("button").last.click()  # expand the nested trial runs
            page.wait_for_timeout(2500)
            page.screenshot(path=str(DOCS / "mlflow_ui_study.png"))
            runs = json.dumps(run_ids)
            page.goto(f"{base}/#/compare-runs?runs={runs}&experiments=[\"{experiment}\"]")
            page.wait_for_timeout(8000)
            close_assistant(page)
            choose_axes(page)
            page.screenshot(path=str(DOCS / "mlflow_ui_compare.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(DOCS / "mlflow_ui_study.png", DOCS / "mlflow_ui_compare.png")


if __name__ == "__main__":
    main()

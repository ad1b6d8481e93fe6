"""Fail fast, resume after a kill: the two promises a user feels first.

- `time_to_error`: seconds from the command to its exit for bad input (a
  missing data folder, an unknown backbone, a bad search space, unreachable
  storage), beside the anchors `python -c pass`, `import mlflow` and
  `import tensorflow` measured in the same run. Target: under 5 s, no run left.
- `resume`: a one-trial study on the synthetic set is SIGKILLed after it has
  finished some epochs, then the same command is run again; the retried trial
  must restart from the killed one's last finished epoch (Keras
  `BackupAndRestore`). Reports epochs finished before the kill, the epoch the
  retry resumed at, and epochs recomputed (0 is the target; without the
  backup it would be every finished epoch).

    python benchmarks/robustness.py [--repeats 3]

Writes benchmarks/results/robustness.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import machine, print_table, write_result

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(REPO / "platform"), PATH=f"{BIN}{os.pathsep}{env['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", **extra)
    return env


def _timed(args: list[str], env: dict, cwd: Path) -> tuple[float, int, str]:
    started = time.perf_counter()
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return time.perf_counter() - started, proc.returncode, last[:300]


def time_to_error(repeats: int) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="leukoml-fail-fast-"))
    bad_space = tmp / "bad.yaml"
    bad_space.write_text(yaml.safe_dump({"tiers": {"low": ["MobileNetV3Small"]},
                                         "optimizer": ["adam", "lion"], "n_trials": 1}))
    leukoml = [sys.executable, "-m", "leukoml"]
    cases = {
        "anchor: python -c pass": [sys.executable, "-c", "pass"],
        "anchor: import mlflow": [sys.executable, "-c", "import mlflow"],
        "anchor: import tensorflow": [sys.executable, "-c", "import tensorflow"],
        "search --data /no/such/folder": [*leukoml, "search", "--data", "/no/such/folder"],
        "search, unknown optimiser in the space": [*leukoml, "search", "--search-space",
                                                   str(bad_space)],
        "search, unreachable PostgreSQL storage": [
            *leukoml, "search", "--storage", "postgresql://leukoml@127.0.0.1:9/optuna"],
        "train --backbone NoSuchNet": [*leukoml, "train", "--backbone", "NoSuchNet"],
        "mlflow run . -e search -P data=/no/such/folder": [
            "mlflow", "run", ".", "-e", "search", "--env-manager", "local",
            "--experiment-name", "fail-fast", "-P", "data=/no/such/folder"],
    }
    rows = []
    for what, args in cases.items():
        times, codes, last = [], set(), ""
        for _ in range(repeats):
            seconds, code, last = _timed(args, _env(tmp), REPO)
            times.append(seconds)
            codes.add(code)
        rows.append({"case": what, "median_seconds": round(statistics.median(times), 2),
                     "max_seconds": round(max(times), 2), "exit_codes": sorted(codes),
                     "message": "" if what.startswith("anchor") else last})
    from mlflow.tracking import MlflowClient

    from leukoml import names

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    left = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    rows.append({"case": "MLflow runs left behind by all the bad inputs (only `mlflow run`'s, "
                         "FAILED with leukoml.failure)", "runs": len(left),
                 "statuses": sorted({r.info.status for r in left}),
                 "without_reason": sum(names.TAG_FAILURE not in r.data.tags for r in left)})
    return rows


def resume() -> dict:
    """Kill a one-trial study mid-way; rerun it; compare epochs."""
    from mlflow.tracking import MlflowClient

    from leukoml import names

    tmp = Path(tempfile.mkdtemp(prefix="leukoml-resume-"))
    space = tmp / "resume.yaml"
    space.write_text(yaml.safe_dump({
        "tiers": {"low": ["Asghar2022CNN"]}, "image_size": 48, "max_image_size": 48,
        "weights": "none", "crop": "none", "augment": "flips", "tta": "none", "max_epochs": 12,
        "learning_rate": 1e-3, "batch_size": 16, "patience": 12, "ensemble": 0,
        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}, "n_trials": 1}))
    storage = f"sqlite:///{tmp / 'optuna.db'}"
    args = [sys.executable, "-m", "leukoml", "search", "--data", "synthetic:per_class=60",
            "--search-space", str(space), "--storage", storage, "--study-name", "resume"]
    env = _env(tmp, LEUKOML_HEARTBEAT_SECONDS="2", LEUKOML_GRACE_SECONDS="6",
               MLFLOW_EXPERIMENT_NAME="resume")
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    kill_after = 4  # finished epochs
    with open(tmp / "killed.log", "w") as log:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    while proc.poll() is None:
        runs = [r for e in client.search_experiments()
                for r in client.search_runs([e.experiment_id],
                                            names.role_filter(names.Role.TRIAL))]
        if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= kill_after:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    killed_run = runs[0].info.run_id
    finished = len(client.get_metric_history(killed_run, "loss"))
    started = time.perf_counter()
    rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    import optuna

    study = optuna.load_study(study_name="resume", storage=storage)
    retry = [t for t in study.trials if "failed_trial" in t.system_attrs]
    if rerun.returncode != 0 or not retry:
        return {"error": (rerun.stderr or rerun.stdout)[-1500:]}
    retry_run = client.get_run(retry[0].user_attrs[names.RUN_ID_ATTR])
    resumed = int(retry_run.data.metrics.get(names.RESUMED_AT_EPOCH, 1))  # 1-based
    return {"max_epochs": 12, "epochs_finished_before_kill": finished,
            "retry_resumed_at_epoch": resumed,
            "epochs_recomputed": max(0, finished - (resumed - 1)),
            "epochs_recomputed_without_backup": finished,
            "retry_epochs_run": len(client.get_metric_history(retry_run.info.run_id, "loss")),
            "rerun_seconds": round(time.perf_counter() - started, 1),
            "trial_states": sorted(t.state.name for t in study.trials)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    info = machine()
    rows = time_to_error(args.repeats)
    result = {"machine": info, "time_to_error": rows, "resume": resume()}
    write_result("robustness", result)
    print_table(rows[:-1], [("case", "case"), ("median s", "median_seconds", ".2f"),
                            ("exit", "exit_codes")])
    print(rows[-1])
    print(result["resume"])


if __name__ == "__main__":
    main()

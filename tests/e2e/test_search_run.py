"""`mlflow run . -e search` for real: parent and nested trial runs, pruning, failures, resume."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest
import yaml
from helpers import make_experiment, mlflow_run_args, poll, run_cli, the_failed_run
from mlflow.tracking import MlflowClient

from leukoml import names

pytestmark = pytest.mark.e2e

DATA = "synthetic:per_class=100,size=32"


@pytest.fixture(scope="module")
def asghar_weights(tmp_path_factory):
    """Weights of the Asghar2022CNN backbone: they load into it, not into MobileNetV3Small."""
    from leukoml.backbones import get_backbone
    from leukoml.backbones.classifier import backbone_model

    path = tmp_path_factory.mktemp("weights") / "asghar32.weights.h5"
    backbone_model(get_backbone("Asghar2022CNN"), 32).save_weights(path)
    return path


def search_space(path, weights, n_trials):
    """A grid over two backbones, then random trials: trial 0 is Asghar2022CNN (its own
    weights load), trial 1 MobileNetV3Small, which cannot load the Asghar weights file and
    fails. Whatever the later draws, every assertion below is a property of the study."""
    path.write_text(yaml.safe_dump({
        "objective": {"metric": "val_loss", "direction": "minimize"},
        "tiers": {"low": ["Asghar2022CNN", "MobileNetV3Small"]},
        "image_size": 32, "max_image_size": 32, "weights": str(weights), "crop": "none",
        "max_epochs": 3, "learning_rate": {"low": 3e-4, "high": 3e-3, "log": True},
        "batch_size": [32], "patience": 3, "augment": "none", "tta": "flips",
        "sampler": {"name": "grid", "seed": 4},
        "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 1},
        "n_trials": n_trials,
        "ensemble": 0,  # this test is about one best trial; ensembles: test_scale_out, docs
    }))
    return path


MODEL = "e2e-wbc"


def mlflow_run(tracking_uri, entry, **params):
    proc = run_cli(mlflow_run_args(entry, "e2e-search", **params),
                   env={"MLFLOW_TRACKING_URI": tracking_uri})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def mlflow_run_search(tracking_uri, storage, space, study_name, n_trials=None):
    extra = {"n_trials": n_trials} if n_trials else {}
    return mlflow_run(tracking_uri, "search", data=DATA, search_space=space,
                      study_name=study_name, storage=storage, model_name=MODEL, **extra)


def test_search_nests_trials_prunes_survives_failures_and_resumes(
    tracking_uri, tmp_path, asghar_weights
):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_experiment(tracking_uri, "e2e-search", tmp_path)
    space = search_space(tmp_path / "tiny.yaml", asghar_weights, n_trials=6)
    first = mlflow_run_search(tracking_uri, storage, space, "tiny")
    assert "leaderboard" in first.stdout and "trial 0" in first.stdout

    study = optuna.load_study(study_name="tiny", storage=storage)
    states = [t.state.name for t in study.trials]
    assert len(states) == 6 and set(states) <= {"COMPLETE", "PRUNED", "FAIL"}
    assert states[0] == "COMPLETE" and states[1] == "FAIL"  # the grid's two backbones
    assert study.metric_names == [study.user_attrs[names.OBJECTIVE_ATTR]]  # dashboards name it

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("e2e-search").experiment_id
    parents = client.search_runs([experiment], names.role_filter(names.Role.STUDY))
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags[names.TAG_STUDY_NAME] == "tiny"
    parent_files = [a.path for a in client.list_artifacts(parent.info.run_id, names.REPORT_DIR)]
    assert names.LEADERBOARD_CSV in parent_files
    assert [a.path for a in client.list_artifacts(parent.info.run_id, names.SEARCH_SPACE_DIR)]

    children = client.search_runs(
        [experiment], f"tags.`{names.TAG_PARENT_RUN}` = '{parent.info.run_id}' "
                      f"and {names.role_filter(names.Role.TRIAL)}")
    assert len(children) == 6
    by_number = {int(r.data.tags[names.TAG_OPTUNA_TRIAL]): r for r in children}
    assert sorted(by_number) == list(range(6))
    for trial in study.trials:
        run = by_number[trial.number]
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert tags[names.TAG_OPTUNA_STATE] == trial.state.name
        assert tags[names.TAG_OPTUNA_STUDY] == "tiny"
        assert run.info.run_name == f"trial-{trial.number}-{params['backbone']}"
        assert params["tier"] == "low" and float(params["learning_rate"]) == pytest.approx(
            trial.params["learning_rate"])
        assert run.data.tags[names.TAG_PARENT_RUN] == parent.info.run_id
        assert params["backbone"] == trial.params["backbone_low"]
        if trial.state.name == "COMPLETE":
            assert run.info.status == "FINISHED"
            assert metrics["objective"] == pytest.approx(trial.value)
            assert names.TEST_MACRO_F1 in metrics and names.CONFUSION_PNG in [
                a.path for a in client.list_artifacts(run.info.run_id, "evaluation")]
        elif trial.state.name == "PRUNED":
            history = client.get_metric_history(run.info.run_id, "val_macro_f1")
            assert 2 <= len(history) <= 3  # the curve up to the prune is kept
            assert metrics[names.EPOCHS_RUN] == len(history) == len(trial.intermediate_values)
            assert names.TEST_MACRO_F1 not in metrics
        else:
            assert params["backbone"] == "MobileNetV3Small"
            assert run.info.status == "FAILED"
            error = open(client.download_artifacts(run.info.run_id, names.ERROR_TXT)).read()
            assert "ValueError" in error or "mismatch" in error.lower()

    board = pd.read_csv(client.download_artifacts(parent.info.run_id, names.LEADERBOARD_CSV))
    assert len(board) == 6 and board.loc[0, "state"] == "COMPLETE"
    assert board.loc[0, "objective"] == pytest.approx(study.best_value)
    best_run = by_number[study.best_trial.number].info.run_id
    assert parent.data.tags[names.TAG_BEST_TRIAL_RUN] == best_run

    # the best trial was promoted: the first version of the model is the champion
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == best_run
    assert client.get_model_version_by_alias(MODEL, "candidate").version == champion.version

    # report/: figures and one self-contained page embedding them
    report = {a.path for a in client.list_artifacts(parent.info.run_id, names.REPORT_DIR)}
    for figure in ("score_vs_params.png", "per_class_f1.png", "optimisation_history.png",
                   "best_confusion_matrix.png", "report.html"):
        assert f"{names.REPORT_DIR}/{figure}" in report
    page = open(client.download_artifacts(parent.info.run_id, "report/report.html")).read()
    assert page.count("data:image/png;base64,") >= 5 and 'src="report/' not in page

    # -e report rebuilds the same leaderboard from the study storage alone
    original = board.copy()
    mlflow_run(tracking_uri, "report", study_name="tiny", storage=storage)
    rebuilt = pd.read_csv(client.download_artifacts(parent.info.run_id, names.LEADERBOARD_CSV))
    pd.testing.assert_frame_equal(rebuilt, original)

    # -e explain: Grad-CAM overlays of the champion for a folder of images
    images = tmp_path / "to-explain"
    images.mkdir()
    from PIL import Image

    from leukoml.data import render_cell
    for i, kind in enumerate(("monocyte", "eosinophil", "lymphocyte")):
        Image.fromarray(render_cell(kind, 80, seed=i)).save(images / f"{kind}.png")
    out = tmp_path / "overlays"
    mlflow_run(tracking_uri, "explain", model_uri=f"models:/{MODEL}@champion",
               images=images, output_dir=out)
    assert sorted(p.name for p in out.iterdir()) == [
        "eosinophil.png.gradcam.png", "lymphocyte.png.gradcam.png", "monocyte.png.gradcam.png"]
    explain_runs = client.search_runs([experiment], names.role_filter(names.Role.EXPLAIN))
    logged = client.list_artifacts(explain_runs[0].info.run_id, names.GRADCAM_DIR)
    assert len(logged) == 3

    # resume: the same study name and a larger budget add trials, recompute nothing
    before = {t.number: (t.state, t.value, t.params) for t in study.trials}
    mlflow_run_search(tracking_uri, storage, space, "tiny", n_trials=8)
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.number for t in study.trials] == list(range(8))
    for t in study.trials[:6]:
        assert (t.state, t.value, t.params) == before[t.number]
    children = client.search_runs(
        [experiment], f"tags.`{names.TAG_PARENT_RUN}` = '{parent.info.run_id}' "
                      f"and {names.role_filter(names.Role.TRIAL)}")
    numbers = sorted(int(r.data.tags[names.TAG_OPTUNA_TRIAL]) for r in children)
    assert numbers == list(range(8))
    assert len(client.search_runs([experiment], names.role_filter(names.Role.STUDY))) == 1


@pytest.mark.parametrize("data", ["/no/such/folder", "one-class"])
def test_a_bad_data_folder_stops_the_search_before_any_run_or_trial(
        tracking_uri, tmp_path, data):
    """Before: every trial FAILed on the missing folder and the search exited 0."""
    if data == "one-class":
        from helpers import write_image

        for i in range(3):
            write_image(tmp_path / "one-class" / "neutrophil" / f"{i}.png")
        data = str(tmp_path / "one-class")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_experiment(tracking_uri, "e2e-search", tmp_path)
    proc = run_cli(mlflow_run_args("search", "e2e-search", data=data, storage=storage,
                                   study_name="bad-data"),
                   env={"MLFLOW_TRACKING_URI": tracking_uri})
    assert proc.returncode != 0
    assert "leukoml search: error: data:" in proc.stderr
    assert "Epoch 1" not in proc.stdout and "trial 0" not in proc.stdout
    assert optuna.study.get_all_study_names(storage) == []  # no study, no trial
    experiment = MlflowClient(tracking_uri).get_experiment_by_name("e2e-search").experiment_id
    the_failed_run(tracking_uri, experiment, "leukoml search: error: data:")


@pytest.mark.xfail(strict=False, reason=(
    "known bug, 2026-12-07: a kill inside the second epoch's backup write leaves a torn HDF5 "
    "file that h5py reads with a RuntimeError, which Keras' double checkpoint does not fall "
    "back from; the retry now starts over instead of failing, so resumed_at_epoch is missing "
    "(2 of 3 full CI runs today)"))
def test_a_killed_study_resumed_to_the_end_leaves_its_parent_run_finished(
        tracking_uri, tmp_path):
    """Before: the killed leader's parent run stayed KILLED after the resumed study ended."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from helpers import REPO, stop_process_group

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_experiment(tracking_uri, "e2e-search", tmp_path)
    space = tmp_path / "resume.yaml"
    space.write_text(yaml.safe_dump({
        "tiers": {"low": ["Asghar2022CNN"]}, "image_size": 32, "max_image_size": 32,
        "weights": "none", "crop": "none", "augment": "none", "tta": "none", "max_epochs": 30,
        "learning_rate": 1e-3, "batch_size": 32, "patience": 30, "ensemble": 0,
        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}, "n_trials": 2}))
    args = mlflow_run_args("search", "e2e-search", data=DATA, search_space=space,
                           storage=storage, study_name="resumed", model_name=MODEL)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_ID"}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, LEUKOML_HEARTBEAT_SECONDS="2",
               LEUKOML_GRACE_SECONDS="6")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("e2e-search").experiment_id
    with open(tmp_path / "killed.log", "w") as log:
        leader = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    def trained_two_epochs() -> bool:
        """Two: the first epoch's backup is then written whole (it was written before the
        second epoch began), so the retry has a checkpoint to resume from even if the kill
        falls inside the second backup's write. One was a race: a kill between the first
        epoch's logged loss and its backup left nothing to resume (CI, 2026-12-07)."""
        trials = client.search_runs([experiment], names.role_filter(names.Role.TRIAL))
        return bool(trials) and len(client.get_metric_history(trials[0].info.run_id,
                                                              "loss")) >= 2

    try:  # kill it (the whole group, no goodbye) once its first trial has trained two epochs
        if not poll(trained_two_epochs, 300, interval=1):
            pytest.fail("no trial trained two epochs:\n" + (tmp_path / "killed.log").read_text())
        os.killpg(leader.pid, signal.SIGKILL)
    finally:
        stop_process_group(leader)
    [parent] = client.search_runs([experiment], names.role_filter(names.Role.STUDY))
    assert parent.info.status == "RUNNING"  # nobody was left to say otherwise

    resumed = run_cli(args, env={k: env[k] for k in ("MLFLOW_TRACKING_URI",
                                                     "LEUKOML_HEARTBEAT_SECONDS",
                                                     "LEUKOML_GRACE_SECONDS")})
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "other workers" not in resumed.stdout
    study = optuna.load_study(study_name="resumed", storage=storage)
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]  # the killed trial, retried
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    [worker] = client.search_runs([experiment], names.role_filter(names.Role.WORKER))
    assert parent.data.tags[names.TAG_FINISHED_BY] == worker.info.run_id
    # the retry resumed from the killed trial's last finished epoch, not from epoch 0
    [killed] = [t for t in study.trials if t.state.name == "FAIL"]
    [retry] = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    retry_run = client.get_run(retry.user_attrs[names.RUN_ID_ATTR])
    finished = len(client.get_metric_history(killed.user_attrs[names.RUN_ID_ATTR], "loss"))
    resumed = retry_run.data.metrics[names.RESUMED_AT_EPOCH]
    # (+1: the kill may fall between an epoch's backup and its logged loss; -1: or during
    # the backup's write, which the previous epoch's checkpoint then stands in for)
    assert finished >= 2 and finished - 1 <= resumed <= finished + 1 and resumed >= 1


def test_an_unreachable_storage_stops_the_search_and_leaves_a_failed_run_saying_why(tracking_uri, tmp_path):
    make_experiment(tracking_uri, "e2e-storage", tmp_path)
    proc = run_cli(mlflow_run_args("search", "e2e-storage",
                                   storage="postgresql://leukoml:secret@127.0.0.1:9/optuna"),
                   env={"MLFLOW_TRACKING_URI": tracking_uri})
    assert proc.returncode != 0
    # (mlflow run itself echoes the command with the URL; leukoml's own message masks it)
    assert "cannot open the Optuna storage postgresql://leukoml:***@127.0.0.1:9" in proc.stderr
    experiment = MlflowClient(tracking_uri).get_experiment_by_name("e2e-storage").experiment_id
    run = the_failed_run(tracking_uri, experiment, "cannot open the Optuna storage "
                                                   "postgresql://leukoml:***@127.0.0.1:9")
    assert "secret" not in run.data.tags[names.TAG_FAILURE]


def test_a_study_whose_only_trial_meets_the_deadline_registers_it_as_champion(
        tracking_uri, tmp_path):
    """Before: the trial was recorded PRUNED ("stopped by the study's deadline"), the study
    printed "no trial completed; nothing to promote" and registered nothing. Deterministic:
    the trial may not shrink below 3000 epochs (min_epochs), which never fit in 60 s."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_experiment(tracking_uri, "e2e-search", tmp_path)
    space = tmp_path / "deadline.yaml"
    space.write_text(yaml.safe_dump({
        "tiers": {"low": ["Asghar2022CNN"]}, "image_size": 32, "max_image_size": 32,
        "crop": "none", "augment": "none", "tta": "none", "learning_rate": 1e-3,
        "max_epochs": 3000, "min_epochs": 3000, "patience": 3000,
        "pruner": {"name": "none"}, "n_trials": 2, "timeout": 60, "ensemble": 0}))
    model = "e2e-deadline"
    proc = mlflow_run(tracking_uri, "search", data="synthetic:per_class=20,size=32",
                      search_space=space, study_name="deadline", storage=storage,
                      model_name=model)
    assert "nothing to promote" not in proc.stdout
    assert "stopped by the study's deadline" in proc.stdout

    study = optuna.load_study(study_name="deadline", storage=storage)
    first = study.trials[0]
    assert first.state.name == "COMPLETE"
    assert first.user_attrs[names.STOPPED_BY] == names.STOPPED_BY_DEADLINE
    assert [t.state.name for t in study.trials[1:]] == ["WAITING"]  # no time left for it

    client = MlflowClient(tracking_uri)
    champion = client.get_model_version_by_alias(model, "champion")
    assert champion.run_id == first.user_attrs[names.RUN_ID_ATTR]
    assert champion.tags[names.STOPPED_BY] == names.STOPPED_BY_DEADLINE

    parent = client.get_run(study.user_attrs[names.PARENT_RUN_ATTR])
    board = pd.read_csv(client.download_artifacts(parent.info.run_id, names.LEADERBOARD_CSV))
    assert list(board["number"]) == [0]  # the queued trial never ran: no row
    assert board.loc[0, names.STOPPED_BY] == names.STOPPED_BY_DEADLINE
    assert board.loc[0, names.LEARNING_RATE] == pytest.approx(1e-3)

    # the parent run carries the study's results and its real settings
    metrics, params = parent.data.metrics, parent.data.params
    assert metrics[names.trials_counted("complete")] == 1
    assert metrics[names.trials_counted("stopped_by_deadline")] == 1
    assert metrics[names.trials_counted("pruned")] == metrics[names.trials_counted("failed")] == 0
    assert metrics[names.STUDY_BEST_TRIAL] == 0
    assert metrics[names.STUDY_BEST_VALUE] == pytest.approx(first.value)
    assert metrics[names.CHAMPION_TEST_MACRO_F1] == pytest.approx(
        first.user_attrs[names.TEST_MACRO_F1], abs=0.01)  # served pyfunc vs in-process
    curve = client.get_metric_history(parent.info.run_id, names.BEST_SO_FAR)
    assert [m.value for m in curve] == pytest.approx([first.value])
    assert params[names.PARAM_STUDY_NAME] == "deadline"
    assert params[names.PARAM_STUDY_N_TRIALS] == "2"
    assert params[names.PARAM_STUDY_TIMEOUT] == "60"

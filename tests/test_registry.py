"""Promotion into the Model Registry: the champion alias moves only for a better model.

"Better" and "worse" are real: models trained 8 epochs, 3 epochs, and with a
learning rate too small to learn anything, on the same synthetic data.
"""

from __future__ import annotations

import json
import threading

import mlflow
import pytest
from helpers import postgres_server, sqlite_store, train_tiny
from mlflow import MlflowClient
from PIL import Image

from leukoml import names
from leukoml.data import SYNTHETIC_CLASSES, DataSpec, prepare_dataset, render_cell
from leukoml.errors import LeukomlError
from leukoml.locks import advisory_key, lock_path
from leukoml.names import (
    CANDIDATE,
    CHAMPION,
    TAG_CANDIDATE_F1,
    TAG_CHAMPION_F1,
    TAG_DECISION,
    TAG_DISTINGUISHABLE,
    TAG_REASON,
)
from leukoml.registry import promote, promotion_lock
from leukoml.serving import find_serving_model


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store and an experiment with its artifacts in tmp, for this module."""
    with sqlite_store(tmp_path_factory.mktemp("registry-store"), "registry") as store:
        yield store


def train(store, **overrides) -> str:
    """Train a tiny model in process and return its finished run id."""
    return train_tiny(store.experiment, **overrides)[0]


@pytest.fixture(scope="module")
def weak(store):
    return train(store, learning_rate="1e-6", max_epochs=1)  # cannot learn: one class for all


@pytest.fixture(scope="module")
def medium(store):
    return train(store, max_epochs=3)


@pytest.fixture(scope="module")
def strong(store):
    return train(store, max_epochs=8, patience=8, image_size=40)  # its own input size


@pytest.fixture(scope="module")
def three_classes(store):
    root = store.folder / "three-classes"
    for label, kind in enumerate(("basophil", "lymphocyte", "neutrophil")):
        (root / kind).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(render_cell(kind, 48, (9, label, i))).save(root / kind / f"{i}.png")
    return train(store, data=str(root), max_epochs=1)


def logged_f1(run_id: str) -> float:
    """The test macro-F1 training logged for the run."""
    return mlflow.get_run(run_id).data.metrics[names.TEST_MACRO_F1]


def alias(name: str, which: str) -> str:
    return str(MlflowClient().get_model_version_by_alias(name, which).version)


def version_tags(name: str, version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(name, version).tags


def test_the_first_promotion_makes_a_champion_scored_as_in_training(store, medium):
    result = promote(medium, "first")
    assert result.promoted and result.previous_champion is None
    assert alias("first", CHAMPION) == alias("first", CANDIDATE) == result.version
    # Raw files through the pyfunc score exactly what training logged: same pixels.
    assert result.candidate_f1 == pytest.approx(logged_f1(medium), abs=1e-9)
    tags = version_tags("first", result.version)
    assert tags[TAG_DECISION] == "champion" and "no champion yet" in tags[TAG_REASON]
    assert tags[names.BACKBONE] == "Asghar2022CNN"
    assert json.loads(tags[names.CLASS_NAMES]) == list(SYNTHETIC_CLASSES)
    assert float(tags[names.TEST_MACRO_F1]) == pytest.approx(logged_f1(medium))
    assert MlflowClient().get_model_version("first", result.version).run_id == medium
    # the new champion is exported beside its run, parity-checked on validation images
    metrics = mlflow.get_run(medium).data.metrics
    assert metrics[names.export_metric("onnx", "max_abs_diff")] <= 1e-4
    assert metrics[names.export_metric("tflite", "max_abs_diff")] <= 1e-3
    assert metrics[names.export_metric("onnx", "bytes")] > 1000
    files = {f.path for f in MlflowClient().list_artifacts(medium, names.EXPORT_DIR)}
    assert {f"{names.EXPORT_DIR}/model.onnx", f"{names.EXPORT_DIR}/model.tflite"} <= files
    assert "validation images" in tags[names.TAG_EXPORT]


def test_a_better_candidate_takes_the_champion_alias(store, weak, strong):
    first = promote(weak, "better", export=())
    result = promote(strong, "better", export=())
    assert result.promoted and alias("better", CHAMPION) == result.version
    assert result.previous_champion == first.version
    # Each model read the same files at its own input size (32 and 40 px).
    assert result.champion_f1 == pytest.approx(logged_f1(weak), abs=1e-9)
    assert result.candidate_f1 == pytest.approx(logged_f1(strong), abs=1e-9)
    assert result.candidate_f1 > result.champion_f1
    tags = version_tags("better", result.version)
    assert tags[TAG_REASON].startswith("better: test macro-F1")
    # a model at chance against a trained one: the paired interval excludes zero
    assert tags[TAG_DISTINGUISHABLE] == "true" and "(distinguishable)" in tags[TAG_REASON]
    assert float(tags[TAG_CHAMPION_F1]) == pytest.approx(result.champion_f1, abs=1e-6)


def test_a_worse_candidate_leaves_the_champion_and_the_reason_is_recorded(store, weak, strong):
    champion = promote(strong, "worse", export=())
    result = promote(weak, "worse", export=())
    assert not result.promoted
    assert alias("worse", CHAMPION) == champion.version == result.champion_version
    assert alias("worse", CANDIDATE) == result.version
    tags = version_tags("worse", result.version)
    assert tags[TAG_DECISION] == "not promoted"
    assert tags[TAG_REASON].startswith("worse: test macro-F1")  # chance vs trained: distinct
    assert float(tags[TAG_CHAMPION_F1]) > float(tags[TAG_CANDIDATE_F1])


def test_force_makes_a_worse_model_champion(store, weak, strong):
    promote(strong, "forced", export=())
    result = promote(weak, "forced", force=True, export=())
    assert result.promoted and alias("forced", CHAMPION) == result.version
    assert result.reason.startswith("forced; without force: worse")
    assert result.champion_f1 > result.candidate_f1


def test_models_of_other_classes_are_not_compared(store, strong, three_classes):
    champion = promote(strong, "classes", export=())
    result = promote(three_classes, "classes", export=())
    assert not result.promoted and result.champion_f1 is None
    assert alias("classes", CHAMPION) == champion.version
    assert "not comparable" in result.reason and "basophil" in result.reason
    assert "not comparable" in version_tags("classes", result.version)[TAG_REASON]
    forced = promote(three_classes, "classes", force=True, export=())
    assert forced.promoted and alias("classes", CHAMPION) == forced.version


def test_images_the_champion_trained_on_are_left_out(store, weak, strong):
    """A champion with another split has trained on most of the candidate's test images."""
    other_split = train(store, learning_rate="1e-6", max_epochs=1, seed=1)
    promote(other_split, "overlap", export=())
    result = promote(strong, "overlap", export=())
    ours = prepare_dataset(DataSpec("synthetic", 40, seed=0))
    theirs = prepare_dataset(DataSpec("synthetic", 32, seed=1))
    seen = {theirs.files[i] for split in ("train", "val") for i in theirs.splits[split]}
    unseen = [i for i in ours.splits["test"] if ours.files[i] not in seen]
    assert 0 < result.eval_images == len(unseen) < len(ours.splits["test"])
    assert f"; {len(ours.splits['test']) - len(unseen)} images the champion trained on left out" in (
        result.reason)


def test_racing_promotions_leave_the_better_model_as_champion(store, weak, medium, strong):
    promote(weak, "race", export=())
    start, results, errors = threading.Barrier(2), {}, []

    def run(key: str, run_id: str) -> None:
        try:
            start.wait()
            results[key] = promote(run_id, "race", export=())
        except Exception as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=run, args=a) for a in (("medium", medium),
                                                               ("strong", strong))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not errors, errors
    assert alias("race", CHAMPION) == results["strong"].version
    # Serialised: the second compared itself with the first's outcome, not with `weak`.
    m, s = results["medium"], results["strong"]
    assert m.previous_champion == s.version or s.previous_champion == m.version


def test_a_waiting_promotion_rereads_the_champion_after_taking_the_lock(
        store, weak, medium, strong, tmp_path, monkeypatch):
    lock_url = str(tmp_path / "optuna.journal")
    promote(weak, "reread", lock_url=lock_url, export=())
    better = mlflow.register_model(find_serving_model(strong), "reread").version
    client, out, errors = MlflowClient(), [], []
    at_the_lock = threading.Event()

    def announced_lock(*args, **kwargs):  # the real lock, once the waiter has reached it
        at_the_lock.set()
        return promotion_lock(*args, **kwargs)

    def run() -> None:
        try:
            out.append(promote(medium, "reread", lock_url=lock_url, export=()))
        except Exception as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)
            at_the_lock.set()

    monkeypatch.setattr("leukoml.registry.promotion_lock", announced_lock)
    with promotion_lock(lock_url, "reread"):
        waiting = threading.Thread(target=run)
        waiting.start()
        # registered and scored, everything before the lock is done; it cannot pass the
        # lock while this holds it
        assert at_the_lock.wait(600) and not errors, errors
        # Another promotion, holding the lock, moves the champion meanwhile.
        client.set_registered_model_alias("reread", CHAMPION, better)
        assert not out
    waiting.join(600)
    assert not errors, errors
    result = out[0]
    assert result.previous_champion == str(better)
    assert not result.promoted and alias("reread", CHAMPION) == str(better)


# --- the lock itself ------------------------------------------------------------


def test_lock_paths(tmp_path, isolated_cache):
    assert lock_path(None, "promote-wbc/x y") == isolated_cache / "locks" / "promote-wbc_x_y.lock"
    db = tmp_path / "mlflow.db"
    assert lock_path(f"sqlite:///{db}?timeout=30", "m") == tmp_path / "mlflow.db.m.lock"
    assert lock_path(str(tmp_path / "s.journal"), "m") == tmp_path / "s.journal.m.lock"
    assert lock_path(f"journal:{tmp_path / 's.log'}", "m") == tmp_path / "s.log.m.lock"
    with pytest.raises(LeukomlError, match="lock: unsupported scheme in mysql://"):
        lock_path("mysql://user:secret@host/db", "m")


def test_the_file_lock_excludes_other_threads_until_released(tmp_path):
    url = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with promotion_lock(url, "m"):
        with pytest.raises(LeukomlError, match=r"lock 'promote-m' .* still held after 0 s"):
            with promotion_lock(url, "m", timeout=0.3):
                pass
        other = _Contender(lambda: promotion_lock(url, "m", timeout=0.2))
        assert other.refused.wait(60)  # it tried while this held the lock, and was kept out
        assert not other.got
        with promotion_lock(url, "other-model", timeout=0.3):  # another model is not blocked
            pass
    other.join(60)
    assert other.got == ["held"] and not other.errors


class _Contender(threading.Thread):
    """A thread that takes `lock()` (a short timeout) until it gets it: `refused` is set
    once an attempt timed out, so a test knows it was kept out rather than not started."""

    def __init__(self, lock):
        super().__init__(daemon=True)
        self.lock, self.refused, self.got, self.errors = lock, threading.Event(), [], []
        self.start()

    def run(self) -> None:
        while True:
            try:
                with self.lock():
                    self.got.append("held")
                    return
            except LeukomlError:
                self.refused.set()
            except Exception as exc:  # surfaced by the test
                self.errors.append(exc)
                self.refused.set()
                return


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server on loopback (skipped without the binaries)."""
    with postgres_server() as server:
        yield server.url()


@pytest.mark.postgres
def test_the_postgres_advisory_lock_excludes_other_sessions(postgres_url):
    import sqlalchemy

    with promotion_lock(postgres_url, "m"):
        engine = sqlalchemy.create_engine(postgres_url.replace("postgresql:",
                                                              "postgresql+psycopg2:"))
        with engine.connect() as conn:  # the lock is visible to every session of the database
            held = conn.execute(sqlalchemy.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")).scalar()
        engine.dispose()
        assert held == 1
        with pytest.raises(LeukomlError, match=r"advisory lock .*postgres:\*\*\*@") as caught:
            with promotion_lock(postgres_url, "m", timeout=0.3):
                pass
        assert "secret" not in str(caught.value)
        other = _Contender(lambda: promotion_lock(postgres_url, "m", timeout=0.2))
        assert other.refused.wait(60)
        assert not other.got
        with promotion_lock(postgres_url, "other-model", timeout=0.3):
            pass
    other.join(60)
    assert other.got == ["held"] and not other.errors
    assert advisory_key("promote-m") != advisory_key("promote-other-model")

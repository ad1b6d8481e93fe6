"""One prediction path: explain's caption, the served pyfunc and `-e evaluate` give the same
label and probability for the same image, with test-time views and a temperature in play."""

from __future__ import annotations

import re
import shutil
import warnings
from types import SimpleNamespace

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import sqlite_store
from PIL import Image

from leukoml.backbones import get_backbone
from leukoml.backbones.classifier import build_classifier
from leukoml.data import DataSpec, prepare_dataset, render_cell, resolve_data
from leukoml.errors import LeukomlError
from leukoml.explain import explain_images
from leukoml.external import EvaluateRequest, plan_evaluation
from leukoml.external.score import score
from leukoml.serving import (
    INPUT_COLUMN,
    Member,
    ServingConfig,
    encode_image,
    load_served_model,
    log_serving_model,
)

SIZE = 32
TEMPERATURE = 1.7


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A CNN fitted on synthetic cells until it is fairly confident (~5 s), logged as the
    served pyfunc with all 8 dihedral views and a temperature of 1.7; and a folder of
    unseen renders by class."""
    folder = tmp_path_factory.mktemp("prediction-path")
    data = prepare_dataset(DataSpec("synthetic:per_class=20,size=32", image_size=SIZE))
    keras.utils.set_random_seed(0)
    model = build_classifier(get_backbone("Asghar2022CNN"), len(data.class_names), SIZE,
                             weights="none")
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    train = data.splits["train"]
    model.fit(data.images[train].astype("float32"), data.labels[train], epochs=30,
              batch_size=16, verbose=0)
    config = ServingConfig(list(data.class_names), (
        Member("Asghar2022CNN", SIZE, tta="dihedral", temperature=TEMPERATURE),))
    lab = folder / "lab"  # three unseen renders per class
    source = resolve_data("synthetic:per_class=10,seed=7,size=48")
    for class_folder in sorted(p for p in source.iterdir() if p.is_dir()):
        for image in sorted(class_folder.iterdir())[:3]:
            (lab / class_folder.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, lab / class_folder.name / image.name)
    with sqlite_store(folder, "prediction-path") as store:
        with mlflow.start_run(experiment_id=store.experiment):
            info = log_serving_model([model], config)
        yield SimpleNamespace(uri=info.model_uri, lab=lab, folder=folder,
                              model=load_served_model(info.model_uri),
                              pyfunc=mlflow.pyfunc.load_model(info.model_uri))


def test_explain_serving_and_evaluate_answer_alike(served):
    explained = explain_images(served.model, served.lab, served.folder / "gradcam")
    files = [e.file.as_posix() for e in explained]
    assert len(files) == 15

    served_frame = served.pyfunc.predict(pd.DataFrame(
        {INPUT_COLUMN: [encode_image((served.lab / f).read_bytes()) for f in files]}))
    result, _, _ = score(plan_evaluation(EvaluateRequest(served.uri, str(served.lab))))
    evaluated = result.table.set_index("file").loc[files]

    labels = [e.label for e in explained]
    probabilities = np.array([e.probability for e in explained])
    assert labels == served_frame["label"].tolist() == evaluated["predicted"].tolist()
    np.testing.assert_allclose(probabilities, served_frame["confidence"], atol=1e-5)
    np.testing.assert_allclose(probabilities, evaluated["confidence"], atol=1e-5)
    for e in explained:
        first, served_as, view = e.caption.splitlines()
        assert first == f"{e.label} {e.probability:.2f}"
        assert served_as == f"served: 8 views, temperature {TEMPERATURE:.2f}"
        assert view == "heat map: original view"
        assert e.png.is_file()

    # what explain used to caption: the network on the original view alone, no temperature
    pixels = served.model.read([(served.lab / f).read_bytes() for f in files]).pixels[0]
    one_view = served.model.keras_model.predict(pixels.astype("float32"), verbose=0)
    assert np.abs(one_view.max(axis=1) - probabilities).max() > 0.01


def test_explain_writes_one_png_per_readable_file_and_names_bad_input(served, tmp_path):
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    Image.fromarray(render_cell("monocyte", 60, seed=1)).save(folder / "a.png")
    Image.fromarray(render_cell("basophil", 48, seed=2)).save(folder / "more" / "b.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"

    with pytest.warns(UserWarning, match="broken.png"):
        written = explain_images(served.model, folder, out)
    assert [e.png for e in written] == [out / "a.png.gradcam.png",
                                        out / "more" / "b.jpg.gradcam.png"]
    for entry in written:
        with Image.open(entry.png) as picture:
            assert picture.format == "PNG"

    [single] = explain_images(served.model, folder / "a.png", tmp_path / "single")
    assert single.png == tmp_path / "single" / "a.png.gradcam.png" and single.png.is_file()
    assert single.label == written[0].label
    assert single.probability == pytest.approx(written[0].probability, abs=1e-5)

    with pytest.raises(LeukomlError, match="neither an image file nor a folder"):
        explain_images(served.model, tmp_path / "nope", out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(LeukomlError, match="none of the files"):
            explain_images(served.model, folder / "broken.png", out)


def test_the_caption_names_an_ensembles_members_and_temperature():
    config = ServingConfig(["a", "b"], (Member("X", 32, tta="flips", temperature=1.2),
                                        Member("Y", 32, tta="none", temperature=0.9)),
                           temperature=1.1)
    assert re.fullmatch(r"ensemble of 2 \(X 4 views, temperature 1\.20; "
                        r"Y 1 view, temperature 0\.90\), temperature 1\.10", config.describe())

"""The champion over HTTP: a real `mlflow run -e promote`, a real `mlflow models serve`."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from helpers import mlflow_run_args, run_cli, sqlite_store, train_tiny
from PIL import Image

from leukoml.data import SYNTHETIC_CLASSES, DataSpec, prepare_dataset, render_cell

pytestmark = pytest.mark.e2e

MODEL = "wbc-e2e"
PROBS = [f"prob_{c}" for c in SYNTHETIC_CLASSES]
MAX_IMAGE_BYTES = 200_000  # set at serve time through MLflow's inference config
INJECTED = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A tiny trained run, promoted to champion through the MLproject entry point."""
    with sqlite_store(tmp_path_factory.mktemp("serve-http"), "serve-http") as store:
        run_id, _ = train_tiny(store.experiment)
        data = prepare_dataset(DataSpec.from_run(run_id))
        proc = run_cli(mlflow_run_args("promote", experiment_id=store.experiment,
                                       run_id=run_id, model_name=MODEL),
                       env={"MLFLOW_TRACKING_URI": store.uri})
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert f"{MODEL} version 1 (run {run_id}) is the champion" in proc.stdout
        yield SimpleNamespace(uri=store.uri, folder=store.folder, data=data,
                              pyfunc=mlflow.pyfunc.load_model(f"models:/{MODEL}@champion"))


@pytest.fixture(scope="module")
def server(champion, model_server):
    env = {"MLFLOW_TRACKING_URI": champion.uri,
           "MLFLOW_PYFUNC_INFERENCE_CONFIG": json.dumps({"max_image_bytes": MAX_IMAGE_BYTES})}
    with model_server(f"models:/{MODEL}@champion", champion.folder / "serve.log",
                      env=env) as url:
        yield url


def split_files(champion, n: int) -> list[bytes]:
    """The raw files of the first `n` test-split images."""
    data = champion.data
    return [(data.root / data.files[i]).read_bytes() for i in data.splits["test"][:n]]


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def invoke(url: str, payload: dict) -> requests.Response:
    return requests.post(f"{url}/invocations", json=payload, timeout=120)


def split(*images: str, columns=("image",)) -> dict:
    return {"dataframe_split": {"columns": list(columns), "data": [[i] for i in images]}}


def test_one_image_gets_the_in_process_label_and_probabilities(champion, server):
    image = split_files(champion, 1)[0]
    response = invoke(server, split(encode(image)))
    assert response.status_code == 200, response.text
    (got,) = response.json()["predictions"]
    expected = champion.pyfunc.predict(pd.DataFrame({"image": [encode(image)]})).iloc[0]
    assert got["label"] == expected["label"]
    np.testing.assert_allclose([got[c] for c in PROBS], expected[PROBS].to_numpy(float),
                               atol=1e-5)
    assert sum(got[c] for c in PROBS) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("form", ["dataframe_split", "dataframe_records"])
def test_a_batch_of_16_in_either_dataframe_form(champion, server, form):
    images = [encode(f) for f in split_files(champion, 16)]
    payload = split(*images) if form == "dataframe_split" else {
        "dataframe_records": [{"image": i} for i in images]}
    response = invoke(server, payload)
    assert response.status_code == 200, response.text
    got = pd.DataFrame(response.json()["predictions"])
    expected = champion.pyfunc.predict(pd.DataFrame({"image": images}))
    assert got["label"].tolist() == expected["label"].tolist()
    np.testing.assert_allclose(got[PROBS].to_numpy(), expected[PROBS].to_numpy(), atol=1e-5)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


BAD_REQUESTS = {
    "invalid base64": (lambda: split(INJECTED), "row 0: column 'image' is not valid base64"),
    "not an image": (lambda: {"dataframe_split": {
        "index": [INJECTED, 7], "columns": ["image"],
        "data": [[encode(_png(Image.fromarray(render_cell("monocyte", 48, 1))))],
                 [encode(INJECTED.encode() * 4)]]}}, "row 1: not an image"),
    "missing image column": (lambda: split(INJECTED, columns=(INJECTED,)),
                             "missing column 'image'"),
    "empty batch": (lambda: split(), "empty batch"),
    "oversized bytes": (lambda: split(INJECTED + "A" * (MAX_IMAGE_BYTES * 2)),
                        f"over the limit of {MAX_IMAGE_BYTES:,} bytes"),
    "oversized pixels": (lambda: split(encode(_png(Image.new("1", (8000, 8000))))),
                         "8000x8000 px is over the limit"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_naming_the_problem_without_echo(champion, server, case):
    make, expected = BAD_REQUESTS[case]
    response = invoke(server, make())
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/json")
    assert expected in response.json()["message"]
    assert "<script>" not in response.text and "script>" not in response.text
    # the server is still fine for the next caller
    good = invoke(server, split(encode(split_files(champion, 1)[0])))
    assert good.status_code == 200 and len(good.json()["predictions"]) == 1

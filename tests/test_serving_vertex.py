"""`covertype serve` under Vertex AI's custom-container contract, over real HTTP.

The serving image's entrypoint is `covertype serve`; Vertex AI sets AIP_HTTP_PORT,
AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE and AIP_STORAGE_URI. These tests start it that way, with a
real model folder under the local home's storage root, and talk to it with urllib.
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from pipeline import schema
from pipeline.cli import serve_vertex
from pipeline.trainer import load_trainer

REPO = Path(__file__).resolve().parents[1]
COVERTYPE = Path(sys.executable).with_name("covertype")
PREDICT = "/v1/endpoints/77/deployedModels/900:predict"  # Vertex AI's default route shape
HEALTH = "/v1/endpoints/77/deployedModels/900"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(url: str, body: bytes | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of a GET, or a POST when `body` is given."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        payload = error.read()
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = {"text": payload.decode()}
        return error.code, parsed, dict(error.headers)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return pd.read_csv(REPO / "data" / "covertype.csv.gz", nrows=3000)


@pytest.fixture(scope="module")
def model_folder(rows, tmp_path_factory) -> Path:
    """A fitted model saved as the final training saves it, under the storage root."""
    trainer = load_trainer()
    model = trainer.build_model()
    model.fit(trainer.model_input(rows), rows[schema.LABEL_COLUMN])
    folder = tmp_path_factory.mktemp("home") / "gcs" / "staging" / "jobdir" / "run1" / "model"
    folder.mkdir(parents=True)
    (folder / "model.pkl").write_bytes(pickle.dumps(model))
    return folder


def container_env(port: int, storage: Path | str, home: Path) -> dict[str, str]:
    return {**os.environ, "COVERTYPE_HOME": str(home), "AIP_HTTP_PORT": str(port),
            "AIP_HEALTH_ROUTE": HEALTH, "AIP_PREDICT_ROUTE": PREDICT,
            "AIP_STORAGE_URI": str(storage)}


@pytest.fixture(scope="module")
def server(model_folder, tmp_path_factory):
    """`covertype serve` started as Vertex AI starts the serving image; its base URL."""
    port = free_port()
    home = tmp_path_factory.mktemp("served-home")
    process = subprocess.Popen([str(COVERTYPE), "serve"], env=container_env(
        port, model_folder, home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if call(base + HEALTH)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert process.poll() is None, process.stdout.read()
        yield base, port
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_health_and_predict_on_the_contract_routes(server, rows, model_folder):
    base, _ = server
    model = pickle.loads((model_folder / "model.pkl").read_bytes())
    sample = rows.iloc[:5]
    instances = [[*map(int, row[list(schema.NUMERIC_COLUMNS)]),
                  *map(str, row[list(schema.CATEGORICAL_COLUMNS)])] for _, row in sample.iterrows()]
    expected = model.predict(load_trainer().model_input(sample)).tolist()

    status, health, _ = call(base + HEALTH)
    answer = call(base + PREDICT, json.dumps({"instances": instances,
                                              "parameters": {"ignored": True}}).encode())

    assert (status, health) == (200, {"status": "ok", "predictionPath": "onnx"})
    assert answer[0] == 200
    assert answer[1] == {"predictions": expected}
    assert answer[2]["x-prediction-path"] == "onnx"


def test_bad_requests_are_one_line_4xx_errors(server):
    base, _ = server
    status, body, _ = call(base + PREDICT, b'{"instances": [[1, 2]]}')
    assert status == 400
    assert body == {"error": "instances[0] has 2 values; expected 12, in this order: "
                             + ", ".join(schema.FEATURE_COLUMNS)}
    status, body, _ = call(base + PREDICT, b"x" * (1_572_864 + 1))
    assert status == 413 and body["error"].startswith("Request payload size exceeds the limit")


def test_only_the_contract_routes_are_served(server):
    base, _ = server
    for path in ("/", "/v1/projects/local/models/covertype_classifier:predict", "/healthz",
                 "/openapi.json"):
        assert call(base + path)[0] == 404, path
    assert call(base + PREDICT)[0] == 405  # predict is POST only


def test_it_binds_all_interfaces_as_vertex_expects(server):
    _, port = server
    # 127.0.0.2 is another loopback address: a server bound to 127.0.0.1 only refuses it.
    status, _, _ = call(f"http://127.0.0.2:{port}{HEALTH}")
    assert status == 200


def test_health_is_503_until_the_model_is_loaded(model_folder, tmp_path):
    import uvicorn

    settings = serve_vertex.ContainerSettings(free_port(), "/health", "/predict",
                                              str(model_folder))
    model = serve_vertex.ServedModel(settings.storage_uri, tmp_path)
    server = uvicorn.Server(uvicorn.Config(serve_vertex.create_app(settings, model),
                                           host="127.0.0.1", port=settings.port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{settings.port}"
    try:
        while not server.started:
            time.sleep(0.05)
        loading_health = call(base + "/health")
        loading_predict = call(base + "/predict", b'{"instances": []}')
        model.load()
        loaded = call(base + "/health")
    finally:
        server.should_exit = True
        thread.join(timeout=30)

    assert loading_health[:2] == (503, {"error": "the model is loading"})
    assert loading_predict[:2] == (503, {"error": "the model is loading; retry"})
    assert loaded[0] == 200
    assert (tmp_path / "model.pkl").read_bytes() == (model_folder / "model.pkl").read_bytes()


def test_a_folder_without_a_model_ends_the_container_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([str(COVERTYPE), "serve"],
                            env=container_env(free_port(), tmp_path / "empty", tmp_path),
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("covertype: error")]
    assert errors == [f"covertype: error: cannot serve {tmp_path / 'empty'}: AIP_STORAGE_URI "
                      "holds no model file; expected exactly one of model.pkl, model.joblib"]


@pytest.mark.parametrize(("unset", "override", "message"), [
    ("AIP_STORAGE_URI", {}, "AIP_HTTP_PORT is set but AIP_STORAGE_URI is not; Vertex AI sets "
                            "all of AIP_HTTP_PORT, AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE, "
                            "AIP_STORAGE_URI: set them all or none"),
    (None, {"AIP_HTTP_PORT": "http"}, "AIP_HTTP_PORT='http' is not a port; use 1..65535, e.g. "
                                      "8080"),
    (None, {"AIP_PREDICT_ROUTE": "predict"}, "AIP_PREDICT_ROUTE='predict' is not a URL path; use "
                                             "e.g. /predict"),
    (None, {"AIP_PREDICT_ROUTE": HEALTH}, "AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE are the same "
                                          "path; give each its own"),
])
def test_an_incomplete_contract_is_refused(tmp_path, unset, override, message):
    env = {**container_env(8080, tmp_path, tmp_path), **override}
    if unset:
        env.pop(unset)
    with pytest.raises(ValueError) as error:
        serve_vertex.ContainerSettings.from_env(env)
    assert str(error.value) == message


def test_without_the_contract_it_is_the_local_server():
    assert serve_vertex.ContainerSettings.from_env({"PATH": "/bin"}) is None


def test_the_command_refuses_an_incomplete_contract_before_serving(tmp_path):
    env = container_env(free_port(), tmp_path, tmp_path)
    del env["AIP_HEALTH_ROUTE"]
    result = subprocess.run([str(COVERTYPE), "serve"], env=env, capture_output=True, text=True,
                            timeout=60)

    assert result.returncode == 2
    assert result.stderr == ("covertype: error: AIP_HTTP_PORT is set but AIP_HEALTH_ROUTE is "
                             "not; Vertex AI sets all of AIP_HTTP_PORT, AIP_HEALTH_ROUTE, "
                             "AIP_PREDICT_ROUTE, AIP_STORAGE_URI: set them all or none\n")

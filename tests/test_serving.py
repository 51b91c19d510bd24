"""The local AI Platform Prediction server over real HTTP on 127.0.0.1, with real models.

Models are the trainer's Pipeline fitted on 5,000 bundled rows; the fast path is checked on
the bundled test split; `covertype serve` runs as a subprocess for the load test.
"""
from __future__ import annotations

import asyncio
import json
import pickle
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import farmhash
import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_process import covertype_serve
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.neighbors import NearestCentroid

from pipeline import schema
from pipeline.local.emulator.app import create_app
from pipeline.local.emulator.predict import PredictShortcut
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.home import registry_dir, storage_root
from pipeline.local.prediction import (
    ONNX_FILE,
    VERDICT_FILE,
    PredictionError,
    prepare_fast_path,
    verification_rows,
)
from pipeline.local.registry import Registry
from pipeline.ml_client import EMULATOR_HOST_ENV, ml_service
from pipeline.trainer import load_trainer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "covertype.csv.gz"
COVERTYPE = Path(sys.executable).with_name("covertype")
FEATURES = list(schema.FEATURE_COLUMNS)
ORDER = ", ".join(FEATURES)
PREDICT = "/v1/projects/local/models/{}:predict"
PAYLOAD_LIMIT = 1_572_864  # AI Platform Prediction's documented request limit (1.5 MB)
JSON_TYPE = {"Content-Type": "application/json"}
# BigQuery's documented FARM_FINGERPRINT examples: CONCAT(x, y, z) of its example rows ->
# row_fingerprint (https://cloud.google.com/bigquery/docs/reference/standard-sql/
# hash_functions#farm_fingerprint).
FARM_FINGERPRINT_EXAMPLES = {"1footrue": -1541654101129638711,
                             "2applefalse": 2794438866806483259,
                             "3true": -4880158226897771312}


def farm_fingerprint(text: str) -> int:
    """BigQuery's FARM_FINGERPRINT, from pyfarmhash alone: Fingerprint64 as a signed INT64."""
    unsigned = farmhash.fingerprint64(text)
    return unsigned - 2**64 if unsigned >= 2**63 else unsigned


class ShiftedSGD(SGDClassifier):
    """An SGD whose predict() names the next class: its ONNX copy (SGD's converter) disagrees."""

    def predict(self, X):
        return (super().predict(X) + 1) % len(schema.CLASSES)


def _trainer():
    return load_trainer()


# fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    frame = pd.read_csv(DATA, nrows=5200, dtype={name: str for name in schema.CATEGORICAL_COLUMNS})
    return schema.validate_frame(frame, str(DATA))


@pytest.fixture(scope="module")
def models(rows: pd.DataFrame) -> dict:
    """Fitted models: the trainer's at two alphas, one skl2onnx cannot convert, one whose ONNX
    copy disagrees (SGD's converter registered for a class that predicts differently)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.operator_converters.sgd_classifier import convert_sklearn_sgd_classifier
    from skl2onnx.shape_calculators.linear_classifier import (
        calculate_linear_classifier_output_shapes,
    )

    update_registered_converter(ShiftedSGD, "CovertypeTestShiftedSGD",
                                calculate_linear_classifier_output_shapes,
                                convert_sklearn_sgd_classifier,
                                options={"zipmap": [True, False, "columns"],
                                         "nocl": [True, False], "raw_scores": [True, False],
                                         "output_class_labels": [False, True]})
    trainer = _trainer()
    train = rows.iloc[:5000]
    features, labels = trainer.model_input(train), train[schema.LABEL_COLUMN]
    fitted = {"good": trainer.build_model(1e-4), "other": trainer.build_model(1e-3, 5)}
    for name, last in (("nearest", NearestCentroid()), ("shifted", ShiftedSGD(random_state=0))):
        fitted[name] = trainer.build_model()
        fitted[name].steps[-1] = ("classifier", last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # "other" stops after 5 epochs
        return {name: model.fit(features, labels) for name, model in fitted.items()}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def folders(models: dict, home: Path) -> dict[str, Path]:
    """One model folder per model, in the home's storage (the registry deploys only from it)."""
    root = storage_root(home) / "artifacts"
    for name, model in models.items():
        (root / name).mkdir(parents=True)
        (root / name / "model.pkl").write_bytes(pickle.dumps(model))
    return {name: root / name for name in models}


@pytest.fixture(scope="module")
def registry(home: Path, folders: dict) -> Registry:
    """Model `covertype` with v1 (good, the default); other models are added by the tests."""
    registry = Registry(registry_dir(home))
    _deploy(registry, "covertype", "v1", folders["good"])
    return registry


@pytest.fixture(scope="module")
def server(home: Path, registry: Registry) -> EmulatorServer:
    with EmulatorServer(home=home) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: EmulatorServer) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=60, headers=JSON_TYPE) as client:
        yield client


@pytest.fixture(scope="module")
def sample(rows: pd.DataFrame) -> pd.DataFrame:
    """200 rows none of the models was fitted on."""
    return rows.iloc[5000:5200].reset_index(drop=True)


def _deploy(registry: Registry, model: str, version: str, folder: Path) -> None:
    if registry.stamp(model) is None:
        registry.create_model({"name": model})
    registry.create_version(model, {"name": version, "deploymentUri": str(folder)})


def _as_lists(frame: pd.DataFrame) -> list[list]:
    return [[*map(int, row[:10]), *row[10:]] for row in frame[FEATURES].itertuples(index=False)]


def _as_objects(frame: pd.DataFrame) -> list[dict]:
    """Object instances, with the label left in (it is ignored)."""
    return [dict(zip(schema.COLUMNS, [*map(int, row[:10]), *row[10:12], int(row[12])],
                     strict=True)) for row in frame[list(schema.COLUMNS)].itertuples(index=False)]


def _expected(models: dict, name: str, frame: pd.DataFrame) -> list[int]:
    return models[name].predict(_trainer().model_input(frame)).tolist()


# predictions and the fast path ---------------------------------------------------------------

def test_predictions_equal_the_model_in_both_instance_forms(client, models, sample) -> None:
    expected = _expected(models, "good", sample)
    for path in (PREDICT.format("covertype"), "/v1/projects/local/models/covertype/versions/v1"
                 ":predict"):
        for instances in (_as_lists(sample), _as_objects(sample)):
            response = client.post(path, json={"instances": instances})
            assert response.status_code == 200, response.text
            assert response.json() == {"predictions": expected}
            assert response.headers["X-Model-Version"] == "v1"
            assert response.headers["X-Prediction-Path"] == "onnx"
    assert set(expected) != {expected[0]}  # a model that answers more than one class


def test_fast_path_verified_on_the_whole_test_split(client, registry, home) -> None:
    assert client.post(PREDICT.format("covertype"), json={"instances": [GOOD]}).status_code == 200
    folder = registry.root / "covertype" / "versions" / "v1"
    verdict = json.loads((folder / VERDICT_FILE).read_text())
    assert verdict["path"] == "onnx" and verdict["tensorType"] == "double"
    assert verdict["testSplitRows"] == 42_557  # lot 9 of the 426,599 bundled rows
    assert verdict["rowsChecked"] == verdict["rowsAgreeing"] == 42_557 + 300
    assert (folder / ONNX_FILE).stat().st_size > 0
    # The split is BigQuery's: fingerprint the first rows independently and compare.
    assert {text: farm_fingerprint(text) for text in FARM_FINGERPRINT_EXAMPLES} == (
        FARM_FINGERPRINT_EXAMPLES)
    head = pd.read_csv(DATA, nrows=3000, dtype={name: str for name in schema.CATEGORICAL_COLUMNS})
    texts = [json.dumps(row, separators=(",", ":")) for row in
             json.loads(head.to_json(orient="records"))]
    lot_nine = head[np.array([abs(farm_fingerprint(text)) % 10 == 9 for text in texts])]
    checked = verification_rows(home / "cache").instances
    assert np.array_equal(checked.numeric[:, :len(lot_nine)],
                          lot_nine[list(schema.NUMERIC_COLUMNS)].to_numpy(float).T)
    assert list(checked.categorical[1][:len(lot_nine), 0]) == lot_nine["Soil_Type"].tolist()
    report = client.get("/v1/projects/local/registry:check").json()
    assert {"name": "projects/local/models/covertype/versions/v1", "isDefault": True,
            "predictionPath": "onnx", "detail": verdict["reason"]} in report["versions"]


@pytest.mark.parametrize(("model", "reason"), [
    ("nearest", r"no verified ONNX copy: double tensors raw: MissingShapeCalculator"),
    ("shifted", r"double tensors raw: ONNX disagrees on 4\d,\d\d\d of 42,857 rows"),
])
def test_falls_back_to_scikit_learn(client, registry, folders, models, sample, model, reason,
                                    caplog: pytest.LogCaptureFixture) -> None:
    _deploy(registry, model, "v1", folders[model])
    response = client.post(PREDICT.format(model), json={"instances": _as_lists(sample)})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": _expected(models, model, sample)}
    assert response.headers["X-Prediction-Path"] == "sklearn"
    folder = registry.root / model / "versions" / "v1"
    verdict = json.loads((folder / VERDICT_FILE).read_text())
    assert verdict["path"] == "sklearn" and re.search(reason, verdict["reason"])
    assert not (folder / ONNX_FILE).exists()
    assert f"projects/local/models/{model}/versions/v1: serving with sklearn" in caplog.text


def test_prepare_fast_path_for_a_deploy_step(folders, home, tmp_path) -> None:
    staged = tmp_path / "staged"
    staged.mkdir()
    shutil.copy(folders["good"] / "model.pkl", staged)
    verdict = prepare_fast_path(staged / "model.pkl", home / "cache")
    assert verdict["path"] == "onnx" and (staged / ONNX_FILE).exists()
    written = (staged / VERDICT_FILE).stat().st_mtime_ns
    assert prepare_fast_path(staged / "model.pkl", home / "cache") == verdict  # kept, not redone
    assert (staged / VERDICT_FILE).stat().st_mtime_ns == written
    shutil.copy(folders["nearest"] / "model.pkl", staged)  # a new artifact: checked again
    assert prepare_fast_path(staged / "model.pkl", home / "cache")["path"] == "sklearn"
    assert sorted(path.name for path in staged.iterdir()) == [VERDICT_FILE, "model.pkl"]
    (staged / "model.pkl").write_bytes(b"not a pickle")
    with pytest.raises(PredictionError, match=r"model\.pkl cannot be loaded \(UnpicklingError"):
        prepare_fast_path(staged / "model.pkl", home / "cache")


def test_hot_reload_of_a_new_version_and_of_set_default(client, registry, folders, models,
                                                         sample) -> None:
    _deploy(registry, "reload", "v1", folders["good"])
    instances = {"instances": _as_lists(sample)}
    good, other = _expected(models, "good", sample), _expected(models, "other", sample)
    assert good != other
    assert client.post(PREDICT.format("reload"), json=instances).json()["predictions"] == good
    created = client.post("/v1/projects/local/models/reload/versions",
                          json={"name": "v2", "deploymentUri": str(folders["other"])})
    assert created.status_code == 200, created.text
    response = client.post("/v1/projects/local/models/reload/versions/v2:predict", json=instances)
    assert response.json()["predictions"] == other and response.headers["X-Model-Version"] == "v2"
    assert client.post(PREDICT.format("reload"), json=instances).headers["X-Model-Version"] == "v1"
    assert client.post("/v1/projects/local/models/reload/versions/v2:setDefault").status_code == 200
    response = client.post(PREDICT.format("reload"), json=instances)
    assert response.json()["predictions"] == other and response.headers["X-Model-Version"] == "v2"
    model_json = registry.root / "reload" / "model.json"  # edited in place, etag kept
    record = json.loads(model_json.read_text())
    record["defaultVersion"]["name"] = "projects/local/models/reload/versions/v1"
    model_json.write_text(json.dumps(record))
    response = client.post(PREDICT.format("reload"), json=instances)
    assert response.json()["predictions"] == good and response.headers["X-Model-Version"] == "v1"


def test_google_api_client_predicts(server, sample, models,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from googleapiclient.errors import HttpError

    monkeypatch.setenv(EMULATOR_HOST_ENV, server.url)
    ml = ml_service()
    body = {"instances": _as_lists(sample.iloc[:20])}
    expected = {"predictions": _expected(models, "good", sample.iloc[:20])}
    for name in ("projects/local/models/covertype", "projects/local/models/covertype/versions/v1"):
        assert ml.projects().predict(name=name, body=body).execute() == expected
    with pytest.raises(HttpError) as raised:
        ml.projects().predict(name="projects/local/models/covertype",
                              body={"instances": []}).execute()
    assert raised.value.resp.status == 400
    assert json.loads(raised.value.content) == {
        "error": '"instances" is empty; send at least one instance'}


# errors ----------------------------------------------------------------------------------------

GOOD = [3422, 184, 14, 466, 27, 2711, 223, 249, 156, 1752, "Commanche", "C7756"]
OBJECT = dict(zip(FEATURES, GOOD, strict=True))
ERRORS = [
    (b"{not json", 400, "the request body is not valid JSON (Expecting property name enclosed "
     'in double quotes: line 1 column 2 (char 1)); send {"instances": [...]}'),
    (b"[1, 2]", 400, 'the request body is a list; send a JSON object {"instances": [...]}'),
    ({"instance": [GOOD]}, 400, 'the request body has no "instances"; send {"instances": [...]}'),
    ({"instances": {"a": 1}}, 400, '"instances" is an object; send a list of instances'),
    ({"instances": []}, 400, '"instances" is empty; send at least one instance'),
    ({"instances": [GOOD, GOOD[:11]]}, 400,
     f"instances[1] has 11 values; expected 12, in this order: {ORDER}"),
    ({"instances": [GOOD + [1]]}, 400,
     f"instances[0] has 13 values; expected 12, in this order: {ORDER}"),
    ({"instances": ["abc"]}, 400, 'instances[0] is "abc" (a string); send a list of the 12 '
     "feature values or an object keyed by feature name"),
    ({"instances": [["3422", *GOOD[1:]]]}, 400,
     'instances[0] Elevation is "3422" (a string); expected a number'),
    ({"instances": [[*GOOD[:2], True, *GOOD[3:]]]}, 400,
     "instances[0] Slope is true (a boolean); expected a number"),
    ({"instances": [[*GOOD[:9], None, *GOOD[10:]]]}, 400,
     "instances[0] Horizontal_Distance_To_Fire_Points is null; expected a number"),
    ({"instances": [[*GOOD[:10], 3, "C7756"]]}, 400,
     "instances[0] Wilderness_Area is 3; expected a string"),
    ({"instances": [[*GOOD[:11], ["C7756"]]]}, 400,
     "instances[0] Soil_Type is a list; expected a string"),
    (b'{"instances": [[NaN, 184, 14, 466, 27, 2711, 223, 249, 156, 1752, "Cache", "C7756"]]}',
     400, "instances[0] Elevation is nan; expected a finite number"),
    (b'{"instances": [[1, -Infinity, 14, 466, 27, 2711, 223, 249, 156, 1752, "Cache", "C"]]}',
     400, "instances[0] Aspect is -inf; expected a finite number"),
    (b'{"instances": [[1, 2, 1e400, 466, 27, 2711, 223, 249, 156, 1752, "Cache", "C"]]}',
     400, "instances[0] Slope is inf; expected a finite number"),
    ({"instances": [[*GOOD[:3], 10 ** 400, *GOOD[4:]]]}, 400, "instances[0] "
     "Horizontal_Distance_To_Hydrology is 10000000000000000000... (a 401-digit number); "
     "expected a finite number"),
    ({"instances": [OBJECT, {k: v for k, v in OBJECT.items() if k != "Slope"}]}, 400,
     f"instances[1] has no 'Slope'; an object instance needs all 12 features: {ORDER}"),
    ({"instances": [{**OBJECT, "Colour": "green"}]}, 400, "instances[0] has the unknown key "
     "'Colour'; use the 12 feature names (and optionally Cover_Type, which is ignored)"),
]


@pytest.mark.parametrize(("body", "status", "error"), ERRORS)
def test_bad_requests_get_the_cloud_error_shape(client, body, status, error) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(PREDICT.format("covertype"), content=content)
    assert (response.status_code, response.json()) == (status, {"error": error})
    assert response.headers["content-type"] == "application/json"


def test_unknown_resources_and_the_payload_limit(client) -> None:
    body = {"instances": [GOOD]}
    cases = [
        ("/v1/projects/other/models/covertype:predict", 404,
         "project other not found; the local server serves projects/local"),
        (PREDICT.format("absent"), 404, "model absent not found in project local; deploy it first"),
        ("/v1/projects/local/models/covertype/versions/v9:predict", 404,
         "version v9 of model covertype not found; list the versions with "
         "projects.models.versions.list"),
        (PREDICT.format("bad-name"), 400, "model name 'bad-name' is invalid; use a letter "
         "followed by up to 127 letters, digits or underscores"),
    ]
    for path, status, error in cases:
        response = client.post(path, json=body)
        assert (response.status_code, response.json()) == (status, {"error": error}), path
    limit = {"error": f"Request payload size exceeds the limit: {PAYLOAD_LIMIT} bytes (AI "
                      "Platform Prediction's payload limit); send a smaller request"}
    exact = json.dumps(body).encode()
    exact += b" " * (PAYLOAD_LIMIT - len(exact))
    assert client.post(PREDICT.format("covertype"), content=exact).status_code == 200
    response = client.post(PREDICT.format("covertype"), content=exact + b" ")
    assert (response.status_code, response.json()) == (413, limit)
    chunked = client.post(PREDICT.format("covertype"),
                          content=iter([exact[:PAYLOAD_LIMIT // 2]] * 3))
    assert (chunked.status_code, chunked.json()) == (413, limit)
    assert client.post(PREDICT.format("covertype"), json=body).status_code == 200


def test_openapi_documents_predict(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/projects/{project}/models/{model}:predict",
                 "/v1/projects/{project}/models/{model}/versions/{version}:predict"):
        operation = paths[path]["post"]
        schema_ = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema_["required"] == ["instances"]
        assert [p["name"] for p in operation["parameters"]][:2] == ["project", "model"]
    assert "/v1/projects/{project}/registry:check" in paths


# property-based fuzzing --------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats()
           | st.text(max_size=6) | st.sampled_from(schema.SOIL_TYPES + schema.WILDERNESS_AREAS))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
NUMBER = st.integers(-10 ** 6, 10 ** 6) | st.floats(-1e6, 1e6) | SCALARS
STRING = st.sampled_from(schema.SOIL_TYPES + schema.WILDERNESS_AREAS) | st.text() | SCALARS
ROW = st.tuples(*[NUMBER] * 10, STRING, STRING).map(list)
INSTANCE = (ROW | ROW.map(lambda row: dict(zip(FEATURES, row, strict=True)))
            | st.lists(NUMBER | STRING, min_size=10, max_size=14)
            | st.dictionaries(st.sampled_from([*schema.COLUMNS, "extra"]), NUMBER | STRING)
            | VALUES)
BODIES = (st.fixed_dictionaries({"instances": st.lists(INSTANCE, max_size=4)})
          | st.fixed_dictionaries({"instances": st.lists(ROW, min_size=1, max_size=4)})
          | VALUES | st.binary(max_size=40))


@settings(max_examples=500, deadline=None, database=None,  # ~25 s; a new random draw each run
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=BODIES)
def test_fuzzed_bodies_never_fail_the_server(client, body) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(PREDICT.format("covertype"), content=content)
    assert response.status_code in (200, 400), response.text
    answer = response.json()
    if response.status_code == 200:
        assert list(answer) == ["predictions"]
        assert len(answer["predictions"]) == len(body["instances"])
        assert set(answer["predictions"]) <= set(schema.CLASSES)
    else:
        assert list(answer) == ["error"] and "\n" not in answer["error"]
        assert "Traceback" not in answer["error"]


# a registry edited by hand -----------------------------------------------------------------------

def test_hand_edited_registry_serves_what_is_valid(client, registry, folders) -> None:
    root = registry.root
    for model in ("no_artifact", "dangling", "corrupt", "half", "unpickled"):
        _deploy(registry, model, "v1", folders["good"])
    (root / "no_artifact" / "versions" / "v1" / "model.pkl").unlink()
    (root / "unpickled" / "versions" / "v1" / "model.pkl").write_bytes(b"garbage")
    record = json.loads((root / "dangling" / "model.json").read_text())
    record["defaultVersion"] = {"name": "projects/local/models/dangling/versions/v9"}
    (root / "dangling" / "model.json").write_text(json.dumps(record))
    (root / "corrupt" / "model.json").write_text("{half written")
    (root / "half" / "versions" / "v2").mkdir()
    (root / "garbage folder").mkdir()
    (root / "notes.txt").write_text("hello")
    expected = {
        "/v1/projects/local/models/no_artifact:predict": "projects/local/models/no_artifact/"
        "versions/v1 cannot be served: holds 0 of model.pkl / model.joblib; expected one: delete "
        "the version and deploy it again",
        "/v1/projects/local/models/dangling:predict": "projects/local/models/dangling cannot be "
        "served: the default version v9 is missing or broken; call setDefault on a servable "
        "version",
        "/v1/projects/local/models/corrupt/versions/v1:predict": "projects/local/models/corrupt "
        "cannot be served: model.json is missing or not a JSON object (JSONDecodeError); restore "
        "it or delete the model folder",
        "/v1/projects/local/models/half/versions/v2:predict": "projects/local/models/half/"
        "versions/v2 cannot be served: version.json is missing or not a JSON object "
        "(FileNotFoundError); delete the version folder and deploy it again",
        "/v1/projects/local/models/unpickled:predict": "version projects/local/models/unpickled/"
        "versions/v1 cannot be loaded (UnpicklingError: pickle data was truncated); deploy the "
        "model again",
    }
    for path, error in expected.items():
        response = client.post(path, json={"instances": [GOOD]})
        assert (response.status_code, response.json()) == (400, {"error": error}), path
    for path in (PREDICT.format("half"), PREDICT.format("dangling").replace(":", "/versions/v1:")):
        assert client.post(path, json={"instances": [GOOD]}).status_code == 200, path
    report = client.get("/v1/projects/local/registry:check").json()
    problems = {item["name"]: item["problem"] for item in report["problems"]}
    assert report["ok"] is False and set(problems) >= {
        str(root / "garbage folder"), str(root / "notes.txt"),
        "projects/local/models/no_artifact/versions/v1", "projects/local/models/dangling",
        "projects/local/models/corrupt", "projects/local/models/half/versions/v2"}
    assert client.get("/v1/projects/other/registry:check").status_code == 404
    assert client.post(PREDICT.format("covertype"), json={"instances": [GOOD]}).status_code == 200


# `covertype serve` under load --------------------------------------------------------------------

def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))


def test_serve_under_load_while_a_new_default_is_deployed(home, registry, folders, models,
                                                          sample, client) -> None:
    _deploy(registry, "load", "v1", folders["good"])
    with covertype_serve(home) as served:
        busy = subprocess.run([str(COVERTYPE), "serve", "--port", str(served.port)],
                              capture_output=True, text=True)
        assert busy.returncode == 2 and busy.stderr.startswith(
            f"covertype: error: cannot listen on 127.0.0.1:{served.port} (Address already in use)")
        _same_answers(served.url, client)
        _load(served.url, served.process.pid, registry, folders, models, sample)
    log = served.log
    lines = log.read_text().splitlines()
    assert any(re.fullmatch(r".* covertype\.serve POST /v1/projects/local/models/load:predict 200 "
                            r"\d+\.\d ms", line) for line in lines)


def _same_answers(url: str, client: httpx.Client) -> None:
    """`covertype serve` (predict shortcut past FastAPI) answers as the app's routes do."""
    good = json.dumps({"instances": [GOOD, OBJECT]}).encode()
    requests = [("POST", PREDICT.format("load"), good),
                ("POST", "/v1/projects/local/models/load/versions/v1:predict", good),
                ("POST", PREDICT.format("load"), b"{not json"),
                ("POST", PREDICT.format("load"), b" " * (PAYLOAD_LIMIT + 1)),
                ("POST", "/v1/projects/local/models/load/versions/v7:predict", good),
                ("POST", PREDICT.format("absent"), good),
                ("POST", "/v1/projects/other/models/load:predict", good),
                ("GET", PREDICT.format("load"), b""),
                ("GET", "/v1/projects/local/models/load", b"")]
    with httpx.Client(base_url=url, headers=JSON_TYPE) as served:
        for method, path, body in requests:
            ours, app = (http.request(method, path, content=body) for http in (served, client))
            assert (ours.status_code, ours.headers.get("X-Model-Version"), ours.content) == (
                app.status_code, app.headers.get("X-Model-Version"), app.content), path


def test_app_routes_answer_as_the_shortcut(home, registry) -> None:
    """An app served without PredictShortcut answers :predict through FastAPI's routes, byte for
    byte as the shortcut does (ml v1 and aiplatform v1)."""
    good = json.dumps({"instances": [GOOD, OBJECT]}).encode()
    requests = [(PREDICT.format("covertype"), good),
                ("/v1/projects/local/models/covertype/versions/v1:predict", good),
                (PREDICT.format("covertype"), b"{not json"),
                ("/v1/projects/local/models/covertype/versions/v7:predict", good),
                (PREDICT.format("bad-name"), good),
                ("/v1/projects/other/models/covertype:predict", good),
                ("/v1/projects/local/locations/us-central1/endpoints/404:predict", good)]
    app = create_app(home)

    async def answers(asgi) -> list[tuple]:
        transport = httpx.ASGITransport(app=asgi)
        found = []
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            for path, body in requests:
                response = await http.post(path, content=body, headers=JSON_TYPE)
                found.append((response.status_code, response.headers.raw, response.content))
        return found

    routed, shortcut = asyncio.run(answers(app)), asyncio.run(answers(PredictShortcut(app)))
    assert routed == shortcut
    assert [status for status, _, _ in routed] == [200, 200, 400, 404, 400, 404, 404]
    assert (b"x-model-version", b"v1") in routed[0][1]


def _load(url: str, pid: int, registry: Registry, folders: dict, models: dict,
          sample: pd.DataFrame) -> None:
    """Four client threads; after 0.5 s v2 is deployed and made default; from its first answer
    on, 3 s more while the server's RSS is sampled."""
    expected = {version: _expected(models, name, sample)
                for version, name in (("v1", "good"), ("v2", "other"))}
    failures, answered, rss = [], {"v1": 0, "v2": 0}, []
    stop, switched = threading.Event(), threading.Event()
    assert httpx.post(url + PREDICT.format("load"), json={"instances": [GOOD]}).status_code == 200

    def client(seed: int) -> None:
        generator = np.random.default_rng(seed)
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                size = int(generator.choice([1, 10]))
                start = int(generator.integers(0, len(sample) - size))
                response = http.post(PREDICT.format("load"),
                                     json={"instances": _as_lists(sample[start:start + size])})
                version = response.headers.get("X-Model-Version")
                if response.status_code != 200 or version not in expected or (
                        response.json()["predictions"] != expected[version][start:start + size]):
                    failures.append((response.status_code, version, response.text[:200]))
                else:
                    answered[version] += 1
                    if version == "v2":
                        switched.set()

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        _deploy(registry, "load", "v2", folders["other"])
        registry.set_default("load", "v2")
        assert switched.wait(30), "the new default was never served"
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < 3:
            rss.append((elapsed, _rss_kib(pid)))
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == [] and answered["v1"] > 20 and answered["v2"] > 200, (failures, answered)
    first = max(kib for elapsed, kib in rss if elapsed < 1)
    last = max(kib for elapsed, kib in rss if elapsed >= 2)
    assert last - first < 4 * 1024, rss  # KiB
    print(f"load: {answered}, RSS first second {first} KiB, last second {last} KiB")

"""Local Vertex AI models, endpoints, operations and predict over real HTTP, with real models.

Google's aiplatform v1 client talks to the emulator; every response is checked against the
discovery document (tests/discovery_schema). Models are the trainer's Pipeline fitted on 5,000
bundled rows; `covertype serve` runs as a subprocess for the endpoint predict over HTTP.
"""
from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from discovery_schema import assert_conforms
from googleapiclient.errors import HttpError
from serve_process import covertype_serve
from sklearn.exceptions import ConvergenceWarning

from pipeline import discovery, schema
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.home import registry_dir
from pipeline.ml_client import VERTEX_EMULATOR_HOST_ENV, aiplatform_service
from pipeline.trainer import load_trainer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "covertype.csv.gz"
DOC = discovery.document("aiplatform", "v1")
REGION = "us-central1"
JSON_TYPE = {"Content-Type": "application/json"}
PARENT = f"projects/local/locations/{REGION}"
SERVING_IMAGE = "us-docker.pkg.dev/local/covertype/base_image:latest"
FEATURES = list(schema.FEATURE_COLUMNS)
DEDICATED = {"machineSpec": {"machineType": "n1-standard-2"}, "minReplicaCount": 1,
             "maxReplicaCount": 1}


def _conforms(schema_name: str, value: object) -> None:
    assert_conforms(DOC, schema_name if schema_name.startswith("Google") else
                    f"GoogleCloudAiplatformV1{schema_name}", value)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    frame = pd.read_csv(DATA, nrows=5200, dtype={name: str for name in schema.CATEGORICAL_COLUMNS})
    return schema.validate_frame(frame, str(DATA))


@pytest.fixture(scope="module")
def models(rows: pd.DataFrame) -> dict:
    """Two fits of the trainer's Pipeline that predict differently."""
    trainer = load_trainer()
    train = rows.iloc[:5000]
    features, labels = trainer.model_input(train), train[schema.LABEL_COLUMN]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return {"good": trainer.build_model(1e-4).fit(features, labels),
                "other": trainer.build_model(1e-2, 2).fit(features, labels)}


@pytest.fixture(scope="module")
def folders(models: dict, emulator: tuple) -> dict[str, Path]:
    """Model folders in the emulator's storage, the only place a model may come from."""
    root = emulator[2] / "gcs" / "artifacts"
    for name, model in models.items():
        (root / name).mkdir(parents=True)
        (root / name / "model.pkl").write_bytes(pickle.dumps(model))
    (root / "empty").mkdir()
    (root / "corrupt").mkdir()
    (root / "corrupt" / "model.pkl").write_bytes(b"not a pickle")
    return {name: root / name for name in (*models, "empty", "corrupt")}


@pytest.fixture(scope="module")
def sample(rows: pd.DataFrame) -> pd.DataFrame:
    """200 rows no model was fitted on."""
    return rows.iloc[5000:5200].reset_index(drop=True)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, str, Path]]:
    """(aiplatform v1 client, server URL, home) of one emulator for the module."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch, EmulatorServer(home=home) as server:
        patch.setenv("COVERTYPE_HOME", str(home))
        patch.setenv(VERTEX_EMULATOR_HOST_ENV, server.url)
        yield aiplatform_service(REGION), server.url, home


def _instances(frame: pd.DataFrame) -> list[list]:
    return [[*map(int, row[:10]), *row[10:]] for row in frame[FEATURES].itertuples(index=False)]


def _expected(models: dict, name: str, frame: pd.DataFrame) -> list[int]:
    return models[name].predict(load_trainer().model_input(frame)).tolist()


def _locations(ai: object) -> object:
    return ai.projects().locations()


def _operation(ai: object, operation: dict, metadata: str, response: str) -> dict:
    """Check a returned Operation and poll it by name, as a client does."""
    _conforms("GoogleLongrunningOperation", operation)
    assert operation["done"] is True and "error" not in operation
    assert operation["metadata"]["@type"].endswith(f".aiplatform.v1.{metadata}")
    assert operation["response"]["@type"].endswith(f".aiplatform.v1.{response}")
    parent = operation["name"].split("/operations/")[0]
    collection = parent.split("/")[4]
    resource = getattr(_locations(ai), collection)().operations()
    polled = resource.get(name=operation["name"]).execute()
    _conforms("GoogleLongrunningOperation", polled)
    assert polled == operation
    return operation


def _upload(ai: object, folder: Path, display: str = "covertype", **model: object) -> dict:
    body = {"model": {"displayName": display, "artifactUri": str(folder),
                      "containerSpec": {"imageUri": SERVING_IMAGE, "predictRoute": "/predict",
                                        "healthRoute": "/health"}, **model}}
    operation = _locations(ai).models().upload(parent=PARENT, body=body).execute()
    return _operation(ai, operation, "UploadModelOperationMetadata", "UploadModelResponse")


def _endpoint(ai: object, display: str = "covertype_classifier") -> dict:
    operation = _locations(ai).endpoints().create(parent=PARENT,
                                                  body={"displayName": display}).execute()
    return _operation(ai, operation, "CreateEndpointOperationMetadata", "Endpoint")["response"]


def _deploy(ai: object, endpoint: str, model: str, split: dict | None = None) -> dict:
    body = {"deployedModel": {"model": model, "displayName": "v01",
                              "dedicatedResources": DEDICATED}}
    if split is not None:
        body["trafficSplit"] = split
    operation = _locations(ai).endpoints().deployModel(endpoint=endpoint, body=body).execute()
    return _operation(ai, operation, "DeployModelOperationMetadata",
                      "DeployModelResponse")["response"]["deployedModel"]


def _predict(ai: object, endpoint: str, instances: list) -> dict:
    answer = _locations(ai).endpoints().predict(endpoint=endpoint,
                                                body={"instances": instances}).execute()
    _conforms("PredictResponse", answer)
    return answer


def _error(raised: pytest.ExceptionInfo) -> tuple[int, str, str]:
    error = json.loads(raised.value.content)["error"]
    assert error["code"] == raised.value.resp.status and "\n" not in error["message"]
    return error["code"], error["status"], error["message"]


def test_upload_deploy_predict_undeploy(emulator, folders, models, sample) -> None:
    ai, _, home = emulator
    model_name = _upload(ai, folders["good"], labels={"version": "v01"})["response"]["model"]
    model = _locations(ai).models().get(name=model_name).execute()
    _conforms("Model", model)
    assert (model["artifactUri"], model["versionId"], model["displayName"]) == (
        str(folders["good"]), "1", "covertype")
    assert "deployedModels" not in model
    stored = home / "registry" / ".vertex" / "models" / model_name.rsplit("/", 1)[1]
    assert (stored / "model.pkl").read_bytes() == (folders["good"] / "model.pkl").read_bytes()
    assert json.loads((stored / "fastpath.json").read_text())["path"] == "onnx"

    endpoint = _endpoint(ai)
    assert "deployedModels" not in endpoint and "trafficSplit" not in endpoint
    deployed = _deploy(ai, endpoint["name"], model_name, {"0": 100})
    assert (deployed["model"], deployed["modelVersionId"], deployed["displayName"]) == (
        model_name, "1", "v01")
    current = _locations(ai).endpoints().get(name=endpoint["name"]).execute()
    _conforms("Endpoint", current)
    assert current["trafficSplit"] == {deployed["id"]: 100}
    assert [item["id"] for item in current["deployedModels"]] == [deployed["id"]]
    model = _locations(ai).models().get(name=model_name).execute()
    assert model["deployedModels"] == [{"endpoint": endpoint["name"],
                                        "deployedModelId": deployed["id"]}]

    answer = _predict(ai, endpoint["name"], _instances(sample))
    assert answer == {"predictions": _expected(models, "good", sample),
                      "deployedModelId": deployed["id"], "model": model_name,
                      "modelDisplayName": "covertype", "modelVersionId": "1"}

    other_name = _upload(ai, folders["other"], "covertype-other")["response"]["model"]
    other = _deploy(ai, endpoint["name"], other_name, {"0": 50, deployed["id"]: 50})
    assert _expected(models, "good", sample) != _expected(models, "other", sample)
    answered = {_predict(ai, endpoint["name"], _instances(sample[:1]))["deployedModelId"]
                for _ in range(40)}  # both answer; one alone has odds 2**-39
    assert answered == {deployed["id"], other["id"]}

    with pytest.raises(HttpError) as raised:  # it still takes half of the traffic
        _locations(ai).endpoints().undeployModel(
            endpoint=endpoint["name"], body={"deployedModelId": deployed["id"]}).execute()
    assert _error(raised)[:2] == (400, "FAILED_PRECONDITION")
    operation = _locations(ai).endpoints().undeployModel(
        endpoint=endpoint["name"],
        body={"deployedModelId": deployed["id"], "trafficSplit": {other["id"]: 100}}).execute()
    _operation(ai, operation, "UndeployModelOperationMetadata", "UndeployModelResponse")
    answer = _predict(ai, endpoint["name"], _instances(sample))
    assert (answer["deployedModelId"], answer["predictions"]) == (
        other["id"], _expected(models, "other", sample))
    assert "deployedModels" not in _locations(ai).models().get(name=model_name).execute()

    operation = _locations(ai).endpoints().undeployModel(
        endpoint=endpoint["name"], body={"deployedModelId": other["id"]}).execute()
    _operation(ai, operation, "UndeployModelOperationMetadata", "UndeployModelResponse")
    current = _locations(ai).endpoints().get(name=endpoint["name"]).execute()
    _conforms("Endpoint", current)
    assert "deployedModels" not in current and "trafficSplit" not in current
    with pytest.raises(HttpError) as raised:
        _predict(ai, endpoint["name"], _instances(sample[:1]))
    code, status, message = _error(raised)
    assert (code, status) == (400, "FAILED_PRECONDITION")
    assert message.endswith("has no deployed model that takes traffic; deploy one with a "
                            "trafficSplit")


def test_deploy_without_split_takes_no_traffic_until_a_split(emulator, folders) -> None:
    ai, _, _ = emulator
    model = _upload(ai, folders["good"])["response"]["model"]
    endpoint = _endpoint(ai, "quiet")["name"]
    deployed = _deploy(ai, endpoint, model)
    assert "trafficSplit" not in _locations(ai).endpoints().get(name=endpoint).execute()
    with pytest.raises(HttpError) as raised:
        _predict(ai, endpoint, [[2596, 51, 3, 258, 0, 510, 221, 232, 148, 6279, "Rawah",
                                 "C7744"]])
    assert _error(raised)[:2] == (400, "FAILED_PRECONDITION")
    second = _deploy(ai, endpoint, model, {deployed["id"]: 30, "0": 70})
    assert _locations(ai).endpoints().get(name=endpoint).execute()["trafficSplit"] == {
        deployed["id"]: 30, second["id"]: 70}


UPLOAD_REFUSALS = [
    ({"artifactUri": None}, 400, "INVALID_ARGUMENT", "model covertype: artifactUri is required"),
    ({"artifactUri": "relative/folder"}, 400, "INVALID_ARGUMENT", "artifactUri 'relative/folder' "
                                                                  "is relative"),
    ({"artifactUri": "empty"}, 400, "FAILED_PRECONDITION", "holds no model.pkl or model.joblib; "
                                                           "point artifactUri at the folder"),
    ({"artifactUri": "corrupt"}, 400, "FAILED_PRECONDITION", "model.pkl does not load"),
    ({"containerSpec": {}}, 400, "INVALID_ARGUMENT", "model.containerSpec.imageUri is required"),
    ({"explanationSpec": {"parameters": {}}}, 400, "INVALID_ARGUMENT",
     "uploadModelRequest.model.explanationSpec is not supported locally"),
    ({"framework": "sklearn"}, 400, "INVALID_ARGUMENT", "unknown field 'framework' in "
                                                        "uploadModelRequest.model"),
    ({"displayName": ""}, 400, "INVALID_ARGUMENT", "uploadModelRequest.model.displayName is "
                                                   "required"),
]


@pytest.mark.parametrize(("change", "code", "status", "message"), UPLOAD_REFUSALS)
def test_upload_refusals_change_nothing(emulator, folders, change, code, status,
                                        message) -> None:
    ai, _, home = emulator
    models = home / "registry" / ".vertex" / "models"
    before = sorted(models.glob("*"))
    body = {"displayName": "covertype", "artifactUri": str(folders["good"]),
            "containerSpec": {"imageUri": SERVING_IMAGE}}
    for key, value in change.items():
        if value is None:
            body.pop(key)
        else:
            named = isinstance(value, str) and value in folders
            body[key] = str(folders[value]) if named else value
    with pytest.raises(HttpError) as raised:
        _locations(ai).models().upload(parent=PARENT, body={"model": body}).execute()
    assert _error(raised)[:2] == (code, status)
    assert message in _error(raised)[2]
    assert sorted(models.glob("*")) == before
    assert not list((home / "registry" / ".vertex").glob(".staging-*"))


def test_upload_model_id_and_parent_model(emulator, folders) -> None:
    ai, _, _ = emulator
    body = {"modelId": "covertype_v01", "model": {
        "displayName": "covertype", "artifactUri": str(folders["good"]),
        "containerSpec": {"imageUri": SERVING_IMAGE}}}
    operation = _locations(ai).models().upload(parent=PARENT, body=body).execute()
    assert operation["response"]["model"] == f"{PARENT}/models/covertype_v01"
    with pytest.raises(HttpError) as raised:
        _locations(ai).models().upload(parent=PARENT, body=body).execute()
    assert _error(raised)[:2] == (409, "ALREADY_EXISTS")
    with pytest.raises(HttpError) as raised:
        _locations(ai).models().upload(parent=PARENT, body={
            **body, "modelId": "", "parentModel": f"{PARENT}/models/covertype_v01"}).execute()
    assert _error(raised)[1:] == ("INVALID_ARGUMENT", "uploadModelRequest.parentModel is not "
                                  "supported locally (model versions are not kept locally; "
                                  "upload a new model); remove it")


def test_deploy_refusals(emulator, folders) -> None:
    ai, _, _ = emulator
    model = _upload(ai, folders["good"])["response"]["model"]
    endpoint = _endpoint(ai, "refusals")["name"]
    good = {"model": model, "dedicatedResources": DEDICATED}
    cases = [
        ({"deployedModel": {**good, "dedicatedResources": None,
                            "automaticResources": {"minReplicaCount": 1}}},
         "deployedModel.automaticResources is not supported locally"),
        ({"deployedModel": {"model": model}},
         "deployedModel.dedicatedResources.machineSpec.machineType is required"),
        ({"deployedModel": {**good, "dedicatedResources": {**DEDICATED, "minReplicaCount": 0}}},
         "needs minReplicaCount >= 1"),
        ({"deployedModel": good, "trafficSplit": {"0": 60}},
         "trafficSplit percentages {"),
        ({"deployedModel": good, "trafficSplit": {"0": 50, "999": 50}},
         "trafficSplit names '999', which is not deployed here"),
        ({"deployedModel": {**good, "model": model.replace(REGION, "europe-west4")}},
         "is not a model of projects/local/locations/us-central1"),
        ({"deployedModel": {**good, "id": "abc"}}, "deployedModel.id 'abc' is invalid"),
        ({}, "deployModelRequest.deployedModel is required"),
    ]
    for body, message in cases:
        if body.get("deployedModel", {}).get("dedicatedResources", 1) is None:
            body["deployedModel"].pop("dedicatedResources")
        with pytest.raises(HttpError) as raised:
            _locations(ai).endpoints().deployModel(endpoint=endpoint, body=body).execute()
        code, status, text = _error(raised)
        assert (code, status) == (400, "INVALID_ARGUMENT") and message in text, text
    assert "deployedModels" not in _locations(ai).endpoints().get(name=endpoint).execute()
    with pytest.raises(HttpError) as raised:
        _locations(ai).endpoints().deployModel(endpoint=f"{PARENT}/endpoints/42",
                                               body={"deployedModel": good}).execute()
    assert _error(raised)[:2] == (404, "NOT_FOUND")
    with pytest.raises(HttpError) as raised:
        _locations(ai).endpoints().deployModel(
            endpoint=endpoint, body={"deployedModel": {**good, "model": f"{PARENT}/models/9"}}
        ).execute()
    assert _error(raised)[:2] == (404, "NOT_FOUND")
    with pytest.raises(HttpError) as raised:
        _locations(ai).endpoints().undeployModel(endpoint=endpoint,
                                                 body={"deployedModelId": "5"}).execute()
    assert _error(raised)[:2] == (404, "NOT_FOUND")


def test_lists_filter_and_page(emulator, folders) -> None:
    ai, _, _ = emulator
    for index in range(3):
        _upload(ai, folders["good"], f"listed-{index}", labels={"batch": "b1"})
        _endpoint(ai, f"listed-{index}")
    models = _locations(ai).models()
    listed = models.list(parent=PARENT, filter='labels.batch="b1"').execute()
    _conforms("ListModelsResponse", listed)
    assert [m["displayName"] for m in listed["models"]] == ["listed-2", "listed-1", "listed-0"]
    request, seen = models.list(parent=PARENT, pageSize=2, filter='labels.batch="b1"'), []
    while request is not None:
        response = request.execute()
        _conforms("ListModelsResponse", response)
        seen += response["models"]
        request = models.list_next(request, response)
    assert seen == listed["models"]
    endpoints = _locations(ai).endpoints()
    listed = endpoints.list(parent=PARENT, filter='display_name="listed-1"').execute()
    _conforms("ListEndpointsResponse", listed)
    assert [e["displayName"] for e in listed["endpoints"]] == ["listed-1"]
    assert endpoints.list(parent="projects/local/locations/asia-east1").execute() == {}
    with pytest.raises(HttpError) as raised:
        endpoints.list(parent=PARENT, filter='state="JOB_STATE_SUCCEEDED"').execute()
    assert _error(raised)[:2] == (400, "INVALID_ARGUMENT")
    with pytest.raises(HttpError) as raised:
        _locations(ai).operations().get(name=f"{PARENT}/operations/123").execute()
    assert _error(raised)[:2] == (404, "NOT_FOUND")


def test_predict_errors_have_the_google_shape(emulator, folders) -> None:
    ai, url, _ = emulator
    model = _upload(ai, folders["good"])["response"]["model"]
    endpoint = _endpoint(ai, "errors")["name"]
    _deploy(ai, endpoint, model, {"0": 100})
    path = f"{url}/v1/{endpoint}:predict"
    limit = 1_572_864  # Vertex AI online prediction's documented payload limit, 1.5 MB
    cases = [(b"{not json", 400, "INVALID_ARGUMENT", "the request body is not valid JSON"),
             (b'{"instances": [[1, 2]]}', 400, "INVALID_ARGUMENT",
              "instances[0] has 2 values; expected 12"),
             (b" " * (limit + 1), 413, "INVALID_ARGUMENT",
              "Request payload size exceeds the limit")]
    for body, code, status, message in cases:
        answer = httpx.post(path, content=body, headers=JSON_TYPE)
        error = answer.json()["error"]
        assert (answer.status_code, error["code"], error["status"]) == (code, code, status)
        assert error["message"].startswith(message)
    answer = httpx.post(f"{url}/v1/{PARENT}/endpoints/77:predict", json={"instances": []})
    assert (answer.status_code, answer.json()["error"]["status"]) == (404, "NOT_FOUND")


def test_discovery_document_is_served_pointing_here(emulator) -> None:
    _, url, _ = emulator
    document = httpx.get(f"{url}/discovery/aiplatform/v1").json()
    assert document["rootUrl"] == document["baseUrl"] == url + "/"
    assert document["schemas"] == DOC["schemas"]
    assert httpx.get(f"{url}/discovery/bigquery/v2").status_code == 404


def test_covertype_serve_answers_endpoint_predict(emulator, folders, models, sample) -> None:
    """`covertype serve` (its predict shortcut past FastAPI) answers as the app's route does."""
    ai, url, home = emulator
    model = _upload(ai, folders["good"])["response"]["model"]
    endpoint = _endpoint(ai, "served")["name"]
    deployed = _deploy(ai, endpoint, model, {"0": 100})
    with covertype_serve(home) as serve:
        served = serve.url
        good = json.dumps({"instances": _instances(sample)}).encode()
        requests = [f"/v1/{endpoint}:predict", f"/v1/{PARENT}/endpoints/77:predict",
                    f"/v1/projects/other/locations/{REGION}/endpoints/1:predict"]
        for path in requests:
            for body in (good, b"{not json", b'{"instances": [{"Elevation": 1}]}'):
                ours, app = (httpx.post(base + path, content=body, timeout=60, headers=JSON_TYPE)
                             for base in (served, url))
                assert (ours.status_code, ours.content) == (app.status_code, app.content), path
                assert ours.headers.get("X-Deployed-Model-Id") == app.headers.get(
                    "X-Deployed-Model-Id")
        answer = httpx.post(served + requests[0], content=good, headers=JSON_TYPE).json()
        _conforms("PredictResponse", answer)
        assert answer["predictions"] == _expected(models, "good", sample)
        assert answer["deployedModelId"] == deployed["id"]
        path = httpx.post(served + requests[0], content=good, headers=JSON_TYPE).headers
        assert path["X-Prediction-Path"] == "onnx"
        # a new deployment is served without a restart
        other = _upload(ai, folders["other"])["response"]["model"]
        second = _deploy(ai, endpoint, other, {"0": 100, deployed["id"]: 0})
        answer = httpx.post(served + requests[0], content=good, headers=JSON_TYPE).json()
        assert (answer["deployedModelId"], answer["predictions"]) == (
            second["id"], _expected(models, "other", sample))
    assert registry_dir(home).is_dir()

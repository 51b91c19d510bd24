"""The Vertex AI deploy component: upload, endpoint, traffic switch, retries and refusals.

Runs against the local Vertex AI stand-in (tests/vertex_api.py) with a real fitted model in
its storage: the stand-in copies and verifies the model on upload and serves it on the
endpoint. The tests check the component's outputs and what the stand-in holds afterwards
(models and their labels, endpoints, deployed models, traffic). Cases the stand-in cannot
produce use recorded answers; those tests say why.
"""
from __future__ import annotations

import json
import pickle
import uuid
from pathlib import Path

import httpx
import pandas as pd
import pytest
from vertex_api import (
    ENDPOINT,
    MODEL,
    NODE,
    PARENT,
    PROJECT,
    REGION,
    REPO,
    RUN,
    SERVING,
    Recorded,
    conforms,
    fitted_model_bytes,
    label_filter,
    operation,
    serve_stand_in,
    step_identity,
)

from pipeline import schema
from pipeline.trainer import load_trainer
from pipeline.vertex import deploy, jobs
from pipeline.vertex.client import VertexClient, VertexError

RESOURCES = {"machineSpec": {"machineType": "n1-standard-2"}, "minReplicaCount": 1,
             "maxReplicaCount": 1}


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    with serve_stand_in(tmp_path_factory.mktemp("home")) as running:
        yield running


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return fitted_model_bytes()


@pytest.fixture
def model_id() -> str:
    """This test's model (and endpoint) name, so endpoints of other tests never match."""
    return f"covertype_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def model_folder(stand_in, model_bytes) -> Path:
    """A final training's model folder in the stand-in's storage."""
    folder = stand_in.storage / "jobdir" / uuid.uuid4().hex / "model"
    folder.mkdir(parents=True)
    (folder / "model.pkl").write_bytes(model_bytes)
    return folder


def deploy_inputs(folder: Path, model_id: str, **overrides) -> dict[str, str]:
    return {"model_uri": str(folder), "project_id": PROJECT, "region": REGION,
            "model_id": model_id, "version_id": "v02", "serving_image_uri": SERVING,
            "wait_interval": "0", **overrides}


def attempt(monkeypatch, run: str, retry: int = 0) -> dict:
    """Make this process attempt `retry` of the deploy step of `run`; the step's labels."""
    return step_identity(monkeypatch, run, f"{NODE}({retry})" if retry else NODE)


def step_models(stand_in, labels: dict) -> list[dict]:
    return stand_in.list("models", label_filter(labels))


def test_first_deploy_uploads_creates_the_endpoint_and_sends_all_traffic(
        stand_in, monkeypatch, model_folder, model_id, model_bytes, capsys):
    labels = attempt(monkeypatch, str(uuid.uuid4()))

    outputs = deploy.deploy_model(**deploy_inputs(model_folder, model_id))

    [model] = step_models(stand_in, labels)
    endpoint = stand_in.endpoint_named(model_id)
    assert outputs == {"model_name": model["name"], "endpoint_name": endpoint["name"],
                       "deployed_model_id": endpoint["deployedModels"][0]["id"]}
    assert {key: model[key] for key in ("displayName", "description", "artifactUri", "labels",
                                        "containerSpec")} == {
        "displayName": model_id, "description": f"{model_id} v02",
        "artifactUri": str(model_folder), "labels": labels,
        "containerSpec": {"imageUri": SERVING, "predictRoute": "/predict",
                          "healthRoute": "/health", "ports": [{"containerPort": 8080}]}}
    [deployed] = endpoint["deployedModels"]
    assert (deployed["model"], deployed["displayName"], deployed["dedicatedResources"]) == (
        model["name"], "v02", RESOURCES)
    assert endpoint["trafficSplit"] == {deployed["id"]: 100}
    printed = capsys.readouterr().out
    assert f"created endpoint {endpoint['name']} ({model_id})" in printed
    assert f"as {deployed['id']} (v02)" in printed

    rows = pd.read_csv(REPO / "data" / "covertype.csv.gz", nrows=50,
                       dtype={name: str for name in schema.CATEGORICAL_COLUMNS})
    features = rows[list(schema.FEATURE_COLUMNS)]
    answer = httpx.post(f"{stand_in.url}/v1/{endpoint['name']}:predict", timeout=60,
                        json={"instances": json.loads(features.to_json(orient="values"))})
    assert answer.status_code == 200, answer.text
    conforms("PredictResponse", answer.json())
    assert answer.json()["deployedModelId"] == deployed["id"]
    expected = pickle.loads(model_bytes).predict(load_trainer().model_input(features)).tolist()
    assert answer.json()["predictions"] == expected


def test_a_new_version_replaces_the_old_one_only_once_it_serves(
        stand_in, monkeypatch, model_folder, model_id, capsys):
    attempt(monkeypatch, str(uuid.uuid4()))
    old = deploy.deploy_model(**deploy_inputs(model_folder, model_id, version_id="v01"))
    labels = attempt(monkeypatch, str(uuid.uuid4()))  # the next run
    capsys.readouterr()

    new = deploy.deploy_model(**deploy_inputs(model_folder, model_id))

    endpoint = stand_in.get(new["endpoint_name"])
    assert new["endpoint_name"] == old["endpoint_name"]
    [deployed] = endpoint["deployedModels"]
    assert (deployed["id"], deployed["displayName"]) == (new["deployed_model_id"], "v02")
    assert endpoint["trafficSplit"] == {deployed["id"]: 100}
    assert [model["name"] for model in step_models(stand_in, labels)] == [new["model_name"]]
    assert stand_in.get(old["model_name"])["displayName"] == model_id  # kept in the registry
    assert (f"undeployed {old['deployed_model_id']} (v01): replaced by "
            f"{new['deployed_model_id']}") in capsys.readouterr().out


def test_an_existing_version_is_kept_unless_replacing_is_allowed(
        stand_in, monkeypatch, model_folder, model_id):
    attempt(monkeypatch, str(uuid.uuid4()))
    first = deploy.deploy_model(**deploy_inputs(model_folder, model_id))
    before = stand_in.get(first["endpoint_name"])
    labels = attempt(monkeypatch, str(uuid.uuid4()))

    with pytest.raises(ValueError) as raised:
        deploy.deploy_model(**deploy_inputs(model_folder, model_id))

    assert str(raised.value) == (
        f"endpoint {first['endpoint_name']} ({model_id}) already serves version v02 (deployed "
        f"model {first['deployed_model_id']}); set replace_existing_version=True to replace it "
        "or pick a new version_id")
    assert stand_in.get(first["endpoint_name"]) == before  # nothing changed
    assert step_models(stand_in, labels) == []  # nothing uploaded

    replaced = deploy.deploy_model(**deploy_inputs(model_folder, model_id,
                                                   replace_existing_version="True"))

    [deployed] = stand_in.get(first["endpoint_name"])["deployedModels"]
    assert (deployed["id"], deployed["model"], deployed["displayName"]) == (
        replaced["deployed_model_id"], replaced["model_name"], "v02")
    assert replaced["deployed_model_id"] != first["deployed_model_id"]


def test_a_retried_deploy_reuses_its_model_and_deployment(
        stand_in, monkeypatch, model_folder, model_id, capsys):
    """A deploy step retried after it had deployed (its pod failed at the end)."""
    run = str(uuid.uuid4())
    labels = attempt(monkeypatch, run)
    first = deploy.deploy_model(**deploy_inputs(model_folder, model_id))
    attempt(monkeypatch, run, retry=1)
    capsys.readouterr()

    again = deploy.deploy_model(**deploy_inputs(model_folder, model_id))

    assert again == first
    [model] = step_models(stand_in, labels)
    [deployed] = stand_in.get(first["endpoint_name"])["deployedModels"]
    assert (model["name"], deployed["id"]) == (first["model_name"], first["deployed_model_id"])
    printed = capsys.readouterr().out
    assert f"found {model['name']} uploaded by an earlier attempt of this step" in printed
    assert f"{model['name']} already serves on {first['endpoint_name']}" in printed


def test_a_deploy_retried_after_its_upload_deploys_that_model(
        stand_in, monkeypatch, model_folder, model_id):
    """The first attempt died after its upload finished: the retry uploads nothing more."""
    run = str(uuid.uuid4())
    labels = attempt(monkeypatch, run)
    client = VertexClient(PROJECT, REGION)
    waiting = jobs.Waiting.start(0, 60)
    uploaded = jobs.wait_for_operation(client, client.upload_model(deploy.upload_request(
        jobs.StepIdentity.from_env(), model_id, "v02", str(model_folder), SERVING)),
        "the first attempt's upload", waiting)["model"]
    attempt(monkeypatch, run, retry=1)

    outputs = deploy.deploy_model(**deploy_inputs(model_folder, model_id))

    assert [model["name"] for model in step_models(stand_in, labels)] == [uploaded]
    [deployed] = stand_in.endpoint_named(model_id)["deployedModels"]
    assert (outputs["model_name"], outputs["deployed_model_id"]) == (uploaded, deployed["id"])
    assert deployed["model"] == uploaded


def test_a_model_the_stand_in_cannot_load_is_refused_in_one_line(
        stand_in, monkeypatch, model_folder, model_id):
    labels = attempt(monkeypatch, str(uuid.uuid4()))
    (model_folder / "model.pkl").write_bytes(b"not a pickle")

    with pytest.raises(VertexError) as raised:
        deploy.deploy_model(**deploy_inputs(model_folder, model_id))

    text = str(raised.value)
    assert text.startswith(f"uploading a model to {PARENT} failed: HTTP 400 ")
    assert text.endswith("; fix the request named above") and "\n" not in text
    assert step_models(stand_in, labels) == [] and stand_in.endpoint_named(model_id) is None


@pytest.mark.parametrize(("files", "message"), [
    ((), "holds no model.pkl; it must hold exactly one of model.pkl or model.joblib"),
    (("model.pkl", "model.joblib"), "holds model.pkl and model.joblib; it must hold exactly one"),
])
def test_deploy_refuses_a_folder_without_one_model_before_any_call(
        stand_in, monkeypatch, tmp_path, model_id, files, message):
    labels = attempt(monkeypatch, str(uuid.uuid4()))
    for name in files:
        (tmp_path / name).write_bytes(b"x")

    with pytest.raises(ValueError, match=message):
        deploy.deploy_model(**deploy_inputs(tmp_path, model_id))
    assert step_models(stand_in, labels) == [] and stand_in.endpoint_named(model_id) is None


def test_two_endpoints_with_the_models_name_are_refused(stand_in, monkeypatch, model_folder,
                                                        model_id):
    labels = attempt(monkeypatch, str(uuid.uuid4()))
    twins = [stand_in.create("endpoints", {"displayName": model_id})["name"] for _ in range(2)]

    with pytest.raises(ValueError) as raised:
        deploy.deploy_model(**deploy_inputs(model_folder, model_id))

    assert str(raised.value).startswith(f"2 endpoints are named {model_id} (")
    assert set(twins) <= set(str(raised.value)[:-1].split("(", 1)[1].split(")")[0].split(", "))
    assert step_models(stand_in, labels) == []


# ---- recorded answers: what the stand-in never answers ------------------------------------

@pytest.fixture
def recorded_model_folder(tmp_path) -> Path:
    folder = tmp_path / "jobdir" / "model"
    folder.mkdir(parents=True)
    (folder / "model.pkl").write_bytes(b"not read by the deploy step")
    return folder


def endpoint(*deployed: tuple[str, str, str], traffic: dict | None = None) -> dict:
    body = {"name": ENDPOINT, "displayName": "covertype_classifier",
            "deployedModels": [{"id": ident, "model": model, "displayName": version}
                               for ident, model, version in deployed]}
    if traffic is not None:
        body["trafficSplit"] = traffic
    conforms("Endpoint", body)
    return body


def test_operations_still_running_are_polled_to_their_end(monkeypatch, recorded_model_folder):
    """Recorded answers: the stand-in finishes every operation before it answers."""
    step_identity(monkeypatch, RUN, NODE)
    vertex = Recorded(monkeypatch, [
        {},
        {},
        operation(f"{PARENT}/models/42/operations/1", False),
        operation(f"{PARENT}/models/42/operations/1", True, {"model": MODEL}),
        operation(f"{ENDPOINT}/operations/2", True,
                  {"name": ENDPOINT, "displayName": "covertype_classifier"}),
        operation(f"{ENDPOINT}/operations/3", False),
        operation(f"{ENDPOINT}/operations/3", True, {"deployedModel": {"id": "900"}}),
        endpoint(("900", MODEL, "v02"), traffic={"900": 100})])

    outputs = deploy.deploy_model(**deploy_inputs(recorded_model_folder, "covertype_classifier"))

    assert outputs == {"model_name": MODEL, "endpoint_name": ENDPOINT,
                       "deployed_model_id": "900"}
    assert [(method, path) for method, path, _, _ in vertex.calls] == [
        ("GET", f"/v1/{PARENT}/endpoints"),
        ("GET", f"/v1/{PARENT}/models"),
        ("POST", f"/v1/{PARENT}/models:upload"),
        ("GET", f"/v1/{PARENT}/models/42/operations/1"),
        ("POST", f"/v1/{PARENT}/endpoints"),
        ("POST", f"/v1/{ENDPOINT}:deployModel"),
        ("GET", f"/v1/{ENDPOINT}/operations/3"),
        ("GET", f"/v1/{ENDPOINT}"),
    ]


def test_old_deployments_stay_when_the_new_one_does_not_get_the_traffic(
        monkeypatch, recorded_model_folder):
    """Recorded answers: the stand-in, like Vertex AI, gives the new deployment the split the
    request asks for; only someone changing the split meanwhile leaves it without traffic."""
    step_identity(monkeypatch, RUN, NODE)
    old = f"{PARENT}/models/41"
    vertex = Recorded(monkeypatch, [
        {"endpoints": [endpoint(("800", old, "v01"), traffic={"800": 100})]},
        {},
        operation(f"{PARENT}/models/42/operations/1", True, {"model": MODEL}),
        operation(f"{ENDPOINT}/operations/3", True, {"deployedModel": {"id": "900"}}),
        endpoint(("800", old, "v01"), ("900", MODEL, "v02"), traffic={"800": 100})])

    with pytest.raises(VertexError, match="deployed model 900 on .* gets 0% of the traffic, not "
                                          "100%; nothing was undeployed"):
        deploy.deploy_model(**deploy_inputs(recorded_model_folder, "covertype_classifier"))
    assert "undeployModel" not in vertex.calls[-1][1]


def test_a_failed_operation_is_a_one_line_error(monkeypatch, recorded_model_folder):
    """Recorded answers: the stand-in refuses a bad upload with an HTTP error; only the cloud
    fails an operation after accepting it."""
    step_identity(monkeypatch, RUN, NODE)
    Recorded(monkeypatch, [{}, {}, operation(f"{PARENT}/models/42/operations/1", True, error={
        "code": 9, "message": "Model artifact is not\nreadable."})])

    with pytest.raises(VertexError) as raised:
        deploy.deploy_model(**deploy_inputs(recorded_model_folder, "covertype_classifier"))

    assert str(raised.value) == (f"uploading {recorded_model_folder} failed: 9 Model artifact "
                                 "is not readable.")


def test_an_operation_answer_without_its_result_is_a_one_line_error(monkeypatch,
                                                                    recorded_model_folder):
    """Recorded answers: the stand-in's finished operations always carry their result."""
    step_identity(monkeypatch, RUN, NODE)
    Recorded(monkeypatch, [{}, {}, operation(f"{PARENT}/models/42/operations/1", True, {})])

    with pytest.raises(VertexError) as raised:
        deploy.deploy_model(**deploy_inputs(recorded_model_folder, "covertype_classifier"))

    assert str(raised.value) == ("the upload finished without a model in its response; check the "
                                 "operation in the console and re-run the step")

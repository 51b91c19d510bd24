"""The Vertex AI deploy component: upload, endpoint, traffic switch, retries and refusals.

Google's client over the packaged aiplatform v1 discovery document; the HTTP answers come from
HttpMockSequence (tests/vertex_api.py) until the local Vertex AI stand-in is merged.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from vertex_api import (
    ENDPOINT,
    FILTER,
    LABELS,
    MODEL,
    NODE,
    PARENT,
    PROJECT,
    REGION,
    RUN,
    SERVING,
    Api,
    operation,
)
from vertex_shapes import problems

from pipeline import ml_client
from pipeline.vertex import deploy, jobs
from pipeline.vertex.client import VertexError


@pytest.fixture(autouse=True)
def step(monkeypatch):
    """A step of a KFP run: run id and (retry-suffixed) node name, no emulator switch."""
    monkeypatch.setenv(jobs.RUN_ENV, RUN)
    monkeypatch.setenv(jobs.NODE_ENV, NODE + "(1)")
    monkeypatch.delenv(ml_client.VERTEX_EMULATOR_HOST_ENV, raising=False)


@pytest.fixture
def api(monkeypatch):
    return lambda *answers: Api(monkeypatch, list(answers))


@pytest.fixture
def model_folder(tmp_path) -> Path:
    folder = tmp_path / "jobdir" / "model"
    folder.mkdir(parents=True)
    (folder / "model.pkl").write_bytes(b"not read by the deploy step")
    return folder


def deploy_inputs(folder: Path, **overrides) -> dict[str, str]:
    return {"model_uri": str(folder), "project_id": PROJECT, "region": REGION,
            "model_id": "covertype_classifier", "version_id": "v02",
            "serving_image_uri": SERVING, "wait_interval": "0", **overrides}


def endpoint(*deployed: tuple[str, str, str], traffic: dict | None = None) -> dict:
    body = {"name": ENDPOINT, "displayName": "covertype_classifier",
            "deployedModels": [{"id": ident, "model": model, "displayName": version}
                               for ident, model, version in deployed]}
    if traffic is not None:
        body["trafficSplit"] = traffic
    assert problems("Endpoint", body) == []
    return body


def test_first_deploy_uploads_creates_the_endpoint_and_sends_all_traffic(api, model_folder):
    vertex = api(
        {"endpoints": [{"name": f"{PARENT}/endpoints/1", "displayName": "other_model"}]},
        {},
        operation(f"{PARENT}/models/42/operations/1", False),
        operation(f"{PARENT}/models/42/operations/1", True, {"model": MODEL}),
        operation(f"{ENDPOINT}/operations/2", True,
                  {"name": ENDPOINT, "displayName": "covertype_classifier"}),
        operation(f"{ENDPOINT}/operations/3", False),
        operation(f"{ENDPOINT}/operations/3", True, {"deployedModel": {"id": "900"}}),
        endpoint(("900", MODEL, "v02"), traffic={"900": 100}))

    outputs = deploy.deploy_model(**deploy_inputs(model_folder))

    assert outputs == {"model_name": MODEL, "endpoint_name": ENDPOINT,
                       "deployed_model_id": "900"}
    assert vertex.calls == [
        ("GET", f"/v1/{PARENT}/endpoints", {}, None),
        ("GET", f"/v1/{PARENT}/models", {"filter": FILTER}, None),
        ("POST", f"/v1/{PARENT}/models:upload", {}, {"model": {
            "displayName": "covertype_classifier", "description": "covertype_classifier v02",
            "artifactUri": str(model_folder), "labels": LABELS,
            "containerSpec": {"imageUri": SERVING, "predictRoute": "/predict",
                              "healthRoute": "/health", "ports": [{"containerPort": 8080}]}}}),
        ("GET", f"/v1/{PARENT}/models/42/operations/1", {}, None),
        ("POST", f"/v1/{PARENT}/endpoints", {}, {"displayName": "covertype_classifier"}),
        ("POST", f"/v1/{ENDPOINT}:deployModel", {}, {
            "deployedModel": {"model": MODEL, "displayName": "v02", "dedicatedResources": {
                "machineSpec": {"machineType": "n1-standard-2"}, "minReplicaCount": 1,
                "maxReplicaCount": 1}},
            "trafficSplit": {"0": 100}}),
        ("GET", f"/v1/{ENDPOINT}/operations/3", {}, None),
        ("GET", f"/v1/{ENDPOINT}", {}, None),
    ]


def test_a_new_version_replaces_the_old_ones_only_once_it_serves(api, model_folder):
    old = f"{PARENT}/models/41"
    vertex = api(
        {"endpoints": [endpoint(("800", old, "v01"), traffic={"800": 100})]},
        {},
        operation(f"{PARENT}/models/42/operations/1", True, {"model": MODEL}),
        operation(f"{ENDPOINT}/operations/3", True, {"deployedModel": {"id": "900"}}),
        endpoint(("800", old, "v01"), ("900", MODEL, "v02"), traffic={"900": 100}),
        operation(f"{ENDPOINT}/operations/4", True, {}))

    outputs = deploy.deploy_model(**deploy_inputs(model_folder))

    assert outputs["deployed_model_id"] == "900"
    methods = [(method, path) for method, path, _, _ in vertex.calls]
    assert methods[-3:] == [("POST", f"/v1/{ENDPOINT}:deployModel"),
                            ("GET", f"/v1/{ENDPOINT}"),
                            ("POST", f"/v1/{ENDPOINT}:undeployModel")]
    assert vertex.calls[-1][3] == {"deployedModelId": "800"}


def test_an_existing_version_is_kept_unless_replacing_is_allowed(api, model_folder):
    old = f"{PARENT}/models/41"
    vertex = api({"endpoints": [endpoint(("800", old, "v02"), traffic={"800": 100})]}, {})

    with pytest.raises(ValueError) as raised:
        deploy.deploy_model(**deploy_inputs(model_folder))

    assert str(raised.value) == (
        f"endpoint {ENDPOINT} (covertype_classifier) already serves version v02 (deployed model "
        "800); set replace_existing_version=True to replace it or pick a new version_id")
    assert [method for method, *_ in vertex.calls] == ["GET", "GET"]  # nothing changed


def test_replace_existing_version_swaps_the_deployment(api, model_folder):
    old = f"{PARENT}/models/41"
    vertex = api(
        {"endpoints": [endpoint(("800", old, "v02"), traffic={"800": 100})]},
        {},
        operation(f"{PARENT}/models/42/operations/1", True, {"model": MODEL}),
        operation(f"{ENDPOINT}/operations/3", True, {"deployedModel": {"id": "900"}}),
        endpoint(("800", old, "v02"), ("900", MODEL, "v02"), traffic={"900": 100}),
        operation(f"{ENDPOINT}/operations/4", True, {}))

    deploy.deploy_model(**deploy_inputs(model_folder, replace_existing_version="True"))

    assert vertex.calls[-1][1:] == (f"/v1/{ENDPOINT}:undeployModel", {},
                                    {"deployedModelId": "800"})


def test_a_retried_deploy_reuses_its_model_and_deployment(api, model_folder):
    vertex = api(
        {"endpoints": [endpoint(("900", MODEL, "v02"), traffic={"900": 100})]},
        {"models": [{"name": MODEL, "displayName": "covertype_classifier", "labels": LABELS}]},
        endpoint(("900", MODEL, "v02"), traffic={"900": 100}))

    outputs = deploy.deploy_model(**deploy_inputs(model_folder))

    assert outputs == {"model_name": MODEL, "endpoint_name": ENDPOINT, "deployed_model_id": "900"}
    assert [method for method, *_ in vertex.calls] == ["GET", "GET", "GET"]  # no upload/deploy


def test_old_deployments_stay_when_the_new_one_does_not_get_the_traffic(api, model_folder):
    old = f"{PARENT}/models/41"
    vertex = api(
        {"endpoints": [endpoint(("800", old, "v01"), traffic={"800": 100})]},
        {},
        operation(f"{PARENT}/models/42/operations/1", True, {"model": MODEL}),
        operation(f"{ENDPOINT}/operations/3", True, {"deployedModel": {"id": "900"}}),
        endpoint(("800", old, "v01"), ("900", MODEL, "v02"), traffic={"800": 100}))

    with pytest.raises(VertexError, match="deployed model 900 on .* gets 0% of the traffic, not "
                                          "100%; nothing was undeployed"):
        deploy.deploy_model(**deploy_inputs(model_folder))
    assert "undeployModel" not in vertex.calls[-1][1]


def test_a_failed_operation_is_a_one_line_error(api, model_folder):
    api({}, {}, operation(f"{PARENT}/models/42/operations/1", True, error={
        "code": 9, "message": "Model artifact is not\nreadable."}))

    with pytest.raises(VertexError) as raised:
        deploy.deploy_model(**deploy_inputs(model_folder))

    assert str(raised.value) == (f"uploading {model_folder} failed: 9 Model artifact is not "
                                 "readable.")


@pytest.mark.parametrize(("files", "message"), [
    ((), "holds no model.pkl; it must hold exactly one of model.pkl or model.joblib"),
    (("model.pkl", "model.joblib"), "holds model.pkl and model.joblib; it must hold exactly one"),
])
def test_deploy_refuses_a_folder_without_one_model_before_any_call(api, tmp_path, files, message):
    for name in files:
        (tmp_path / name).write_bytes(b"x")
    vertex = api()

    with pytest.raises(ValueError, match=message):
        deploy.deploy_model(**deploy_inputs(tmp_path))
    assert vertex.calls == []


def test_two_endpoints_with_the_models_name_are_refused(api, model_folder):
    twin = {**endpoint(), "name": f"{PARENT}/endpoints/78"}
    api({"endpoints": [endpoint(), twin]})

    with pytest.raises(ValueError, match="^2 endpoints are named covertype_classifier"):
        deploy.deploy_model(**deploy_inputs(model_folder))




def test_an_operation_answer_without_its_result_is_a_one_line_error(api, model_folder):
    api({}, {}, operation(f"{PARENT}/models/42/operations/1", True, {}))

    with pytest.raises(VertexError) as raised:
        deploy.deploy_model(**deploy_inputs(model_folder))

    assert str(raised.value) == ("the upload finished without a model in its response; check the "
                                 "operation in the console and re-run the step")

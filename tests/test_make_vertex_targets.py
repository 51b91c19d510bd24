"""`make compile|upload|run PLATFORM=vertex` with the real `kfp` CLI, recorded at the KFP API."""
from __future__ import annotations

import json

import pytest
import yaml
from kfp_recorder import API, RecordingKfpApi
from test_make_cloud_targets import (
    CLOUD,
    HEALTHZ,
    LOCAL_IMAGE,
    PACKAGE_NAME,
    calls,
    make,
    name_filter,
)

VERTEX_PIPELINE_NAME = "covertype_continuous_training_vertex"


@pytest.fixture
def api(tmp_path):
    with RecordingKfpApi(tmp_path / "kfp-home") as recording:
        yield recording


def test_upload_sends_the_vertex_package_under_its_own_name(tmp_path, api):
    result = make("upload", tmp_path, INVERSE_PROXY_HOSTNAME=api.url, PROJECT_ID="demo",
                  PLATFORM="vertex")

    assert result.returncode == 0, result.stderr
    assert calls(api) == [HEALTHZ, ("GET", f"{API}/pipelines"),
                          ("POST", f"{API}/pipelines/upload")]
    assert name_filter(api.requests[1]) == VERTEX_PIPELINE_NAME
    assert api.requests[2].query == {"name": [VERTEX_PIPELINE_NAME]}
    _, content = api.requests[2].form_file("uploadfile")
    assert content == (tmp_path / PACKAGE_NAME).read_bytes()
    text = content.decode()
    assert not LOCAL_IMAGE.search(text)
    templates = {t["name"]: t for t in yaml.safe_load(text)["spec"]["templates"]}
    deploy = templates["deploy-model"]["container"]
    assert deploy["command"] == ["python", "-u", "-m", "pipeline.vertex.launcher"]
    assert deploy["image"] == "gcr.io/demo/base_image:latest"
    assert "gcr.io/demo/serving_image:latest" in deploy["args"]


def test_upload_refuses_a_vertex_package_with_a_local_serving_image(tmp_path, api):
    result = make("upload", tmp_path, INVERSE_PROXY_HOSTNAME=api.url, PLATFORM="vertex",
                  BASE_IMAGE="gcr.io/demo/base_image:1", TRAINER_IMAGE="gcr.io/demo/trainer:1")

    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        f"error: {tmp_path / PACKAGE_NAME} names local images; set PROJECT_ID (or BASE_IMAGE, "
        "TRAINER_IMAGE and SERVING_IMAGE) and run make upload again")
    assert "covertype/serving_image:local" in (tmp_path / PACKAGE_NAME).read_text()
    assert api.requests == []


def test_run_refuses_tuning_settings_vertex_cannot_take_before_sending(tmp_path, api):
    settings = json.dumps({"hyperparameters": {
        "goal": "MAXIMIZE", "resumePreviousJobId": "hptune_1",
        "params": [{"parameterName": "alpha", "type": "DOUBLE", "minValue": 0.1,
                    "maxValue": 0.2}]}})

    result = make("run", tmp_path, INVERSE_PROXY_HOSTNAME=api.url, **CLOUD, PLATFORM="vertex",
                  HYPERTUNE_SETTINGS=settings)

    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == (
        "error: hypertune_settings.hyperparameters.resumePreviousJobId has no Vertex AI "
        "equivalent (a Vertex AI study cannot resume an AI Platform job); remove it")
    assert api.requests == []


def test_compile_refuses_an_unknown_platform_in_one_line(tmp_path):
    result = make("compile", tmp_path, PLATFORM="sagemaker")

    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == (
        "error: PLATFORM='sagemaker' is not a platform; set it to caip (AI Platform, the lab's "
        "form) or vertex (Vertex AI)")
    assert not (tmp_path / PACKAGE_NAME).exists()

"""`make upload` and `make run` drive the real `kfp` CLI; these tests check what it sends.

A KFP cluster is unreachable from tests, so the KFP API answering here is the local one of
`covertype serve` (the same implementation `make upload`/`make run` use locally), with a
recorder in front of it and every run held in its queue: nothing executes. `LOCAL_ENDPOINT=`
tells the Makefile to treat the 127.0.0.1 endpoint as a cluster. make runs with a bare
environment (PATH, a tmp HOME so no kfp context or kube config is read) and writes the
compiled package into tmp_path, never the repository root.
"""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from kfp_recorder import API, RecordingKfpApi

REPO = Path(__file__).resolve().parents[1]
PACKAGE_NAME = "covertype_training_pipeline.yaml"
# The Makefile's defaults, as a user who sets nothing sees them.
PIPELINE_NAME, EXPERIMENT_NAME = "covertype_continuous_training", "Covertype_Classifier_Training"
LOCAL_IMAGE = re.compile(r"covertype/[a-z_]+:local")
LOCAL_IMAGES_ERROR = ("error: {package} names local images; set PROJECT_ID (or BASE_IMAGE and "
                      "TRAINER_IMAGE) and run make upload again")
HEALTHZ = ("GET", f"{API}/healthz")
CLOUD = {"PROJECT_ID": "demo-project", "GCS_STAGING_PATH": "gs://bucket/staging"}
HYPERTUNE = json.dumps({"hyperparameters": {
    "goal": "MAXIMIZE", "maxTrials": 2, "maxParallelTrials": 1,
    "hyperparameterMetricTag": "accuracy",
    "params": [{"parameterName": "alpha", "type": "DOUBLE", "minValue": 0.0001,
                "maxValue": 0.001, "scaleType": "UNIT_LINEAR_SCALE"}]}})


def make(target: str, tmp_path: Path, detect: bool = False,
         **env: str) -> subprocess.CompletedProcess:
    """Run `make target` in the repository with only `env` set, the package under tmp_path;
    the endpoint is taken as a cluster's unless `detect` lets the Makefile decide."""
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LC_ALL": "C.UTF-8",
               "COVERTYPE_HOME": str(tmp_path / "covertype"), **env}
    return subprocess.run(["make", target, f"PACKAGE={tmp_path / PACKAGE_NAME}",
                           *([] if detect else ["LOCAL_ENDPOINT="])], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=180)


def calls(api: RecordingKfpApi) -> list[tuple[str, str]]:
    return [(request.method, request.path) for request in api.requests]


def name_filter(request) -> str:
    """The name a list request filters on (the only filter the CLI sends)."""
    (predicate,) = json.loads(request.query["filter"][0])["predicates"]
    assert (predicate["key"], predicate["op"]) == ("name", 1)
    return predicate["stringValue"]


def sent_parameters(run_body: dict) -> dict[str, str]:
    parameters = run_body["pipeline_spec"]["parameters"]
    sent = {parameter["name"]: parameter["value"] for parameter in parameters}
    assert len(sent) == len(parameters), "a parameter was sent twice"
    return sent


def spec_of(workflow: dict) -> dict:
    return json.loads(workflow["metadata"]["annotations"]["pipelines.kubeflow.org/pipeline_spec"])


@pytest.fixture(scope="module")
def workflow(compiled_package: Path) -> dict:
    """The pipeline compiled by conftest (local images): what a KFP would hold after upload."""
    return yaml.safe_load(compiled_package.read_text())


@pytest.fixture
def api(tmp_path, monkeypatch):
    # A cluster's runs stage in gs://; the local API checks a run's gcs_root is in its storage,
    # which gs:// is when a storage emulator is configured (the runs never execute here).
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    with RecordingKfpApi(tmp_path / "kfp-home") as recording:
        yield recording


def test_upload_sends_the_compiled_package_under_pipeline_name(tmp_path, api, workflow):
    result = make("upload", tmp_path, INVERSE_PROXY_HOSTNAME=api.url, PROJECT_ID="demo-project")

    assert result.returncode == 0, result.stderr
    assert calls(api) == [HEALTHZ, ("GET", f"{API}/pipelines"),
                          ("POST", f"{API}/pipelines/upload")]
    assert name_filter(api.requests[1]) == PIPELINE_NAME
    upload = api.requests[2]
    assert upload.query == {"name": [PIPELINE_NAME]}
    assert upload.content_type.startswith("multipart/form-data; boundary=")
    filename, content = upload.form_file("uploadfile")
    assert filename == PACKAGE_NAME
    assert content == (tmp_path / PACKAGE_NAME).read_bytes()
    sent = yaml.safe_load(content)
    assert spec_of(sent)["name"] == spec_of(workflow)["name"] == "Covertype Classifier Training"
    assert sent["spec"]["arguments"] == workflow["spec"]["arguments"]
    text = content.decode()
    assert "gcr.io/demo-project/base_image:latest" in text
    assert "gcr.io/demo-project/trainer_image:latest" in text
    assert not LOCAL_IMAGE.search(text)
    (pipeline_id,) = api.pipelines
    assert f"Uploaded pipeline {PIPELINE_NAME}: pipeline id {pipeline_id}" in result.stdout


def test_a_second_upload_of_the_name_sends_a_new_version(tmp_path, api, workflow):
    pipeline_id = api.add_pipeline(PIPELINE_NAME, workflow)

    result = make("upload", tmp_path, INVERSE_PROXY_HOSTNAME=api.url, PROJECT_ID="demo",
                  PIPELINE_VERSION="nightly 2")

    assert result.returncode == 0, result.stderr
    assert calls(api) == [HEALTHZ, ("GET", f"{API}/pipelines"),
                          ("POST", f"{API}/pipelines/upload_version")]
    upload = api.requests[2]
    assert upload.query == {"name": ["nightly 2"], "pipelineid": [pipeline_id]}
    filename, content = upload.form_file("uploadfile")
    assert (filename, content) == (PACKAGE_NAME, (tmp_path / PACKAGE_NAME).read_bytes())
    assert f"Uploaded version nightly 2 of pipeline {PIPELINE_NAME}" in result.stdout
    assert api.pipelines == [pipeline_id]


@pytest.mark.parametrize("images", [{}, {"BASE_IMAGE": "gcr.io/demo-project/base_image:latest"}],
                         ids=["no-project", "trainer-image-still-local"])
def test_upload_refuses_a_package_naming_local_images(tmp_path, api, images):
    result = make("upload", tmp_path, INVERSE_PROXY_HOSTNAME=api.url, **images)

    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == LOCAL_IMAGES_ERROR.format(
        package=tmp_path / PACKAGE_NAME)
    assert LOCAL_IMAGE.search((tmp_path / PACKAGE_NAME).read_text())
    assert api.requests == []


def test_run_submits_every_parameter_to_the_named_pipeline(tmp_path, api, workflow):
    pipeline_id = api.add_pipeline(PIPELINE_NAME, workflow)

    result = make("run", tmp_path, INVERSE_PROXY_HOSTNAME=api.url, **CLOUD,
                  EVALUATION_METRIC_THRESHOLD="0.75", VERSION_ID="v02",
                  HYPERTUNE_SETTINGS=HYPERTUNE)

    assert result.returncode == 0, result.stderr
    (experiment_id,) = api.experiments
    (run_id,) = api.runs
    assert calls(api) == [
        HEALTHZ, ("GET", f"{API}/pipelines"), ("GET", f"{API}/experiments"),
        ("POST", f"{API}/experiments"), ("POST", f"{API}/runs"), ("GET", f"{API}/runs/{run_id}"),
    ]
    # What a security middleware checks: our own Host, JSON bodies where there is a body.
    assert {request.host for request in api.requests} == {f"127.0.0.1:{api.port}"}
    assert {request.content_type for request in api.requests
            if request.method == "POST"} == {"application/json"}
    _, pipelines, experiments, create_experiment, create_run, _ = api.requests
    assert name_filter(pipelines) == PIPELINE_NAME
    assert name_filter(experiments) == EXPERIMENT_NAME
    assert create_experiment.json() == {"name": EXPERIMENT_NAME, "resource_references": []}
    body = create_run.json()
    assert re.fullmatch(r"run-\d{8}-\d{6}", body["name"])
    assert body["pipeline_spec"]["pipeline_id"] == pipeline_id
    assert body["resource_references"] == [
        {"key": {"id": experiment_id, "type": "EXPERIMENT"}, "relationship": "OWNER"}]
    expected = {
        "project_id": "demo-project", "gcs_root": "gs://bucket/staging", "region": "us-central1",
        "source_table_name": "covertype_dataset.covertype", "dataset_id": "splits",
        "evaluation_metric_name": "accuracy", "evaluation_metric_threshold": "0.75",
        "model_id": "covertype_classifier", "version_id": "v02",
        "replace_existing_version": "True", "hypertune_settings": HYPERTUNE,
        "dataset_location": "US",
    }
    assert sent_parameters(body) == expected
    assert set(expected) == {parameter["name"] for parameter in spec_of(workflow)["inputs"]}
    assert run_id in result.stdout


def test_run_with_pipeline_id_reuses_the_experiment_and_sends_no_hypertune(
        tmp_path, api, workflow):
    pipeline_id = api.add_pipeline("uploaded by hand", workflow)
    experiment_id = api.add_experiment("nightly")

    result = make("run", tmp_path, INVERSE_PROXY_HOSTNAME=api.url, PROJECT_ID="demo-project",
                  ARTIFACT_STORE="gs://artifacts", PIPELINE_ID=pipeline_id,
                  EXPERIMENT_NAME="nightly", RUN_NAME="nightly-7")

    assert result.returncode == 0, result.stderr
    (run_id,) = api.runs
    assert calls(api) == [HEALTHZ, ("GET", f"{API}/experiments"), ("POST", f"{API}/runs"),
                          ("GET", f"{API}/runs/{run_id}")]
    body = api.requests[2].json()
    assert body["name"] == "nightly-7"
    assert body["pipeline_spec"]["pipeline_id"] == pipeline_id
    assert body["resource_references"][0]["key"]["id"] == experiment_id
    sent = sent_parameters(body)
    assert "hypertune_settings" not in sent
    assert sent["gcs_root"] == "gs://artifacts/staging"
    assert (sent["version_id"], sent["evaluation_metric_threshold"]) == ("v01", "0.69")


def test_run_quotes_values_and_leaves_out_empty_ones(tmp_path, api, workflow):
    pipeline_id = api.add_pipeline("Covertype's pipeline", workflow)
    settings = json.dumps({"hyperparameters": {"goal": "MAXIMIZE", "maxTrials": 2, "params": [
        {"parameterName": "note", "type": "CATEGORICAL", "categoricalValues": ["it's a *test*"]}]}})

    result = make("run", tmp_path, INVERSE_PROXY_HOSTNAME=api.url, **CLOUD,
                  PIPELINE_NAME="Covertype's pipeline", EXPERIMENT_NAME="Covertype runs",
                  RUN_NAME="first run", REGION="", HYPERTUNE_SETTINGS=settings)

    assert result.returncode == 0, result.stderr
    assert name_filter(api.requests[1]) == "Covertype's pipeline"
    assert api.requests[3].json()["name"] == "Covertype runs"
    body = api.requests[4].json()
    assert (body["name"], body["pipeline_spec"]["pipeline_id"]) == ("first run", pipeline_id)
    sent = sent_parameters(body)
    assert sent["hypertune_settings"] == settings
    assert "region" not in sent


def test_run_of_a_pipeline_never_uploaded_sends_no_run(tmp_path, api):
    result = make("run", tmp_path, INVERSE_PROXY_HOSTNAME=api.url, **CLOUD)

    assert result.returncode == 2
    assert "You must provide one of [package_file, pipeline_id, version]." in result.stderr
    assert calls(api) == [HEALTHZ, ("GET", f"{API}/pipelines")]


@pytest.mark.parametrize("endpoint", [
    "https://xxxx-dot-us-central1.pipelines.googleusercontent.com", "http://localhost.example:80",
    "https://127.0.0.1:8443"])
def test_only_http_127_0_0_1_or_localhost_is_the_local_endpoint(tmp_path, endpoint):
    upload = make("upload", tmp_path, detect=True, INVERSE_PROXY_HOSTNAME=endpoint)
    assert upload.returncode == 2
    assert upload.stderr.splitlines()[0] == LOCAL_IMAGES_ERROR.format(
        package=tmp_path / PACKAGE_NAME)
    run = make("run", tmp_path, detect=True, INVERSE_PROXY_HOSTNAME=endpoint)
    assert run.returncode == 2 and "PROJECT_ID is not set" in run.stderr


@pytest.mark.parametrize(("target", "missing"), [
    ("upload", "INVERSE_PROXY_HOSTNAME"),
    ("run", "INVERSE_PROXY_HOSTNAME"),
    ("run", "PROJECT_ID"),
    ("run", "GCS_STAGING_PATH"),
])
def test_cloud_targets_stop_without_their_settings(tmp_path, api, target, missing):
    settings = {"INVERSE_PROXY_HOSTNAME": api.url, **CLOUD}
    del settings[missing]

    result = make(target, tmp_path, **settings)

    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert re.fullmatch(rf"Makefile:\d+: \*\*\* {missing} is not set: .+\.  Stop\.", line)
    assert api.requests == []


@pytest.mark.parametrize("overrides, message", [
    ({"EVALUATION_METRIC_THRESHOLD": "high"}, "evaluation_metric_threshold 'high' is not a number"),
    ({"VERSION_ID": "v1;drop"}, "version_id 'v1;drop' is not an AI Platform name"),
    ({"HYPERTUNE_SETTINGS": "{'goal': True"}, "hypertune_settings is neither JSON nor a Python"),
    ({"PROJECT_ID": "demo"}, "project_id 'demo' is not a GCP project id"),
])
def test_run_refuses_bad_parameters_before_sending(tmp_path, api, workflow, overrides, message):
    api.add_pipeline("covertype_continuous_training", workflow)
    result = make("run", tmp_path, INVERSE_PROXY_HOSTNAME=api.url, **{**CLOUD, **overrides})
    assert result.returncode != 0
    assert result.stderr.splitlines()[0].startswith(f"error: {message}")
    assert api.requests == []

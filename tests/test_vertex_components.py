"""The Vertex AI components' launcher: request payloads, retries, waiting, errors.

Request bodies are built by small functions tested without HTTP. The flows run Google's own
client built from the packaged aiplatform v1 discovery document; until the local Vertex AI
stand-in is merged, its HTTP answers come from googleapiclient's HttpMockSequence (the only
fake, at the client boundary), with bodies shaped by the document (checked by vertex_shapes).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from vertex_api import (
    ARGS,
    CUSTOM_JOB,
    FILTER,
    LABELS,
    MODEL,
    NODE,
    PARENT,
    PROJECT,
    REGION,
    RUN,
    SERVING,
    STUDY,
    TRAINER,
    TUNING,
    TUNING_JOB,
    Api,
    job,
)
from vertex_shapes import problems

from pipeline import ml_client
from pipeline.vertex import deploy, jobs, launcher, train, tune
from pipeline.vertex.client import CUSTOM_JOBS, VertexClient, VertexError


@pytest.fixture(autouse=True)
def step(monkeypatch):
    """A step of a KFP run: run id and (retry-suffixed) node name, no emulator switch."""
    monkeypatch.setenv(jobs.RUN_ENV, RUN)
    monkeypatch.setenv(jobs.NODE_ENV, NODE + "(1)")
    monkeypatch.delenv(ml_client.VERTEX_EMULATOR_HOST_ENV, raising=False)


@pytest.fixture
def api(monkeypatch):
    return lambda *answers: Api(monkeypatch, list(answers))


# ---- the shape checker itself -------------------------------------------------------------

def test_the_shape_checker_finds_what_the_document_refuses():
    found = problems("HyperparameterTuningJob", {
        "maxTrialCount": "6", "studySpec": {"algorithm": "BAYES", "metricz": []},
        "trialJobSpec": {"workerPoolSpecs": [{"replicaCount": 1}]}, "labels": {"a": 1}})
    assert [problem.split(".", 1)[1] for problem in found] == [
        "maxTrialCount is '6', not an integer",
        "studySpec.algorithm is 'BAYES', not one of the enum",
        "studySpec.metricz is not a field",
        "trialJobSpec.workerPoolSpecs[0].replicaCount is 1, not a string (int64 is a JSON string)",
        "labels[a] is 1, not a string"]


# ---- identity -----------------------------------------------------------------------------

def test_every_attempt_of_a_step_has_the_same_identity():
    first = jobs.StepIdentity.from_env({jobs.RUN_ENV: RUN, jobs.NODE_ENV: NODE})
    retried = jobs.StepIdentity.from_env({jobs.RUN_ENV: RUN, jobs.NODE_ENV: NODE + "(3)"})

    assert first == retried
    assert retried.labels == LABELS
    assert retried.list_filter == FILTER
    assert retried.display_name == NODE


def test_a_run_id_becomes_a_valid_label_value():
    identity = jobs.StepIdentity("Run_2026.12/X", "w.t")
    assert identity.labels["kfp_run"] == "run_2026-12-x"


@pytest.mark.parametrize("missing", [jobs.RUN_ENV, jobs.NODE_ENV])
def test_a_step_without_its_identity_refuses_to_start(missing):
    env = {jobs.RUN_ENV: RUN, jobs.NODE_ENV: NODE, missing: ""}
    with pytest.raises(ValueError, match=f"^{missing} is not set, so a retried step could not "
                                         "find its own job"):
        jobs.StepIdentity.from_env(env)


# ---- request bodies -----------------------------------------------------------------------

def test_tuning_job_request():
    identity = jobs.StepIdentity(RUN, NODE)
    body = tune.tuning_job_request(identity, {"studySpec": STUDY, "maxTrialCount": 6,
                                              "parallelTrialCount": 3, "maxFailedTrialCount": 0},
                                   TRAINER, ARGS, "gs://b/jobdir/hypertune/r1", "n1-standard-4")

    assert body == {
        "displayName": NODE,
        "labels": LABELS,
        "studySpec": STUDY,
        "maxTrialCount": 6,
        "parallelTrialCount": 3,
        "maxFailedTrialCount": 0,
        "trialJobSpec": {
            "workerPoolSpecs": [{"machineSpec": {"machineType": "n1-standard-4"},
                                 "replicaCount": "1",
                                 "containerSpec": {"imageUri": TRAINER, "args": ARGS}}],
            "baseOutputDirectory": {"outputUriPrefix": "gs://b/jobdir/hypertune/r1"},
        },
    }
    assert problems("HyperparameterTuningJob", body) == []


def test_custom_job_request():
    body = train.custom_job_request(jobs.StepIdentity(RUN, NODE), TRAINER, ["--hptune", "False"],
                                    "gs://b/jobdir/r1", "n1-highmem-2")

    assert body == {
        "displayName": NODE,
        "labels": LABELS,
        "jobSpec": {
            "workerPoolSpecs": [{"machineSpec": {"machineType": "n1-highmem-2"},
                                 "replicaCount": "1",
                                 "containerSpec": {"imageUri": TRAINER,
                                                   "args": ["--hptune", "False"]}}],
            "baseOutputDirectory": {"outputUriPrefix": "gs://b/jobdir/r1"},
        },
    }
    assert problems("CustomJob", body) == []
    assert train.model_dir("gs://b/jobdir/r1/") == "gs://b/jobdir/r1/model"


def test_upload_and_deploy_requests():
    upload = deploy.upload_request(jobs.StepIdentity(RUN, NODE), "covertype_classifier", "v01",
                                   "gs://b/jobdir/r1/model", SERVING)
    resources = deploy.dedicated_resources("n1-standard-2", 1, 3)
    deployment = deploy.deploy_request(MODEL, "v01", resources)

    assert upload == {"model": {
        "displayName": "covertype_classifier",
        "description": "covertype_classifier v01",
        "artifactUri": "gs://b/jobdir/r1/model",
        "labels": LABELS,
        "containerSpec": {"imageUri": SERVING, "predictRoute": "/predict",
                          "healthRoute": "/health", "ports": [{"containerPort": 8080}]}}}
    assert deployment == {
        "deployedModel": {"model": MODEL, "displayName": "v01", "dedicatedResources": {
            "machineSpec": {"machineType": "n1-standard-2"}, "minReplicaCount": 1,
            "maxReplicaCount": 3}},
        "trafficSplit": {"0": 100}}
    assert problems("UploadModelRequest", upload) == []
    assert problems("DeployModelRequest", deployment) == []


# ---- tuning and custom jobs ---------------------------------------------------------------

def tune_inputs(**overrides) -> dict[str, str]:
    return {"project_id": PROJECT, "region": REGION, "worker_image_uri": TRAINER,
            "args": json.dumps(ARGS), "hypertune_settings": json.dumps(TUNING),
            "base_output_directory": "gs://b/jobdir/hypertune/r1", "wait_interval": "0",
            **overrides}


def test_a_tuning_step_creates_its_job_and_waits_for_it(api, capsys):
    vertex = api({}, job(TUNING_JOB, "JOB_STATE_QUEUED"), job(TUNING_JOB, "JOB_STATE_RUNNING"),
                 job(TUNING_JOB, "JOB_STATE_SUCCEEDED"))

    outputs = tune.hyperparameter_tuning_job(**tune_inputs())

    assert outputs == {"job_id": TUNING_JOB}
    path = f"/v1/{PARENT}/hyperparameterTuningJobs"
    assert vertex.calls == [
        ("GET", path, {"filter": FILTER}, None),
        ("POST", path, {}, {
            "displayName": NODE, "labels": LABELS, "studySpec": STUDY, "maxTrialCount": 6,
            "parallelTrialCount": 3, "maxFailedTrialCount": 0,
            "trialJobSpec": {
                "workerPoolSpecs": [{"machineSpec": {"machineType": "n1-standard-4"},
                                     "replicaCount": "1",
                                     "containerSpec": {"imageUri": TRAINER, "args": ARGS}}],
                "baseOutputDirectory": {"outputUriPrefix": "gs://b/jobdir/hypertune/r1"}}}),
        ("GET", f"/v1/{TUNING_JOB}", {}, None),
        ("GET", f"/v1/{TUNING_JOB}", {}, None),
    ]
    printed = capsys.readouterr().out
    assert f"{TUNING_JOB}: JOB_STATE_RUNNING" in printed


def test_a_retried_step_waits_for_its_earlier_job_instead_of_starting_another(api, capsys):
    vertex = api({"hyperparameterTuningJobs": [job(TUNING_JOB, "JOB_STATE_RUNNING")]},
                 job(TUNING_JOB, "JOB_STATE_SUCCEEDED"))

    assert tune.hyperparameter_tuning_job(**tune_inputs()) == {"job_id": TUNING_JOB}
    assert [method for method, *_ in vertex.calls] == ["GET", "GET"]  # no POST: no second job
    assert "started by an earlier attempt of this step" in capsys.readouterr().out


def test_a_retried_step_finds_its_finished_job_across_pages(api):
    other = f"{PARENT}/customJobs/1"
    vertex = api({"customJobs": [job(other, "JOB_STATE_FAILED")], "nextPageToken": "p2"},
                 {"customJobs": [job(CUSTOM_JOB, "JOB_STATE_SUCCEEDED")]})

    outputs = train.custom_job(project_id=PROJECT, region=REGION, worker_image_uri=TRAINER,
                               args="[]", base_output_directory="gs://b/jobdir/r1/",
                               wait_interval="0")

    assert outputs == {"job_id": CUSTOM_JOB, "model_dir": "gs://b/jobdir/r1/model"}
    assert [(method, query) for method, _, query, _ in vertex.calls] == [
        ("GET", {"filter": FILTER}), ("GET", {"filter": FILTER, "pageToken": "p2"})]


def test_a_retry_after_a_failed_job_starts_a_new_one(api, capsys):
    failed = f"{PARENT}/customJobs/1"
    vertex = api({"customJobs": [job(failed, "JOB_STATE_FAILED")]},
                 job(CUSTOM_JOB, "JOB_STATE_PENDING"), job(CUSTOM_JOB, "JOB_STATE_SUCCEEDED"))

    outputs = train.custom_job(project_id=PROJECT, region=REGION, worker_image_uri=TRAINER,
                               args="[]", base_output_directory="gs://b/jobdir/r1",
                               wait_interval="0")

    assert outputs["job_id"] == CUSTOM_JOB
    assert [method for method, *_ in vertex.calls] == ["GET", "POST", "GET"]
    assert f"not reusing {failed} of an earlier attempt: it is JOB_STATE_FAILED" in (
        capsys.readouterr().out)


@pytest.mark.parametrize(("state", "error", "expected"), [
    ("JOB_STATE_FAILED", {"code": 3, "message": "The replica workerpool0-0 exited with a "
                                                "non-zero status of 1.\nTermination reason: Error"},
     f"{CUSTOM_JOB} ended JOB_STATE_FAILED: The replica workerpool0-0 exited with a non-zero "
     "status of 1. Termination reason: Error; fix the cause (see the job's logs) and re-run the "
     "step"),
    ("JOB_STATE_CANCELLED", {"code": 1, "message": "CANCELED"},
     f"{CUSTOM_JOB} ended JOB_STATE_CANCELLED: CANCELED; it was cancelled; re-run the step to "
     "start a new job"),
    ("JOB_STATE_EXPIRED", None,
     f"{CUSTOM_JOB} ended JOB_STATE_EXPIRED: no error message; it expired before it ran; re-run "
     "the step to start a new job"),
])
def test_a_job_that_ends_badly_is_a_one_line_error(api, state, error, expected):
    ended = job(CUSTOM_JOB, state, **({"error": error} if error else {}))
    api({}, job(CUSTOM_JOB, "JOB_STATE_QUEUED"), ended)

    with pytest.raises(VertexError) as raised:
        train.custom_job(project_id=PROJECT, region=REGION, worker_image_uri=TRAINER, args="[]",
                         base_output_directory="gs://b/jobdir/r1", wait_interval="0")

    assert str(raised.value) == expected


def test_an_expired_wait_is_a_one_line_error_and_leaves_the_job_running(api):
    vertex = api(job(CUSTOM_JOB, "JOB_STATE_RUNNING"))
    client = VertexClient(PROJECT, REGION)
    waiting = jobs.Waiting(interval=0, deadline=time.monotonic() - 1, timeout=60)

    with pytest.raises(VertexError) as raised:
        jobs.wait_for_job(client, CUSTOM_JOBS, {"name": CUSTOM_JOB, "state": "JOB_STATE_QUEUED"},
                          waiting, log=lambda line: None)

    assert str(raised.value) == (
        f"{CUSTOM_JOB} is still JOB_STATE_QUEUED after the 60 s wait_timeout; it keeps running: "
        "re-run the step to wait for it again (a re-run finds it) or cancel it")
    assert vertex.calls == []  # no cancel, no further poll


def test_against_the_local_stand_in_polls_fast(monkeypatch):
    monkeypatch.setenv(ml_client.VERTEX_EMULATOR_HOST_ENV, "http://127.0.0.1:9")
    assert jobs.Waiting.start(30, 100).interval == jobs.EMULATOR_POLL_SECONDS
    monkeypatch.delenv(ml_client.VERTEX_EMULATOR_HOST_ENV)
    assert jobs.Waiting.start(30, 100).interval == 30


@pytest.mark.parametrize(("overrides", "message"), [
    ({"hypertune_settings": '{"hyperparameters": {"goal": "MAXIMIZE", "params": [], '
                            '"resumePreviousJobId": "j1"}}'},
     "hypertune_settings.hyperparameters.resumePreviousJobId has no Vertex AI equivalent"),
    ({"hypertune_settings": "{'hyperparameters': }"},
     "hypertune_settings is neither JSON nor a Python literal"),
    ({"args": '["--alpha", 0.1]'}, "args[1] is 0.1, not a string; quote every argument"),
    ({"project_id": "a/b"}, "project_id='a/b' is not an id"),
    ({"base_output_directory": "bucket/dir"}, "base_output_directory='bucket/dir' is not a "
                                              "folder URI; pass gs://bucket/folder"),
    ({"machine_type": "n1 standard"}, "machine_type='n1 standard' is not a Compute Engine "
                                      "machine type"),
    ({"wait_interval": "soon"}, "wait_interval='soon' is not a whole number in 0..3600"),
])
def test_bad_inputs_are_refused_before_any_call(api, overrides, message):
    vertex = api()

    with pytest.raises(ValueError) as raised:
        tune.hyperparameter_tuning_job(**tune_inputs(**overrides))

    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    assert vertex.calls == []


def test_api_errors_are_one_line_with_a_fix(api):
    api((403, {"error": {"code": 403, "status": "PERMISSION_DENIED", "message":
                         "Permission 'aiplatform.customJobs.list' denied on resource\n(or it "
                         "may not exist)."}}))

    with pytest.raises(VertexError) as raised:
        train.custom_job(project_id=PROJECT, region=REGION, worker_image_uri=TRAINER, args="",
                         base_output_directory="gs://b/jobdir/r1", wait_interval="0")

    assert str(raised.value) == (
        f"listing customJobs of {PARENT} failed: HTTP 403 Permission 'aiplatform.customJobs.list' "
        "denied on resource (or it may not exist).; grant the step's service account the Vertex "
        "AI User role and enable the Vertex AI API")


# ---- the launcher command line --------------------------------------------------------------

def test_the_launcher_writes_the_outputs_and_ui_metadata(api, tmp_path):
    api({}, job(CUSTOM_JOB, "JOB_STATE_SUCCEEDED"))
    out = tmp_path / "out"
    argv = ["--ui_metadata_path", str(out / "ui"), "custom_job",
            "--project_id", PROJECT, "--region", REGION, "--worker_image_uri", TRAINER,
            "--args", "[]", "--base_output_directory", "gs://b/jobdir/r1",
            "--wait_interval", "0",
            "--job_id_path", str(out / "job_id"), "--model_dir_path", str(out / "model_dir")]

    assert launcher.main(argv) == 0

    assert (out / "job_id").read_text() == CUSTOM_JOB
    assert (out / "model_dir").read_text() == "gs://b/jobdir/r1/model"
    metadata = json.loads((out / "ui").read_text())
    assert metadata["outputs"][0]["type"] == "markdown"
    assert f"| job_id | {CUSTOM_JOB} |" in metadata["outputs"][0]["source"]


@pytest.mark.parametrize(("argv", "message"), [
    (["custom_job"], "usage: python -m pipeline.vertex.launcher --ui_metadata_path PATH ACTION"),
    (["--ui_metadata_path", "u", "train"], "unknown action 'train'; use one of "
                                           "hyperparameter_tuning_job, custom_job, deploy_model"),
    (["--ui_metadata_path", "u", "custom_job", "--job_dir", "gs://b"],
     "custom_job has no input --job_dir; inputs: project_id, region,"),
    (["--ui_metadata_path", "u", "custom_job", "--project_id", "p", "--region", "r",
      "--worker_image_uri", "i", "--args", "[]", "--base_output_directory", "gs://b"],
     "custom_job needs --job_id_path"),
    (["--ui_metadata_path", "u", "custom_job", "--project_id"], "inputs must come as --name "
                                                                "value pairs"),
])
def test_the_launcher_refuses_a_bad_command_line_in_one_line(argv, message, tmp_path):
    result = subprocess.run([sys.executable, "-u", "-m", "pipeline.vertex.launcher", *argv],
                            capture_output=True, text=True, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no output written


def test_no_credentials_and_no_stand_in_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no gcloud application default credentials
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # not on Google Compute Engine

    with pytest.raises(VertexError) as raised:
        VertexClient(PROJECT, REGION)

    assert str(raised.value).startswith("no Google credentials for Vertex AI (")
    assert str(raised.value).endswith(
        "; run the step as a service account (Workload Identity, or USE_KFP_SA=True) or set "
        "VERTEX_AI_EMULATOR_HOST for the local stand-in")
    assert "\n" not in str(raised.value)

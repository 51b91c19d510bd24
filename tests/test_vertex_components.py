"""The Vertex AI job components (tuning job, custom job) and their launcher.

Request bodies are built by small functions tested without HTTP. The flows run the components
against the local Vertex AI stand-in (tests/vertex_api.py): real jobs of the real trainer on
2,000/500 bundled rows, on the same training core as local runs; the tests check the
components' outputs and what the stand-in holds afterwards (jobs, their labels, states, trials).
A few cases the stand-in cannot produce use recorded answers; those tests say why.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from vertex_api import (
    CUSTOM_JOB,
    FILTER,
    LABELS,
    NODE,
    PARENT,
    PROJECT,
    REGION,
    RUN,
    TRAINER,
    Recorded,
    conforms,
    job,
    label_filter,
    serve_stand_in,
    step_identity,
    write_datasets,
)

from pipeline import ml_client
from pipeline.errors import one_line
from pipeline.vertex import deploy, jobs, launcher, train, tune
from pipeline.vertex.client import CUSTOM_JOBS, TUNING_JOBS, VertexClient, VertexError

TUNING = {"hyperparameters": {
    "goal": "MAXIMIZE", "maxTrials": 2, "maxParallelTrials": 2,
    "hyperparameterMetricTag": "accuracy", "enableTrialEarlyStopping": True,
    "params": [{"parameterName": "max_iter", "type": "DISCRETE", "discreteValues": [5, 10]},
               {"parameterName": "alpha", "type": "DOUBLE", "minValue": 0.0001,
                "maxValue": 0.001, "scaleType": "UNIT_LINEAR_SCALE"}]}}
STUDY = {
    "metrics": [{"metricId": "accuracy", "goal": "MAXIMIZE"}],
    "parameters": [
        {"parameterId": "max_iter", "discreteValueSpec": {"values": [5, 10]},
         "scaleType": "UNIT_LINEAR_SCALE"},
        {"parameterId": "alpha", "doubleValueSpec": {"minValue": 0.0001, "maxValue": 0.001},
         "scaleType": "UNIT_LINEAR_SCALE"}],
    "algorithm": "ALGORITHM_UNSPECIFIED",
    "decayCurveStoppingSpec": {"useElapsedDuration": False},
}
ENDED = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    with serve_stand_in(tmp_path_factory.mktemp("home")) as running:
        yield running


@pytest.fixture(scope="module")
def datasets(stand_in) -> tuple[str, str]:
    return write_datasets(stand_in.storage / "datasets")


@pytest.fixture
def run(monkeypatch) -> str:
    """This test's KFP run: a fresh run id, so the stand-in's jobs of other tests never match."""
    monkeypatch.setenv(jobs.NODE_ENV, NODE + "(1)")  # an attempt after the first
    run_id = str(uuid.uuid4())
    monkeypatch.setenv(jobs.RUN_ENV, run_id)
    return run_id


def args(datasets: tuple[str, str], hptune: bool = True) -> list[str]:
    return ["--training_dataset_path", datasets[0], "--validation_dataset_path", datasets[1],
            "--hptune", str(hptune)]


def tune_inputs(stand_in, datasets, run: str, **overrides) -> dict[str, str]:
    return {"project_id": PROJECT, "region": REGION, "worker_image_uri": TRAINER,
            "args": json.dumps(args(datasets)), "hypertune_settings": json.dumps(TUNING),
            "base_output_directory": str(stand_in.storage / "jobdir" / "hypertune" / run),
            "wait_interval": "0", **overrides}


def train_inputs(stand_in, datasets, run: str, **overrides) -> dict[str, str]:
    return {"project_id": PROJECT, "region": REGION, "worker_image_uri": TRAINER,
            "args": json.dumps(args(datasets, hptune=False) + ["--alpha", "0.0005",
                                                               "--max_iter", "10"]),
            "base_output_directory": str(stand_in.storage / "jobdir" / run),
            "wait_interval": "0", **overrides}


def step_jobs(stand_in, kind: str, run: str) -> list[dict]:
    """The jobs of `kind` the stand-in holds for this test's step."""
    return stand_in.list(kind, label_filter({"kfp_run": run, "kfp_node": LABELS["kfp_node"]}))


def wait_until_ended(stand_in, name: str, timeout: float = 300) -> dict:
    """Wait for a job the test started on the side to end, so none outlives its test."""
    deadline = time.monotonic() + timeout
    while (found := stand_in.get(name))["state"] not in ENDED:
        assert time.monotonic() < deadline, f"{name} is still {found['state']}"
        time.sleep(0.2)
    return found


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
                                   TRAINER, ["--hptune", "True"], "gs://b/jobdir/hypertune/r1",
                                   "n1-standard-4")

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
                                 "containerSpec": {"imageUri": TRAINER,
                                                   "args": ["--hptune", "True"]}}],
            "baseOutputDirectory": {"outputUriPrefix": "gs://b/jobdir/hypertune/r1"},
        },
    }
    conforms("HyperparameterTuningJob", body)


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
    conforms("CustomJob", body)
    assert train.model_dir("gs://b/jobdir/r1/") == "gs://b/jobdir/r1/model"


def test_upload_and_deploy_requests():
    model = f"{PARENT}/models/42"
    upload = deploy.upload_request(jobs.StepIdentity(RUN, NODE), "covertype_classifier", "v01",
                                   "gs://b/jobdir/r1/model", "gcr.io/p/serving_image:latest")
    resources = deploy.dedicated_resources("n1-standard-2", 1, 3)
    deployment = deploy.deploy_request(model, "v01", resources)

    assert upload == {"model": {
        "displayName": "covertype_classifier",
        "description": "covertype_classifier v01",
        "artifactUri": "gs://b/jobdir/r1/model",
        "labels": LABELS,
        "containerSpec": {"imageUri": "gcr.io/p/serving_image:latest", "predictRoute": "/predict",
                          "healthRoute": "/health", "ports": [{"containerPort": 8080}]}}}
    assert deployment == {
        "deployedModel": {"model": model, "displayName": "v01", "dedicatedResources": {
            "machineSpec": {"machineType": "n1-standard-2"}, "minReplicaCount": 1,
            "maxReplicaCount": 3}},
        "trafficSplit": {"0": 100}}
    conforms("UploadModelRequest", upload)
    conforms("DeployModelRequest", deployment)


# ---- tuning and custom jobs on the stand-in -----------------------------------------------

def test_a_tuning_step_runs_its_job_to_the_end(stand_in, datasets, run, capsys):
    outputs = tune.hyperparameter_tuning_job(**tune_inputs(stand_in, datasets, run))

    [found] = step_jobs(stand_in, TUNING_JOBS, run)
    assert outputs == {"job_id": found["name"]}
    assert found["name"].startswith(f"{PARENT}/hyperparameterTuningJobs/")
    assert found["state"] == "JOB_STATE_SUCCEEDED"
    assert (found["displayName"], found["labels"]) == (NODE, {**LABELS, "kfp_run": run})
    assert found["studySpec"] == STUDY
    assert (found["maxTrialCount"], found["parallelTrialCount"]) == (2, 2)
    assert found["trialJobSpec"]["workerPoolSpecs"][0]["containerSpec"] == {
        "imageUri": TRAINER, "args": args(datasets)}
    assert [trial["state"] for trial in found["trials"]] == ["SUCCEEDED", "SUCCEEDED"]
    for trial in found["trials"]:
        [metric] = trial["finalMeasurement"]["metrics"]
        assert metric["metricId"] == "accuracy" and 0 < metric["value"] < 1
    printed = capsys.readouterr().out
    assert f"created {found['name']} (JOB_STATE_QUEUED)" in printed
    assert f"{found['name']}: JOB_STATE_SUCCEEDED" in printed


def test_a_retried_tuning_step_waits_for_the_job_of_the_attempt_that_died(stand_in, datasets,
                                                                          run, tmp_path, capsys):
    """Argo retries a step whose pod died while it waited: the retry finds the job and waits."""
    inputs = tune_inputs(stand_in, datasets, run)
    argv = [sys.executable, "-u", "-m", "pipeline.vertex.launcher", "--ui_metadata_path",
            os.devnull, "hyperparameter_tuning_job",
            *(part for name, value in inputs.items() for part in (f"--{name}", value)),
            "--job_id_path", os.devnull]
    log = tmp_path / "first-attempt.log"
    with open(log, "wb") as stream:
        first = subprocess.Popen(argv, env={**os.environ, jobs.NODE_ENV: NODE}, stdout=stream,
                                 stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not step_jobs(stand_in, TUNING_JOBS, run):
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)  # the pod is gone, its job is not
        first.wait()

    outputs = tune.hyperparameter_tuning_job(**inputs)  # attempt (1), as Argo names it

    [found] = step_jobs(stand_in, TUNING_JOBS, run)
    assert outputs == {"job_id": found["name"]} and found["state"] == "JOB_STATE_SUCCEEDED"
    assert f"found {found['name']} (" in capsys.readouterr().out
    assert len(found["trials"]) == 2


def test_a_finished_step_run_again_reuses_its_job(stand_in, datasets, run, capsys):
    """A step retried after its job succeeded (e.g. its pod failed at the end) starts none."""
    inputs = train_inputs(stand_in, datasets, run)
    first = train.custom_job(**inputs)
    capsys.readouterr()

    again = train.custom_job(**inputs)

    [found] = step_jobs(stand_in, CUSTOM_JOBS, run)
    assert first == again == {"job_id": found["name"],
                              "model_dir": f"{inputs['base_output_directory']}/model"}
    assert (f"found {found['name']} (JOB_STATE_SUCCEEDED) started by an earlier attempt of this "
            "step; waiting for it instead of starting another") in capsys.readouterr().out


def test_the_launcher_runs_a_custom_job_and_writes_its_outputs(stand_in, datasets, run,
                                                               tmp_path):
    inputs = train_inputs(stand_in, datasets, run)
    out = tmp_path / "out"
    argv = ["--ui_metadata_path", str(out / "ui"), "custom_job",
            *(part for name, value in inputs.items() for part in (f"--{name}", value)),
            "--job_id_path", str(out / "job_id"), "--model_dir_path", str(out / "model_dir")]

    assert launcher.main(argv) == 0

    [found] = step_jobs(stand_in, CUSTOM_JOBS, run)
    assert found["state"] == "JOB_STATE_SUCCEEDED"
    assert (out / "job_id").read_text() == found["name"]
    model_dir = f"{inputs['base_output_directory']}/model"
    assert (out / "model_dir").read_text() == model_dir
    assert os.path.isfile(f"{model_dir}/model.pkl")  # the trainer wrote it in AIP_MODEL_DIR
    metadata = json.loads((out / "ui").read_text())
    assert metadata["outputs"][0]["type"] == "markdown"
    assert f"| job_id | {found['name']} |" in metadata["outputs"][0]["source"]


def test_a_failed_job_is_one_line_with_its_message_and_a_retry_starts_anew(
        stand_in, datasets, run, tmp_path, capsys):
    missing = tmp_path / "later" / "training.csv"
    inputs = train_inputs(stand_in, datasets, run,
                          args=json.dumps(["--training_dataset_path", str(missing),
                                           "--validation_dataset_path", datasets[1],
                                           "--hptune", "False"]))

    with pytest.raises(VertexError) as raised:
        train.custom_job(**inputs)

    [failed] = step_jobs(stand_in, CUSTOM_JOBS, run)
    assert failed["state"] == "JOB_STATE_FAILED"
    message = failed["error"]["message"]
    assert message.startswith("The replica workerpool0-0 exited with a non-zero status of 1")
    assert str(missing) in message
    assert str(raised.value) == (f"{failed['name']} ended JOB_STATE_FAILED: {one_line(message)}; "
                                 "fix the cause (see the job's logs) and re-run the step")
    assert "\n" not in str(raised.value)

    missing.parent.mkdir()  # the cause fixed, Argo retries the step
    missing.write_bytes(Path(datasets[0]).read_bytes())
    outputs = train.custom_job(**inputs)

    states = {item["name"]: item["state"] for item in step_jobs(stand_in, CUSTOM_JOBS, run)}
    assert states == {failed["name"]: "JOB_STATE_FAILED",
                      outputs["job_id"]: "JOB_STATE_SUCCEEDED"}
    assert (f"not reusing {failed['name']} of an earlier attempt: it is JOB_STATE_FAILED"
            in capsys.readouterr().out)


def test_a_failed_trial_does_not_fail_the_step(stand_in, datasets, run):
    """maxFailedTrials 0 lets the service decide; the job goes on and the trial keeps why."""
    settings = {"hyperparameters": {
        "goal": "MAXIMIZE", "maxTrials": 2, "maxParallelTrials": 2, "algorithm": "GRID_SEARCH",
        "hyperparameterMetricTag": "accuracy",
        "params": [{"parameterName": "max_iter", "type": "DISCRETE", "discreteValues": [0, 5]}]}}

    outputs = tune.hyperparameter_tuning_job(**tune_inputs(
        stand_in, datasets, run, hypertune_settings=json.dumps(settings)))

    [found] = step_jobs(stand_in, TUNING_JOBS, run)
    assert outputs == {"job_id": found["name"]} and found["state"] == "JOB_STATE_SUCCEEDED"
    trials = {trial["parameters"][0]["value"]: trial for trial in found["trials"]}
    assert (trials[0]["state"], trials[5]["state"]) == ("INFEASIBLE", "SUCCEEDED")
    assert "--max_iter=0 must be >= 1" in trials[0]["infeasibleReason"]
    assert "finalMeasurement" not in trials[0] and "finalMeasurement" in trials[5]


def test_a_tuning_job_whose_trials_fail_is_one_line_with_its_message(stand_in, datasets, run):
    settings = {"hyperparameters": {
        "goal": "MAXIMIZE", "maxTrials": 1, "maxParallelTrials": 1, "algorithm": "GRID_SEARCH",
        "hyperparameterMetricTag": "accuracy",
        "params": [{"parameterName": "max_iter", "type": "DISCRETE", "discreteValues": [0]}]}}

    with pytest.raises(VertexError) as raised:
        tune.hyperparameter_tuning_job(**tune_inputs(stand_in, datasets, run,
                                                     hypertune_settings=json.dumps(settings)))

    [failed] = step_jobs(stand_in, TUNING_JOBS, run)
    assert failed["state"] == "JOB_STATE_FAILED"
    [trial] = failed["trials"]
    assert trial["state"] == "INFEASIBLE"
    assert trial["parameters"] == [{"parameterId": "max_iter", "value": 0}]
    assert "--max_iter=0 must be >= 1" in trial["infeasibleReason"]
    message = failed["error"]["message"]
    assert "--max_iter=0 must be >= 1" in message
    assert str(raised.value) == (f"{failed['name']} ended JOB_STATE_FAILED: {one_line(message)}; "
                                 "fix the cause (see the job's logs) and re-run the step")


@pytest.mark.parametrize(("state", "error", "expected"), [
    ("JOB_STATE_CANCELLED", {"code": 1, "message": "CANCELED"},
     f"{CUSTOM_JOB} ended JOB_STATE_CANCELLED: CANCELED; it was cancelled; re-run the step to "
     "start a new job"),
    ("JOB_STATE_EXPIRED", None,
     f"{CUSTOM_JOB} ended JOB_STATE_EXPIRED: no error message; it expired before it ran; re-run "
     "the step to start a new job"),
])
def test_a_job_cancelled_or_expired_while_waited_for_is_a_one_line_error(monkeypatch, state,
                                                                          error, expected):
    """Recorded answers: the stand-in never expires a job (Vertex AI does when it cannot
    schedule one in time), and a cancel that lands while the step waits would race the local
    job's own end."""
    step_identity(monkeypatch, RUN, NODE + "(1)")
    ended = job(CUSTOM_JOB, state, **({"error": error} if error else {}))
    Recorded(monkeypatch, [{}, job(CUSTOM_JOB, "JOB_STATE_QUEUED"), ended])

    with pytest.raises(VertexError) as raised:
        train.custom_job(project_id=PROJECT, region=REGION, worker_image_uri=TRAINER, args="[]",
                         base_output_directory="gs://b/jobdir/r1", wait_interval="0")

    assert str(raised.value) == expected


def test_an_expired_wait_is_a_one_line_error_and_leaves_the_job_running(stand_in, datasets,
                                                                        run):
    client = VertexClient(PROJECT, REGION)
    identity = jobs.StepIdentity.from_env()
    inputs = train_inputs(stand_in, datasets, run)
    created = client.create_job(CUSTOM_JOBS, train.custom_job_request(
        identity, TRAINER, json.loads(inputs["args"]), inputs["base_output_directory"],
        "n1-standard-4"))
    waiting = jobs.Waiting(interval=0, deadline=time.monotonic() - 1, timeout=60)

    with pytest.raises(VertexError) as raised:
        jobs.wait_for_job(client, CUSTOM_JOBS, created, waiting, log=lambda line: None)

    assert str(raised.value) == (
        f"{created['name']} is still {created['state']} after the 60 s wait_timeout; it keeps "
        "running: re-run the step to wait for it again (a re-run finds it) or cancel it")
    # Not cancelled: it runs to its end, and a re-run of the step would find it.
    assert wait_until_ended(stand_in, created["name"])["state"] == "JOB_STATE_SUCCEEDED"
    assert jobs.own_job(client, CUSTOM_JOBS, identity)["name"] == created["name"]


def test_a_retried_step_finds_its_finished_job_across_pages(monkeypatch):
    """Recorded answers: the stand-in answers a list in one page unless asked for a pageSize
    (as Vertex AI does below its page size), which the components never set."""
    step_identity(monkeypatch, RUN, NODE + "(1)")
    other = f"{PARENT}/customJobs/1"
    vertex = Recorded(monkeypatch, [
        {"customJobs": [job(other, "JOB_STATE_FAILED")], "nextPageToken": "p2"},
        {"customJobs": [job(CUSTOM_JOB, "JOB_STATE_SUCCEEDED")]}])

    outputs = train.custom_job(project_id=PROJECT, region=REGION, worker_image_uri=TRAINER,
                               args="[]", base_output_directory="gs://b/jobdir/r1/",
                               wait_interval="0")

    assert outputs == {"job_id": CUSTOM_JOB, "model_dir": "gs://b/jobdir/r1/model"}
    assert [(method, query) for method, _, query, _ in vertex.calls] == [
        ("GET", {"filter": FILTER}), ("GET", {"filter": FILTER, "pageToken": "p2"})]


def test_against_the_local_stand_in_polls_fast(monkeypatch):
    monkeypatch.setenv(ml_client.VERTEX_EMULATOR_HOST_ENV, "http://127.0.0.1:9")
    assert jobs.Waiting.start(30, 100).interval == 0.1  # against the stand-in
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
def test_bad_inputs_are_refused_before_any_call(stand_in, datasets, run, overrides, message):
    before = stand_in.list(TUNING_JOBS)

    with pytest.raises(ValueError) as raised:
        tune.hyperparameter_tuning_job(**tune_inputs(stand_in, datasets, run, **overrides))

    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    assert stand_in.list(TUNING_JOBS) == before


def test_a_job_the_stand_in_refuses_is_one_line_with_its_message(stand_in, datasets, run,
                                                                 tmp_path):
    """The stand-in, like Vertex AI, refuses an output folder its jobs may not write to."""
    outside = tmp_path / "outside"
    with pytest.raises(VertexError) as raised:
        train.custom_job(**train_inputs(stand_in, datasets, run,
                                        base_output_directory=str(outside)))

    text = str(raised.value)
    assert text.startswith(f"creating a CustomJob in {PARENT} failed: HTTP 400 ")
    assert f"{outside}" in text and "outside the project's storage" in text
    assert text.endswith("; fix the request named above") and "\n" not in text
    assert step_jobs(stand_in, CUSTOM_JOBS, run) == [] and not outside.exists()


def test_a_missing_job_is_one_line_with_the_fix(stand_in):
    name = f"{PARENT}/customJobs/123456789"
    with pytest.raises(VertexError) as raised:
        VertexClient(PROJECT, REGION).get_job(CUSTOM_JOBS, name)

    text = str(raised.value)
    assert text.startswith(f"getting {name} failed: HTTP 404 ") and "\n" not in text
    assert text.endswith("; check project_id, region and the resource name")


def test_api_errors_are_one_line_with_a_fix(monkeypatch):
    """Recorded answer: the stand-in has no permissions to deny (HTTP 403)."""
    step_identity(monkeypatch, RUN, NODE)
    Recorded(monkeypatch, [(403, {"error": {
        "code": 403, "status": "PERMISSION_DENIED", "message":
        "Permission 'aiplatform.customJobs.list' denied on resource\n(or it may not exist)."}})])

    with pytest.raises(VertexError) as raised:
        train.custom_job(project_id=PROJECT, region=REGION, worker_image_uri=TRAINER, args="",
                         base_output_directory="gs://b/jobdir/r1", wait_interval="0")

    assert str(raised.value) == (
        f"listing customJobs of {PARENT} failed: HTTP 403 Permission 'aiplatform.customJobs.list' "
        "denied on resource (or it may not exist).; grant the step's service account the Vertex "
        "AI User role and enable the Vertex AI API")


# ---- the launcher command line --------------------------------------------------------------

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
    monkeypatch.delenv(ml_client.VERTEX_EMULATOR_HOST_ENV, raising=False)
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

"""Local Vertex AI training over real HTTP: Google's aiplatform v1 client, the emulator, trials.

Every response is checked against the aiplatform v1 discovery document (tests/discovery_schema).
Trials run the real trainer (trainer_image/train.py) on 2,000/500 rows of the bundled data, on
the same training core as the ml v1 jobs.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from discovery_schema import assert_conforms
from googleapiclient.errors import HttpError

from pipeline import discovery
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.home import jobs_dir
from pipeline.local.vertex_training import _custom_job, _tuning_job
from pipeline.ml_client import (
    EMULATOR_HOST_ENV,
    VERTEX_EMULATOR_HOST_ENV,
    aiplatform_service,
    ml_service,
)

DOC = discovery.document("aiplatform", "v1")
REGION = "us-central1"
PARENT = f"projects/local/locations/{REGION}"
IMAGE = "us-docker.pkg.dev/local/covertype/trainer_image:latest"
TERMINAL = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")
ALPHA = {"parameterId": "alpha", "doubleValueSpec": {"minValue": 0.0001, "maxValue": 0.001},
         "scaleType": "UNIT_LOG_SCALE"}
MAX_ITER = {"parameterId": "max_iter", "discreteValueSpec": {"values": [5, 10]}}


def _conforms(schema: str, value: object) -> None:
    assert_conforms(DOC, schema if schema.startswith("Google") else
                    f"GoogleCloudAiplatformV1{schema}", value)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, Path]]:
    """One emulator over a fresh home for the module: (aiplatform v1 client, home)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch, EmulatorServer(home=home) as server:
        patch.setenv("COVERTYPE_HOME", str(home))
        patch.setenv(VERTEX_EMULATOR_HOST_ENV, server.url)
        patch.setenv(EMULATOR_HOST_ENV, server.url)
        yield aiplatform_service(REGION), home


def _pool(datasets: tuple[str, str], *extra: str, hptune: bool = True) -> dict:
    return {"machineSpec": {"machineType": "n1-standard-4"}, "replicaCount": 1,
            "containerSpec": {"imageUri": IMAGE, "args": [
                "--training_dataset_path", datasets[0], "--validation_dataset_path",
                datasets[1], "--hptune", str(hptune), *extra]}}


def _tuning(datasets: tuple[str, str], output: Path, *parameters: dict, trials: int = 2,
            parallel: int = 2, **fields: object) -> dict:
    study = {"metrics": [{"metricId": "accuracy", "goal": "MAXIMIZE"}],
             "parameters": list(parameters)}
    study.update(fields.pop("study", {}))
    return {"displayName": "tune", "maxTrialCount": trials, "parallelTrialCount": parallel,
            "studySpec": study,
            "trialJobSpec": {"workerPoolSpecs": [_pool(datasets, f"--job-dir={output}")],
                             "baseOutputDirectory": {"outputUriPrefix": str(output)}},
            **fields}


def _custom(datasets: tuple[str, str], output: Path, *extra: str, **fields: object) -> dict:
    return {"displayName": "train", "jobSpec": {
        "workerPoolSpecs": [_pool(datasets, f"--job-dir={output}/model/", *extra,
                                  hptune=False)],
        "baseOutputDirectory": {"outputUriPrefix": str(output)}}, **fields}


def _jobs(ai: object, kind: str) -> object:
    return getattr(ai.projects().locations(), kind)()


def _create(ai: object, kind: str, body: dict) -> dict:
    job = _jobs(ai, kind).create(parent=PARENT, body=body).execute()
    _conforms(kind[0].upper() + kind[1:-1], job)
    return job


def _wait(ai: object, kind: str, name: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = _jobs(ai, kind).get(name=name).execute()
        _conforms(kind[0].upper() + kind[1:-1], job)
        if job["state"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"{name} still {job['state']}"
        time.sleep(0.1)


def _error(raised: pytest.ExceptionInfo) -> tuple[int, dict]:
    return raised.value.resp.status, json.loads(raised.value.content)["error"]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_tuning_job_runs_trials_in_parallel(emulator, datasets) -> None:
    ai, home = emulator
    body = _tuning(datasets, home / "gcs" / "out" / "bayes", ALPHA, MAX_ITER, trials=4, parallel=2,
                   labels={"kfp-run": "run-1"})
    job = _create(ai, "hyperparameterTuningJobs", body)
    assert job["state"] == "JOB_STATE_QUEUED" and job["labels"] == {"kfp-run": "run-1"}
    prefix, job_id = job["name"].rsplit("/", 1)
    assert prefix == f"{PARENT}/hyperparameterTuningJobs" and job_id.isdigit()
    assert job["trialJobSpec"]["workerPoolSpecs"][0]["replicaCount"] == "1"  # int64 as string
    job = _wait(ai, "hyperparameterTuningJobs", job["name"])
    assert job["state"] == "JOB_STATE_SUCCEEDED", job.get("error")
    assert _time(job["createTime"]) <= _time(job["startTime"]) <= _time(job["endTime"])
    assert [trial["id"] for trial in job["trials"]] == ["1", "2", "3", "4"]
    for trial in job["trials"]:
        assert trial["state"] == "SUCCEEDED"
        values = {p["parameterId"]: p["value"] for p in trial["parameters"]}
        assert values["max_iter"] in (5, 10) and 0.0001 <= values["alpha"] <= 0.001
        measurement = trial["finalMeasurement"]
        assert measurement["stepCount"].isdigit() and 1 <= int(measurement["stepCount"]) <= 10
        [metric] = measurement["metrics"]
        assert metric["metricId"] == "accuracy" and 0 < metric["value"] <= 1
    edges = sorted([(_time(t["startTime"]), 1) for t in job["trials"]]
                   + [(_time(t["endTime"]), -1) for t in job["trials"]])
    running = [sum(step for _, step in edges[:index + 1]) for index in range(len(edges))]
    assert max(running) == 2
    folder = jobs_dir(home) / job_id  # the shared training core's folder
    line = json.loads((folder / "trial-3.metrics").read_text().splitlines()[-1])
    assert line["trial"] == "3"  # CLOUD_ML_TRIAL_ID reached the trainer
    assert "--alpha=" in (folder / "trial-3.log").read_text() or line["accuracy"]
    # one core, two surfaces: the ml v1 surface does not list Vertex AI jobs
    assert all(j["jobId"] != job_id for j in ml_service().projects().jobs().list(
        parent="projects/local").execute().get("jobs", []))


def test_output_directories_follow_the_documented_layout(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # gs:// is storage then
    pool = {"machineSpec": {"machineType": "n1-standard-4"}, "replicaCount": "1",
            "containerSpec": {"imageUri": IMAGE, "env": [{"name": "MODE", "value": "x"}]}}
    _, task = _custom_job({"displayName": "t", "jobSpec": {
        "workerPoolSpecs": [pool], "baseOutputDirectory": {"outputUriPrefix": "gs://b/out/"}}},
        tmp_path)
    assert task.env == {"MODE": "x", "AIP_MODEL_DIR": "gs://b/out/model/",
                        "AIP_CHECKPOINT_DIR": "gs://b/out/checkpoints/",
                        "AIP_TENSORBOARD_LOG_DIR": "gs://b/out/logs/"}
    _, task = _tuning_job({"displayName": "t", "maxTrialCount": 2, "parallelTrialCount": 1,
                           "studySpec": {"metrics": [{"metricId": "m", "goal": "MINIMIZE"}],
                                         "parameters": [MAX_ITER]},
                           "trialJobSpec": {"workerPoolSpecs": [pool], "baseOutputDirectory": {
                               "outputUriPrefix": "gs://b/hp"}}}, tmp_path)
    assert task.env == {"MODE": "x"}
    assert task.trial_env("7") == {"AIP_MODEL_DIR": "gs://b/hp/7/model/",
                                   "AIP_CHECKPOINT_DIR": "gs://b/hp/7/checkpoints/",
                                   "AIP_TENSORBOARD_LOG_DIR": "gs://b/hp/7/logs/"}
    assert (task.tuning.goal, task.tuning.metric_tag, task.tuning.max_trials) == (
        "MINIMIZE", "m", 2)


def test_failing_trial_is_infeasible_and_tuning_goes_on(emulator, datasets) -> None:
    ai, home = emulator
    alphas = {"parameterId": "alpha", "discreteValueSpec": {"values": [-1, 0.0001]}}
    body = _tuning(datasets, home / "gcs" / "out" / "crash", alphas,
                   study={"algorithm": "GRID_SEARCH"})
    job = _wait(ai, "hyperparameterTuningJobs",
                _create(ai, "hyperparameterTuningJobs", body)["name"])
    assert job["state"] == "JOB_STATE_SUCCEEDED" and "error" not in job
    bad, good = sorted(job["trials"], key=lambda t: t["parameters"][0]["value"])
    assert good["state"] == "SUCCEEDED" and "finalMeasurement" in good
    assert bad["state"] == "INFEASIBLE" and "finalMeasurement" not in bad
    assert bad["parameters"] == [{"parameterId": "alpha", "value": -1}]
    assert bad["infeasibleReason"].startswith("exited with status 1: ")
    assert "--alpha=-1 must be a finite number > 0" in bad["infeasibleReason"]


def test_job_fails_once_max_failed_trial_count_is_reached(emulator, datasets) -> None:
    ai, home = emulator
    alphas = {"parameterId": "alpha", "discreteValueSpec": {"values": [-3, -2, -1]}}
    body = _tuning(datasets, home / "gcs" / "out" / "maxfailed", alphas, trials=3, parallel=1,
                   maxFailedTrialCount=2, study={"algorithm": "GRID_SEARCH"})
    job = _wait(ai, "hyperparameterTuningJobs",
                _create(ai, "hyperparameterTuningJobs", body)["name"])
    assert job["state"] == "JOB_STATE_FAILED"
    assert job["error"]["code"] == 3
    assert job["error"]["message"].startswith("2 trials failed, reaching maxFailedTrialCount=2")
    assert "\n" not in job["error"]["message"]
    assert [t["state"] for t in job["trials"]] == ["INFEASIBLE", "INFEASIBLE"]


def test_custom_job_trains_the_model(emulator, datasets) -> None:
    ai, home = emulator
    output = home / "gcs" / "out" / "final"
    job = _create(ai, "customJobs", _custom(datasets, output, "--alpha=0.0005",
                                            "--max_iter=10"))
    job = _wait(ai, "customJobs", job["name"])
    assert job["state"] == "JOB_STATE_SUCCEEDED", job.get("error")
    assert (output / "model" / "model.pkl").stat().st_size > 0
    assert "trials" not in job and job["displayName"] == "train"


def test_failed_custom_job_carries_its_own_error(emulator, datasets) -> None:
    ai, home = emulator
    job = _create(ai, "customJobs", _custom(datasets, home / "gcs" / "out" / "bad", "--alpha=-1"))
    job = _wait(ai, "customJobs", job["name"])
    assert job["state"] == "JOB_STATE_FAILED" and job["error"]["code"] == 3
    message = job["error"]["message"]
    assert message.startswith("The replica workerpool0-0 exited with a non-zero status of 1. ")
    assert "--alpha=-1 must be a finite number > 0" in message and "\n" not in message


def test_cancel_stops_the_running_trials(emulator, datasets, monkeypatch) -> None:
    ai, home = emulator
    monkeypatch.setenv("COVERTYPE_COLD", "1")  # a cold trial lasts long enough
    body = _tuning(datasets, home / "gcs" / "out" / "cancel", MAX_ITER, trials=3, parallel=1)
    name = _create(ai, "hyperparameterTuningJobs", body)["name"]
    jobs = _jobs(ai, "hyperparameterTuningJobs")
    while not jobs.get(name=name).execute().get("trials"):
        time.sleep(0.05)
    assert jobs.cancel(name=name, body={}).execute() == {}
    job = _wait(ai, "hyperparameterTuningJobs", name, timeout=15)
    assert job["state"] == "JOB_STATE_CANCELLED"
    assert job["error"] == {"code": 1, "message": "cancelled by a hyperparameterTuningJobs."
                                                  "cancel request"}
    assert job["trials"][-1]["state"] == "INFEASIBLE" and len(job["trials"]) < 3
    with pytest.raises(HttpError) as raised:
        jobs.cancel(name=name, body={}).execute()
    status, error = _error(raised)
    assert (status, error["status"]) == (400, "FAILED_PRECONDITION")
    assert "already CANCELLED" in error["message"]


def test_list_filters_by_labels_and_pages(emulator, datasets) -> None:
    ai, home = emulator
    jobs = _jobs(ai, "customJobs")
    names = {}
    for run, node in (("run-a", "train"), ("run-a", "other"), ("run-b", "train")):
        body = _custom(datasets, home / "gcs" / "out" / "list", "--alpha=-1",
                       labels={"kfp-run": run, "kfp-node": node}, displayName=f"{run} {node}")
        names[run, node] = _create(ai, "customJobs", body)["name"]
    listed = jobs.list(parent=PARENT, filter='labels.kfp-run="run-a" AND labels.kfp-node=train'
                       ).execute()
    _conforms("ListCustomJobsResponse", listed)
    assert [job["name"] for job in listed["customJobs"]] == [names["run-a", "train"]]
    listed = jobs.list(parent=PARENT, filter='display_name="run-b train"').execute()
    assert [job["name"] for job in listed["customJobs"]] == [names["run-b", "train"]]
    assert jobs.list(parent=PARENT, filter='labels.kfp-run="run-c"').execute() == {}
    for name in names.values():
        _wait(ai, "customJobs", name)
    failed = jobs.list(parent=PARENT, filter='state="JOB_STATE_FAILED" AND labels.kfp-run=run-a'
                       ).execute()
    assert len(failed["customJobs"]) == 2
    everything = jobs.list(parent=PARENT).execute()["customJobs"]
    request, seen = jobs.list(parent=PARENT, pageSize=2), []
    while request is not None:
        response = request.execute()
        _conforms("ListCustomJobsResponse", response)
        assert len(response["customJobs"]) == 2 or "nextPageToken" not in response
        seen += response["customJobs"]
        request = jobs.list_next(request, response)
    assert seen == everything and len(everything) >= 5
    assert [job["createTime"] for job in seen] == sorted((job["createTime"] for job in seen),
                                                          reverse=True)
    for text in ('display_name:"run"', 'labels.kfp-run="a" OR labels.kfp-run="b"',
                 'create_time>"2026-01-01T00:00:00Z"', "NOT display_name=x"):
        with pytest.raises(HttpError) as raised:
            jobs.list(parent=PARENT, filter=text).execute()
        status, error = _error(raised)
        assert (status, error["status"]) == (400, "INVALID_ARGUMENT")
        assert error["message"] == (f"filter {text!r} is not supported locally; use "
                                    'display_name="..." state="..." labels.KEY="VALUE" terms '
                                    "joined by AND")


def _bad_tuning(change: dict) -> dict:
    body = copy.deepcopy(_tuning(("t.csv", "v.csv"), Path("/tmp/unused"), ALPHA, trials=2,
                                 parallel=1))
    for path, value in change.items():
        target = body
        *keys, last = path
        for key in keys:
            target = target[key]
        target[last] = value
    return body


POOL = ("trialJobSpec", "workerPoolSpecs", 0)
BAD_TUNING_JOBS = [
    ({("parallelTrialCount",): 3}, "parallelTrialCount (3) exceeds maxTrialCount (2); lower "
                                   "parallelTrialCount or raise maxTrialCount"),
    ({("studySpec", "algorithm"): "GRID_SEARCH"},
     "GRID_SEARCH cannot search DOUBLE parameter 'alpha'; make it DISCRETE with "
     "discreteValueSpec.values or use another algorithm"),
    ({("studySpec", "parameters", 0, "doubleValueSpec"): {"minValue": 0, "maxValue": 1}},
     "studySpec parameter 'alpha' uses UNIT_LOG_SCALE with minValue 0; log scales need "
     "minValue > 0"),
    ({("studySpec", "metrics"): []}, "hyperparameterTuningJob.studySpec.metrics has 0 metrics"),
    ({("studySpec", "metrics", 0, "goal"): "GOAL_TYPE_UNSPECIFIED"},
     "hyperparameterTuningJob.studySpec.metrics[0].goal is 'GOAL_TYPE_UNSPECIFIED'; set it to "
     "MAXIMIZE or MINIMIZE"),
    ({("studySpec", "parameters", 0, "integerValueSpec"): {"minValue": "1", "maxValue": "2"}},
     "hyperparameterTuningJob.studySpec.parameters[0] needs exactly one of doubleValueSpec"),
    ({("studySpec", "parameters", 0, "conditionalParameterSpecs"): [{}]},
     "studySpec.parameters[0].conditionalParameterSpecs is not supported locally"),
    ({("studySpec", "measurementSelectionType"): "BEST_MEASUREMENT"},
     "measurementSelectionType BEST_MEASUREMENT is not supported locally"),
    ({("maxTrialCount",): "many"}, "hyperparameterTuningJob.maxTrialCount must be an integer"),
    ({("displayName",): ""}, "hyperparameterTuningJob.displayName is required"),
    ({("labels",): {"Run": "a"}}, "hyperparameterTuningJob.labels key 'Run' is invalid"),
    ({("bestTrial",): "1"}, "unknown field 'bestTrial' in hyperparameterTuningJob; use the "
                            "aiplatform v1 field names of HyperparameterTuningJob"),
    ({("trialJobSpec", "workerPoolSpecs"): [{}, {"replicaCount": "2"}]},
     "workerPoolSpecs[1] is set: distributed training (several worker pools) cannot run"),
    ({(*POOL, "replicaCount"): 2}, "workerPoolSpecs[0].replicaCount is '2'; the first worker "
                                   "pool runs exactly one replica"),
    ({(*POOL, "pythonPackageSpec"): {"executorImageUri": "x"}},
     "workerPoolSpecs[0].pythonPackageSpec is not supported locally"),
    ({(*POOL, "machineSpec"): {"machineType": "a2", "acceleratorCount": 1}},
     "machineSpec.acceleratorCount is not supported locally (no accelerators locally)"),
    ({(*POOL, "machineSpec"): {}}, "workerPoolSpecs[0].machineSpec.machineType is required"),
    ({(*POOL, "containerSpec", "command"): ["python"]},
     "containerSpec.command is not supported locally"),
    ({(*POOL, "containerSpec", "args"): "--alpha 1"},
     "containerSpec.args must be a list of strings"),
    ({("trialJobSpec", "scheduling"): {"timeout": "60s"}},
     "trialJobSpec.scheduling is not supported locally"),
    ({("trialJobSpec", "baseOutputDirectory"): {"outputUriPrefix": "s3://bucket/out"}},
     "baseOutputDirectory.outputUriPrefix 's3://bucket/out' is a URL; use a folder under "),
]


@pytest.mark.parametrize(("change", "message"), BAD_TUNING_JOBS)
def test_bad_jobs_are_invalid_argument(emulator, change, message) -> None:
    ai, home = emulator
    before = sorted(jobs_dir(home).glob("*"))
    with pytest.raises(HttpError) as raised:
        _jobs(ai, "hyperparameterTuningJobs").create(parent=PARENT,
                                                     body=_bad_tuning(change)).execute()
    status, error = _error(raised)
    assert (status, error["code"], error["status"]) == (400, 400, "INVALID_ARGUMENT")
    assert message in error["message"] and "\n" not in error["message"]
    assert sorted(jobs_dir(home).glob("*")) == before


def test_unknown_jobs_are_not_found(emulator) -> None:
    ai, _ = emulator
    jobs = _jobs(ai, "customJobs")
    for name in (f"{PARENT}/customJobs/123", f"{PARENT}/customJobs/abc",
                 "projects/other/locations/us-central1/customJobs/123"):
        with pytest.raises(HttpError) as raised:
            jobs.get(name=name).execute()
        status, error = _error(raised)
        assert (status, error) == (404, {"code": 404, "status": "NOT_FOUND",
                                         "message": error["message"]})
        assert error["message"].startswith(f"{name} not found")
    existing = jobs.list(parent=PARENT).execute()["customJobs"][0]["name"]
    moved = existing.replace(REGION, "europe-west4")
    with pytest.raises(HttpError) as raised:  # the same id in another location
        jobs.get(name=moved).execute()
    assert _error(raised)[0] == 404


def test_interrupted_job_ends_failed_on_restart(tmp_path, datasets, monkeypatch) -> None:
    """Stopping the emulator stops a running Vertex AI job; a fresh one fails a dead owner's."""
    monkeypatch.setenv("COVERTYPE_HOME", str(tmp_path))
    with EmulatorServer(home=tmp_path) as server:
        monkeypatch.setenv(VERTEX_EMULATOR_HOST_ENV, server.url)
        ai = aiplatform_service(REGION)
        body = _tuning(datasets, tmp_path / "gcs" / "out", MAX_ITER, trials=2, parallel=1)
        name = _create(ai, "hyperparameterTuningJobs", body)["name"]
        while _jobs(ai, "hyperparameterTuningJobs").get(name=name).execute()["state"] != (
                "JOB_STATE_RUNNING"):
            time.sleep(0.05)
    path = jobs_dir(tmp_path) / name.rsplit("/", 1)[1] / "job.json"
    record = json.loads(path.read_text())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    record.update(state="RUNNING", owner={"pid": int(dead.stdout), "startTicks": None})
    record.pop("error")
    path.write_text(json.dumps(record))
    with EmulatorServer(home=tmp_path) as server:
        monkeypatch.setenv(VERTEX_EMULATOR_HOST_ENV, server.url)
        job = _wait(aiplatform_service(REGION), "hyperparameterTuningJobs", name)
    assert job["state"] == "JOB_STATE_FAILED" and job["error"]["code"] == 10
    assert job["error"]["message"].startswith("interrupted: the local training service")

"""The run browser shows a Vertex AI run (tuning trials, metric, endpoint, deployed model).

The tuning job and the endpoint are real: made through Google's aiplatform v1 client against
the emulator (responses checked against the discovery document), the trials run the real
trainer. The run records name them the way the Vertex AI pipeline's steps output them.
"""
from __future__ import annotations

import pickle
import re
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from discovery_schema import assert_conforms

from pipeline import discovery, schema
from pipeline.local import records
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.home import runs_dir
from pipeline.local.records import RunRecord, RunStore, StepRecord
from pipeline.ml_client import VERTEX_EMULATOR_HOST_ENV, aiplatform_service
from pipeline.trainer import load_trainer

REPO = Path(__file__).resolve().parents[1]
DOC = discovery.document("aiplatform", "v1")
PARENT = "projects/local/locations/us-central1"
DONE_ID, RUNNING_ID = "20261203-070000-vvvvvv", "20261203-080000-wwwwww"
STEPS = ("tune-hyperparameters", "retrieve-best-run", "train-final-model", "evaluate-model",
         "deploy-model")
POOL = {"machineSpec": {"machineType": "n1-standard-4"}, "replicaCount": "1",
        "containerSpec": {"imageUri": "local/trainer_image", "args": []}}


def _tuning_job(ai: object, datasets: tuple[str, str], output: Path) -> dict:
    pool = {**POOL, "containerSpec": {"imageUri": "local/trainer_image", "args": [
        "--training_dataset_path", datasets[0], "--validation_dataset_path", datasets[1],
        "--hptune", "True", f"--job-dir={output}"]}}
    body = {"displayName": "tune", "maxTrialCount": 3, "parallelTrialCount": 3,
            "studySpec": {"metrics": [{"metricId": "accuracy", "goal": "MAXIMIZE"}],
                          "parameters": [{"parameterId": "alpha", "discreteValueSpec": {
                              "values": [-1, 0.0001, 0.001]}}], "algorithm": "GRID_SEARCH"},
            "trialJobSpec": {"workerPoolSpecs": [pool],
                             "baseOutputDirectory": {"outputUriPrefix": str(output)}}}
    jobs = ai.projects().locations().hyperparameterTuningJobs()
    name = jobs.create(parent=PARENT, body=body).execute()["name"]
    deadline = time.monotonic() + 60
    while (job := jobs.get(name=name).execute())["state"] not in (
            "JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert_conforms(DOC, "GoogleCloudAiplatformV1HyperparameterTuningJob", job)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job.get("error")
    return job


def _deployment(ai: object, folder: Path) -> tuple[str, str]:
    locations = ai.projects().locations()
    model = locations.models().upload(parent=PARENT, body={"model": {
        "displayName": "covertype", "artifactUri": str(folder),
        "containerSpec": {"imageUri": "server"}}}).execute()["response"]["model"]
    endpoint = locations.endpoints().create(parent=PARENT, body={
        "displayName": "covertype_classifier"}).execute()["response"]["name"]
    operation = locations.endpoints().deployModel(endpoint=endpoint, body={
        "deployedModel": {"model": model, "displayName": "v01", "dedicatedResources": {
            "machineSpec": {"machineType": "n1-standard-2"}, "minReplicaCount": 1}},
        "trafficSplit": {"0": 100}}).execute()
    assert_conforms(DOC, "GoogleLongrunningOperation", operation)
    return endpoint, operation["response"]["deployedModel"]["id"]


# What the DAG engine records of each step: the component it runs and its role (roles.py).
COMPONENTS = {"tune-hyperparameters": ("vertex/hyperparameter_tuning_job", "tuning"),
              "train-final-model": ("vertex/custom_job", "training"),
              "evaluate-model": ("", "evaluation"),
              "deploy-model": ("vertex/deploy_model", "deploy")}


def _record(run_id: str, status: str, step_status: str) -> RunRecord:
    steps = {name: StepRecord(name=name, template=name, status=step_status,
                              dependencies=[STEPS[index - 1]] if index else [],
                              component=COMPONENTS.get(name, ("", ""))[0],
                              role=COMPONENTS.get(name, ("", ""))[1])
             for index, name in enumerate(STEPS)}
    return RunRecord(run_id, "covertype-classifier-training", "p.yaml",
                     {"project_id": "local", "evaluation_metric_threshold": "0.69"},
                     status=status, start="2026-12-03T07:00:00.000Z", steps=steps)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """A finished Vertex AI run and a running one, over real jobs and a real endpoint."""
    home = tmp_path_factory.mktemp("vertex-browser")
    rows = pd.read_csv(REPO / "data" / "covertype.csv.gz", nrows=2500,
                       dtype={name: str for name in schema.CATEGORICAL_COLUMNS})
    train_csv, validation_csv = home / "train.csv", home / "validation.csv"
    rows.iloc[:2000].to_csv(train_csv, index=False)
    rows.iloc[2000:].to_csv(validation_csv, index=False)
    trainer = load_trainer()
    model = trainer.build_model().fit(trainer.model_input(rows), rows[schema.LABEL_COLUMN])
    (home / "gcs" / "model").mkdir(parents=True)
    (home / "gcs" / "model" / "model.pkl").write_bytes(pickle.dumps(model))
    with pytest.MonkeyPatch.context() as patch, EmulatorServer(home=home) as server:
        patch.setenv("COVERTYPE_HOME", str(home))
        patch.setenv(VERTEX_EMULATOR_HOST_ENV, server.url)
        ai = aiplatform_service("us-central1")
        datasets = (str(train_csv), str(validation_csv))
        job = _tuning_job(ai, datasets, home / "gcs" / "jobdir" / "hypertune" / DONE_ID)
        running_job = _tuning_job(ai, datasets,
                                  home / "gcs" / "jobdir" / "hypertune" / RUNNING_ID)
        endpoint, deployed_id = _deployment(ai, home / "gcs" / "model")
        store = RunStore(runs_dir(home))
        done = _record(DONE_ID, records.SUCCEEDED, records.SUCCEEDED)
        done.steps["tune-hyperparameters"].outputs["tune-hyperparameters-job_id"] = job["name"]
        done.steps["evaluate-model"].outputs["evaluate-model-metric_value"] = "0.7"
        done.steps["deploy-model"].outputs.update({
            "deploy-model-endpoint_name": endpoint,
            "deploy-model-deployed_model_id": deployed_id})
        store.save(done)
        running = _record(RUNNING_ID, records.RUNNING, records.PENDING)
        running.steps["tune-hyperparameters"].status = records.RUNNING
        store.save(running)
        yield server.url, job, running_job, endpoint, deployed_id


def test_vertex_run_page_shows_trials_and_deployment(site) -> None:
    url, job, _, endpoint, deployed_id = site
    html = httpx.get(f"{url}/runs/{DONE_ID}").text
    assert f"Job <code>{job['name']}</code> JOB_STATE_SUCCEEDED" in html
    assert "goal <b>MAXIMIZE</b> accuracy (higher is better)" in html
    assert re.findall(r'<tr id="trial-(\d+)"', html) == ["1", "2", "3"]
    values = {t["id"]: t["finalMeasurement"]["metrics"][0]["value"]
              for t in job["trials"] if t["state"] == "SUCCEEDED"}
    best = max(values, key=values.get)
    assert f'<tr id="trial-{best}" class="best">' in html
    assert f"best trial {best}: <b>{values[best]:.4f}</b>" in html
    infeasible = next(t["id"] for t in job["trials"] if t["state"] == "INFEASIBLE")
    row = html.split(f'<tr id="trial-{infeasible}"')[1].split("</tr>")[0]
    assert "INFEASIBLE" in row and ">-1<" in row
    card = html.split('id="card-deployment"')[1].split('<div class="card"')[0]
    assert f'id="deployed-endpoint">endpoint <code>{endpoint}</code>' in card
    assert f"deployed model <code>{deployed_id}</code> (v01, model" in card
    assert "100% of the traffic" in card
    listing = httpx.get(url + "/").text
    assert f"<code>{endpoint}</code>" in listing.split(f'id="run-{DONE_ID}"')[1]


def test_running_vertex_run_finds_its_job_by_output_folder(site) -> None:
    url, _, running_job, _, _ = site
    html = httpx.get(f"{url}/runs/{RUNNING_ID}").text
    assert f"Job <code>{running_job['name']}</code>" in html
    assert re.findall(r'<tr id="trial-(\d+)"', html) == ["1", "2", "3"]

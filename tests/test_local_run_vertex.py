"""`covertype run --local` of the PLATFORM=vertex package end to end.

The Vertex AI components (pipeline/vertex) run as the compiled package's steps against the
local Vertex AI stand-in, which the runner points them at with VERTEX_AI_EMULATOR_HOST; the
model ends up deployed on a local endpoint that `covertype serve` answers. What the run left
behind is read back through Google's aiplatform v1 client and checked against the discovery
document.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from discovery_schema import assert_conforms
from serve_process import covertype_serve
from test_local_run import ROWS, covertype, only_run

from pipeline import discovery, schema
from pipeline.local.emulator.server import EmulatorServer
from pipeline.local.run_local import package_platform, run_parameters
from pipeline.local.summary import RunSummary
from pipeline.local.tuning_jobs import tuning_job
from pipeline.local.workflow import Workflow
from pipeline.ml_client import VERTEX_EMULATOR_HOST_ENV, aiplatform_service
from pipeline.vertex.jobs import StepIdentity

DOC = discovery.document("aiplatform", "v1")
PARENT = "projects/local/locations/us-central1"
UNTRANSLATABLE = json.dumps({"hyperparameters": {
    "goal": "MAXIMIZE", "hyperparameterMetricTag": "accuracy", "maxTrials": 2,
    "maxParallelTrials": 2, "resumePreviousJobId": "hptune_earlier",
    "params": [{"parameterName": "max_iter", "type": "DISCRETE", "discreteValues": [5, 10]}]}})


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, compiled_vertex_package) -> tuple[Path, subprocess.CompletedProcess]:
    home = tmp_path_factory.mktemp("home")
    result = covertype(home, "run", "--local", "--package", str(compiled_vertex_package),
                       "--rows", ROWS)
    return home, result


@pytest.fixture(scope="module")
def stand_in(deployed):
    """What the run left in the stand-in, read with Google's client: {collection: [resources]}.

    Every resource is checked against its schema in the discovery document.
    """
    home, _ = deployed
    with pytest.MonkeyPatch.context() as patch, EmulatorServer(home) as server:
        patch.setenv("COVERTYPE_HOME", str(home))
        patch.setenv(VERTEX_EMULATOR_HOST_ENV, server.url)
        locations = aiplatform_service("us-central1").projects().locations()
        found = {}
        for collection, kind in (("hyperparameterTuningJobs", "HyperparameterTuningJob"),
                                 ("customJobs", "CustomJob"), ("models", "Model"),
                                 ("endpoints", "Endpoint")):
            answer = getattr(locations, collection)().list(parent=PARENT).execute()
            assert_conforms(DOC, f"GoogleCloudAiplatformV1List{kind}sResponse", answer)
            found[collection] = answer.get(collection, [])
    return found


def test_end_to_end_deploys_to_a_local_endpoint(deployed, stand_in):
    home, result = deployed
    assert result.returncode == 0, result.stdout + result.stderr
    record = only_run(home)
    assert {step.status for step in record.steps.values()} == {"Succeeded"}
    summary = RunSummary.of(record, tuning_job(record, home)[0])
    assert re.fullmatch(rf"{PARENT}/endpoints/\d+", summary.deployed_endpoint)
    assert re.fullmatch(r"\d+", summary.deployed_model_id)
    assert summary.deployed_version is None and summary.not_deployed_reason is None
    assert (f"Deployed: endpoint {summary.deployed_endpoint}, deployed model "
            f"{summary.deployed_model_id}") in result.stdout
    assert f"POST /v1/{summary.deployed_endpoint}:predict" in result.stdout

    labels = {"kfp_run": record.run_id}
    [tuning] = stand_in["hyperparameterTuningJobs"]
    [training] = stand_in["customJobs"]
    [model] = stand_in["models"]
    [endpoint] = stand_in["endpoints"]
    for step, resource in (("tune-hyperparameters", tuning), ("train-final-model", training),
                           ("deploy-model", model)):
        node = StepIdentity(record.run_id, f"{record.run_id}.{step}")
        assert resource["labels"] == {**labels, "kfp_node": node.labels["kfp_node"]}, step
    assert tuning["state"] == training["state"] == "JOB_STATE_SUCCEEDED"
    assert tuning["name"] == record.steps["tune-hyperparameters"].outputs[
        "tune-hyperparameters-job_id"]
    trials = tuning["trials"]
    assert len(trials) == 6 and {trial["state"] for trial in trials} == {"SUCCEEDED"}
    best = max(trials, key=lambda trial: trial["finalMeasurement"]["metrics"][0]["value"])
    values = {item["parameterId"]: item["value"] for item in best["parameters"]}
    assert float(summary.best_trial["alpha"]) == values["alpha"]
    assert int(summary.best_trial["max_iter"]) == values["max_iter"]

    model_dir = home / "gcs" / "staging" / "jobdir" / record.run_id / "model"
    assert (model_dir / "model.pkl").is_file()
    assert model["artifactUri"] == str(model_dir)
    assert endpoint["name"] == summary.deployed_endpoint
    assert endpoint["displayName"] == "covertype_classifier"
    [serving] = endpoint["deployedModels"]
    assert (serving["id"], serving["model"], serving["displayName"]) == (
        summary.deployed_model_id, model["name"], "v01")
    assert endpoint["trafficSplit"] == {serving["id"]: 100}


def test_covertype_serve_answers_the_endpoint_as_the_model_was_evaluated(deployed):
    """The summary's predict route on `covertype serve` scores the testing split as evaluated."""
    home, _ = deployed
    summary = RunSummary.of(only_run(home))
    testing = schema.read_dataset(str(home / "gcs/staging/datasets/testing/data.csv"))
    body = {"instances": json.loads(testing[list(schema.FEATURE_COLUMNS)].to_json(
        orient="values"))}
    with covertype_serve(home, startup_s=120) as served:
        answer = httpx.post(f"{served.url}/v1/{summary.deployed_endpoint}:predict",
                            content=json.dumps(body), timeout=120,
                            headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert_conforms(DOC, "GoogleCloudAiplatformV1PredictResponse", answer.json())
    assert answer.json()["deployedModelId"] == summary.deployed_model_id
    predictions = answer.json()["predictions"]
    accuracy = (testing[schema.LABEL_COLUMN].to_numpy() == predictions).mean()
    assert accuracy == pytest.approx(summary.metric_value, abs=1e-12)


def test_runs_list_and_show_name_the_endpoint(deployed):
    home, _ = deployed
    record = only_run(home)
    summary = RunSummary.of(record)
    endpoint_id = summary.deployed_endpoint.rsplit("/", 1)[1]
    listed = covertype(home, "runs", "list")
    assert listed.returncode == 0
    [row] = [line for line in listed.stdout.splitlines() if record.run_id in line]
    assert f"us-central1/endpoints/{endpoint_id} {summary.deployed_model_id}" in row
    shown = covertype(home, "runs", "show", record.run_id)
    assert shown.returncode == 0
    assert (f"Deployed: endpoint {summary.deployed_endpoint}, deployed model "
            f"{summary.deployed_model_id}") in shown.stdout


def test_the_package_says_its_platform(compiled_package, compiled_vertex_package):
    assert package_platform(Workflow.load(compiled_vertex_package)) == "vertex"
    assert package_platform(Workflow.load(compiled_package)) == "caip"


def test_tuning_settings_are_checked_for_the_packages_platform(
        home, compiled_package, compiled_vertex_package):
    overrides = {"hypertune_settings": UNTRANSLATABLE}
    run_parameters(Workflow.load(compiled_package), overrides, home)  # AI Platform takes it
    with pytest.raises(ValueError, match="^hypertune_settings.hyperparameters.resumePreviousJobId "
                                         "has no Vertex AI equivalent"):
        run_parameters(Workflow.load(compiled_vertex_package), overrides, home)


def test_untranslatable_tuning_settings_fail_before_the_first_step(tmp_path,
                                                                   compiled_vertex_package):
    home = tmp_path / "home"
    result = covertype(home, "run", "--local", "--package", str(compiled_vertex_package),
                       "--param", f"hypertune_settings={UNTRANSLATABLE}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "covertype: error: hypertune_settings.hyperparameters.resumePreviousJobId has no "
        "Vertex AI equivalent"), result.stderr
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())
    assert not (home / "warehouse.duckdb").exists()

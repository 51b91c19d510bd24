"""retrieve_best_run on a Vertex AI HyperparameterTuningJob (its resource name as job_id).

The main cases read real tuning jobs of the local Vertex AI stand-in (tests/vertex_api.py):
grid searches whose trials run the real trainer on 2,000/500 bundled rows, one trial of each
failing (max_iter=0, which the trainer refuses) so it ends INFEASIBLE. Jobs the stand-in never
returns (odd trials, malformed studies, a job caught running) are recorded answers shaped by
the discovery document.
"""
from __future__ import annotations

import os
import sys
import time

import pytest
from kfp.components import func_to_container_op
from vertex_api import (
    PARENT,
    PROJECT,
    TRAINER,
    Recorded,
    conforms,
    serve_stand_in,
    write_datasets,
)

from pipeline import helper_components, ml_client

ENDED = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")
JOB = "projects/123456789/locations/europe-west4/hyperparameterTuningJobs/8812"
URI = f"https://europe-west4-aiplatform.googleapis.com/v1/{JOB}?alt=json"


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    with serve_stand_in(tmp_path_factory.mktemp("home")) as running:
        yield running


def grid_search(stand_in, goal: str, max_iters: list[int]) -> dict:
    """Run a grid search over `max_iters` on the stand-in to its end; the finished job."""
    datasets = write_datasets(stand_in.storage / "datasets")
    body = {
        "displayName": f"grid-{goal.lower()}",
        "studySpec": {"metrics": [{"metricId": "accuracy", "goal": goal}],
                      "parameters": [{"parameterId": "max_iter",
                                      "discreteValueSpec": {"values": max_iters}},
                                     {"parameterId": "alpha",
                                      "discreteValueSpec": {"values": [0.0005]}}],
                      "algorithm": "GRID_SEARCH"},
        "maxTrialCount": len(max_iters), "parallelTrialCount": len(max_iters),
        "trialJobSpec": {
            "workerPoolSpecs": [{"machineSpec": {"machineType": "n1-standard-4"},
                                 "replicaCount": "1", "containerSpec": {
                                     "imageUri": TRAINER, "args": [
                                         "--training_dataset_path", datasets[0],
                                         "--validation_dataset_path", datasets[1],
                                         "--hptune", "True"]}}],
            "baseOutputDirectory": {"outputUriPrefix": str(
                stand_in.storage / "jobdir" / f"grid-{goal.lower()}-{len(max_iters)}")}},
    }
    name = stand_in.create("hyperparameterTuningJobs", body)["name"]
    deadline = time.monotonic() + 300
    while (job := stand_in.get(name))["state"] not in ENDED:
        assert time.monotonic() < deadline, f"{name} is still {job['state']}"
        time.sleep(0.2)
    return job


@pytest.fixture(scope="module")
def maximized(stand_in) -> dict:
    return grid_search(stand_in, "MAXIMIZE", [0, 5, 10])


def succeeded(job: dict) -> dict[float, dict[str, float]]:
    """{final accuracy: parameters} of the job's SUCCEEDED trials."""
    return {trial["finalMeasurement"]["metrics"][0]["value"]:
            {item["parameterId"]: item["value"] for item in trial["parameters"]}
            for trial in job["trials"] if trial["state"] == "SUCCEEDED"}


def test_picks_the_best_succeeded_trial_and_skips_the_failed_one(maximized, capsys):
    states = sorted(trial["state"] for trial in maximized["trials"])
    assert (maximized["state"], states) == ("JOB_STATE_SUCCEEDED",
                                            ["INFEASIBLE", "SUCCEEDED", "SUCCEEDED"])
    scores = succeeded(maximized)
    best = max(scores)

    outputs = helper_components.retrieve_best_run(PROJECT, maximized["name"])

    assert outputs == (best, scores[best]["alpha"], scores[best]["max_iter"])
    assert isinstance(outputs.max_iter, int)
    assert (f"Best trial of {maximized['name']} (MAXIMIZE, 2 of 3 trials usable)"
            in capsys.readouterr().out)


def test_minimize_picks_the_lowest(stand_in):
    job = grid_search(stand_in, "MINIMIZE", [0, 5, 10])
    scores = succeeded(job)
    lowest = min(scores)

    assert helper_components.retrieve_best_run(PROJECT, job["name"]) == (
        lowest, scores[lowest]["alpha"], scores[lowest]["max_iter"])


def test_a_failed_job_is_a_one_line_error_with_its_message(stand_in):
    job = grid_search(stand_in, "MAXIMIZE", [0])
    assert job["state"] == "JOB_STATE_FAILED"

    with pytest.raises(ValueError) as error:
        helper_components.retrieve_best_run(PROJECT, job["name"])

    message = " ".join(job["error"]["message"].split())
    assert str(error.value) == (
        f"job {job['name']} is JOB_STATE_FAILED ({message}), not JOB_STATE_SUCCEEDED; wait for "
        "it to finish or fix its failure and re-run the tuning step")


def test_a_missing_job_names_the_job_and_the_fix(stand_in):
    name = f"{PARENT}/hyperparameterTuningJobs/404404404"

    with pytest.raises(RuntimeError) as error:
        helper_components.retrieve_best_run(PROJECT, name)

    text = str(error.value)
    assert text.startswith(f"getting job {name} failed: HTTP 404 ") and "\n" not in text
    assert text.endswith("; check project_id and job_id (the tuning step's job_id output)")


def test_the_component_program_writes_the_same_outputs(maximized, monkeypatch, tmp_path):
    container = func_to_container_op(helper_components.retrieve_best_run).component_spec \
        .implementation.container
    assert container.args[:4:2] == ["--project-id", "--job-id"]
    outputs = {name: tmp_path / name / "data" for name in ("metric_value", "alpha", "max_iter")}
    program = container.command[3]
    best = max(succeeded(maximized))

    # The program runs in this process, against the stand-in.
    monkeypatch.setattr(sys, "argv", ["retrieve_best_run", "--project-id", PROJECT, "--job-id",
                                      maximized["name"], "----output-paths",
                                      *map(str, outputs.values())])
    exec(compile(program, "retrieve_best_run", "exec"), {"__name__": "__main__"})

    written = {name: path.read_text() for name, path in outputs.items()}
    assert written == {"metric_value": str(best),
                       "alpha": str(succeeded(maximized)[best]["alpha"]),
                       "max_iter": str(int(succeeded(maximized)[best]["max_iter"]))}
    assert sorted(os.listdir(tmp_path)) == ["alpha", "max_iter", "metric_value"]


# ---- recorded answers: jobs the stand-in never returns ------------------------------------

def trial(ident: str, value: float | None, alpha=0.0005, max_iter=500, state="SUCCEEDED",
          metric="accuracy") -> dict:
    body = {"id": ident, "state": state,
            "parameters": [{"parameterId": "alpha", "value": alpha},
                           {"parameterId": "max_iter", "value": max_iter}],
            "startTime": "2026-12-01T10:00:00Z", "endTime": "2026-12-01T10:02:00Z"}
    if value is not None:
        body["finalMeasurement"] = {"stepCount": "9",
                                    "metrics": [{"metricId": metric, "value": value}]}
    return body


def tuning_job(trials: list, goal="MAXIMIZE", state="JOB_STATE_SUCCEEDED", **extra) -> dict:
    body = {
        "name": JOB, "displayName": "covertype.tune-hyperparameters", "state": state,
        "studySpec": {"metrics": [{"metricId": "accuracy", "goal": goal}],
                      "parameters": [
                          {"parameterId": "max_iter", "discreteValueSpec": {"values": [500, 1000]}},
                          {"parameterId": "alpha",
                           "doubleValueSpec": {"minValue": 0.0001, "maxValue": 0.001}}]},
        "maxTrialCount": 6, "parallelTrialCount": 3, "trials": trials, **extra}
    conforms("HyperparameterTuningJob", body)
    return body


@pytest.fixture
def recorded(monkeypatch):
    """Answer hyperparameterTuningJobs.get with one recorded job; return the recorder."""
    return lambda body: Recorded(monkeypatch, [body])


def test_trials_the_stand_in_never_returns_are_skipped(recorded, capsys):
    """Recorded: a SUCCEEDED trial without the study's metric, an ACTIVE trial with a measured
    value, an INFEASIBLE one with a final measurement, and a non-finite value."""
    vertex = recorded(tuning_job([
        trial("1", 0.70, 0.0001, 500),
        trial("2", 0.74, 0.00075, 1000.0),
        trial("3", 0.99, 0.0009, 500, state="INFEASIBLE"),
        trial("4", None, 0.0002, 500, state="ACTIVE"),
        {**trial("5", 0.98), "finalMeasurement": {"metrics": [
            {"metricId": "loss", "value": 0.98}]}},
        trial("6", float("nan")),
    ]))

    outputs = helper_components.retrieve_best_run(PROJECT, JOB)

    assert outputs == (0.74, 0.00075, 1000)
    assert [(uri, method) for uri, method, _, _ in vertex.http.request_sequence] == [
        (URI, "GET")]
    assert f"Best trial of {JOB} (MAXIMIZE, 2 of 6 trials usable)" in capsys.readouterr().out


@pytest.mark.parametrize(("job", "expected"), [
    (tuning_job([], state="JOB_STATE_RUNNING"),
     f"job {JOB} is JOB_STATE_RUNNING, not JOB_STATE_SUCCEEDED; wait for it to finish"),
    (tuning_job([trial("1", 0.7, state="INFEASIBLE")]),
     f"job {JOB} has no SUCCEEDED trial with a final 'accuracy' metric among 1 trials"),
    (tuning_job([trial("1", 0.7, metric="training/hptuning/metric")]),
     f"job {JOB} has no SUCCEEDED trial with a final 'accuracy' metric among 1 trials"),
    (tuning_job([{**trial("1", 0.7), "parameters": [{"parameterId": "alpha", "value": 0.1}]}]),
     "trial 1 has no hyperparameter 'max_iter'; add max_iter to the tuning job's "
     "studySpec.parameters"),
    (tuning_job([trial("1", 0.7, max_iter=500.5)]),
     "trial 1 has max_iter=500.5; expected a whole number"),
    ({**tuning_job([]), "studySpec": {"metrics": [], "parameters": []}},
     f"job {JOB} has 0 study metrics; the pipeline tunes one metric"),
])
def test_unusable_jobs_are_one_line_errors(recorded, job, expected):
    """Recorded: a job caught running (the stand-in's jobs end on their own schedule), a
    succeeded job without a usable trial, and studies the stand-in refuses to run."""
    recorded(job)

    with pytest.raises(ValueError) as error:
        helper_components.retrieve_best_run(PROJECT, JOB)

    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


def test_an_unreachable_stand_in_is_named(monkeypatch):
    monkeypatch.setenv(ml_client.VERTEX_EMULATOR_HOST_ENV, "http://127.0.0.1:9")

    with pytest.raises(RuntimeError) as error:
        helper_components.retrieve_best_run(PROJECT, JOB)

    assert str(error.value).endswith(f"; check the network or {ml_client.VERTEX_EMULATOR_HOST_ENV}")


def test_api_errors_other_than_missing_name_the_fix(monkeypatch):
    """Recorded answer: the stand-in has no permissions to deny (HTTP 403)."""
    Recorded(monkeypatch, [(403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                                            "message": "Permission denied."}})])

    with pytest.raises(RuntimeError) as error:
        helper_components.retrieve_best_run(PROJECT, JOB)

    assert str(error.value) == (f"getting job {JOB} failed: HTTP 403 Permission denied.; check "
                                "the pipeline's service account may read Vertex AI tuning jobs")


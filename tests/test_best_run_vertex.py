"""retrieve_best_run on a Vertex AI HyperparameterTuningJob (its resource name as job_id).

Google's client over the packaged aiplatform v1 document; its HTTP answers come from
HttpMockSequence (until the local stand-in is merged), job bodies shaped by the document.
"""
from __future__ import annotations

import json
import os
import sys

import pytest
from googleapiclient.http import HttpMockSequence
from kfp.components import func_to_container_op
from vertex_shapes import problems

from pipeline import helper_components, ml_client

PROJECT = "my-project"
JOB = "projects/123456789/locations/europe-west4/hyperparameterTuningJobs/8812"
URI = f"https://europe-west4-aiplatform.googleapis.com/v1/{JOB}?alt=json"


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
    assert problems("HyperparameterTuningJob", body) == []
    return body


@pytest.fixture
def vertex_api(monkeypatch):
    """Answer hyperparameterTuningJobs.get with (status, body); return the mock http."""
    monkeypatch.delenv(ml_client.VERTEX_EMULATOR_HOST_ENV, raising=False)

    def serve(body: dict, status: int = 200) -> HttpMockSequence:
        http = HttpMockSequence([({"status": str(status)}, json.dumps(body))])
        build = ml_client.aiplatform_service
        monkeypatch.setattr(ml_client, "aiplatform_service",
                            lambda region, http_=None: build(region, http=http))
        return http

    return serve


def test_picks_the_best_succeeded_trial_by_the_study_metric(vertex_api, capsys):
    http = vertex_api(tuning_job([
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
    assert isinstance(outputs.max_iter, int)
    assert [(uri, method) for uri, method, _, _ in http.request_sequence] == [(URI, "GET")]
    printed = capsys.readouterr().out
    assert f"Best trial of {JOB} (MAXIMIZE, 2 of 6 trials usable)" in printed


def test_minimize_picks_the_lowest(vertex_api):
    vertex_api(tuning_job([trial("1", 0.4, 0.0002), trial("2", 0.2, 0.0003),
                           trial("3", 0.3)], goal="MINIMIZE"))

    assert helper_components.retrieve_best_run(PROJECT, JOB) == (0.2, 0.0003, 500)


@pytest.mark.parametrize(("job", "expected"), [
    (tuning_job([], state="JOB_STATE_RUNNING"),
     f"job {JOB} is JOB_STATE_RUNNING, not JOB_STATE_SUCCEEDED; wait for it to finish"),
    (tuning_job([trial("1", 0.7)], state="JOB_STATE_FAILED",
                error={"code": 9, "message": "2 trials failed.\nSee logs."}),
     f"job {JOB} is JOB_STATE_FAILED (2 trials failed. See logs.), not JOB_STATE_SUCCEEDED"),
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
def test_unusable_jobs_are_one_line_errors(vertex_api, job, expected):
    vertex_api(job)

    with pytest.raises(ValueError) as error:
        helper_components.retrieve_best_run(PROJECT, JOB)

    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


def test_api_errors_name_the_job_and_the_fix(vertex_api):
    vertex_api({"error": {"code": 404, "message": "HyperparameterTuningJob not found.",
                          "status": "NOT_FOUND"}}, status=404)

    with pytest.raises(RuntimeError) as error:
        helper_components.retrieve_best_run(PROJECT, JOB)

    assert str(error.value) == (f"getting job {JOB} failed: HTTP 404 HyperparameterTuningJob "
                                "not found.; check project_id and job_id (the tuning step's "
                                "job_id output)")


def test_an_unreachable_stand_in_is_named(monkeypatch):
    monkeypatch.setenv(ml_client.VERTEX_EMULATOR_HOST_ENV, "http://127.0.0.1:9")

    with pytest.raises(RuntimeError) as error:
        helper_components.retrieve_best_run(PROJECT, JOB)

    assert str(error.value).endswith(f"; check the network or {ml_client.VERTEX_EMULATOR_HOST_ENV}")


def test_the_component_program_writes_the_same_outputs(vertex_api, monkeypatch, tmp_path):
    vertex_api(tuning_job([trial("1", 0.70), trial("2", 0.74, 0.0002, 1000)]))
    container = func_to_container_op(helper_components.retrieve_best_run).component_spec \
        .implementation.container
    assert container.args[:4:2] == ["--project-id", "--job-id"]
    outputs = {name: tmp_path / name / "data" for name in ("metric_value", "alpha", "max_iter")}
    program = container.command[3]

    # The program runs in this process so the mocked API answers it.
    monkeypatch.setattr(sys, "argv", ["retrieve_best_run", "--project-id", PROJECT, "--job-id",
                                      JOB, "----output-paths", *map(str, outputs.values())])
    exec(compile(program, "retrieve_best_run", "exec"), {"__name__": "__main__"})

    written = {name: path.read_text() for name, path in outputs.items()}
    assert written == {"metric_value": "0.74", "alpha": "0.0002", "max_iter": "1000"}
    assert sorted(os.listdir(tmp_path)) == ["alpha", "max_iter", "metric_value"]

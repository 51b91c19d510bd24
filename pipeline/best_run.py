"""The best trial of a finished tuning job, on AI Platform (ml v1) or Vertex AI.

Used by the `retrieve_best_run` lightweight component (the base image carries this module).
The job id says the platform: an ml v1 job id (`hptune_...`) or a Vertex AI
HyperparameterTuningJob resource name (`projects/P/locations/R/hyperparameterTuningJobs/N`,
the Vertex tuning component's `job_id` output). Either way the best trial is chosen by its
final metric and the job's goal, among the trials that succeeded; the order of the trials
means nothing. Errors are one line naming the problem and the fix.
"""
from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

from pipeline import ml_client
from pipeline.errors import http_error_message, one_line

VERTEX_JOB = re.compile(r"projects/[^/\s]+/locations/([a-z][a-z0-9-]*)/"
                        r"hyperparameterTuningJobs/[^/\s]+")
_ML_ID = re.compile(r"[^/\s]+")


class BestRun(NamedTuple):
    """The chosen trial's metric and hyperparameters, and how it was chosen."""

    metric_value: float
    alpha: float
    max_iter: int
    trial: dict
    goal: str
    usable: int
    total: int


def retrieve(project_id: str, job_id: str) -> BestRun:
    """Fetch the tuning job and pick its best trial.

    Raises:
        ValueError: bad ids, or a job that is unfinished, failed, not a tuning job or has no
            usable trial.
        RuntimeError: the API could not be reached or answered an error.
    """
    if VERTEX_JOB.fullmatch(job_id or ""):
        return from_vertex_job(_get_vertex_job(job_id), job_id)
    if not _ML_ID.fullmatch(project_id or "") or not _ML_ID.fullmatch(job_id or ""):
        raise ValueError(
            f"project_id={project_id!r} job_id={job_id!r}: both must be non-empty ids without "
            "'/' (or job_id a Vertex AI hyperparameterTuningJobs resource name); pass the "
            "project and the tuning step's job_id output")
    name = f"projects/{project_id}/jobs/{job_id}"
    return from_ml_job(_get(lambda: ml_client.ml_service().projects().jobs().get(name=name),
                            name, ml_client.EMULATOR_HOST_ENV, "AI Platform jobs"), name)


def from_ml_job(job: dict, name: str) -> BestRun:
    """The best trial of an ml v1 Job (`trainingOutput.trials[].finalMetric.objectiveValue`)."""
    state = job.get("state", "STATE_UNSPECIFIED")
    if state != "SUCCEEDED":
        detail = f" ({one_line(job['errorMessage'])})" if job.get("errorMessage") else ""
        raise ValueError(f"job {name} is {state}{detail}, not SUCCEEDED; wait for it to finish "
                         "or fix its failure and re-run the tuning step")
    spec = job.get("trainingInput", {}).get("hyperparameters")
    if not spec:
        raise ValueError(f"job {name} is not a hyperparameter tuning job (no trainingInput."
                         "hyperparameters); pass the job_id of the tuning step")
    goal = _goal(spec.get("goal"), name)
    trials = job.get("trainingOutput", {}).get("trials", [])

    def measured(trial: dict) -> float | None:
        if trial.get("state", "SUCCEEDED") != "SUCCEEDED":
            return None
        return _finite(trial.get("finalMetric", {}).get("objectiveValue"))

    def value(trial: dict, parameter: str) -> Any:
        return trial.get("hyperparameters", {}).get(parameter)

    return _pick(trials, measured, value, goal, name, "trialId",
                 "no successful trial with a finalMetric",
                 "trainingInput.hyperparameters.params")


def from_vertex_job(job: dict, name: str) -> BestRun:
    """The best trial of a Vertex AI HyperparameterTuningJob: `trials[].finalMeasurement.
    metrics[]` of the study's metric, `trials[].parameters[]`; INFEASIBLE and unfinished
    trials are skipped."""
    state = job.get("state", "JOB_STATE_UNSPECIFIED")
    if state != "JOB_STATE_SUCCEEDED":
        error = (job.get("error") or {}).get("message")
        detail = f" ({one_line(error)})" if error else ""
        raise ValueError(f"job {name} is {state}{detail}, not JOB_STATE_SUCCEEDED; wait for it to "
                         "finish or fix its failure and re-run the tuning step")
    metrics = (job.get("studySpec") or {}).get("metrics") or []
    if len(metrics) != 1 or not metrics[0].get("metricId"):
        raise ValueError(f"job {name} has {len(metrics)} study metrics; the pipeline tunes one "
                         "metric (studySpec.metrics[0].metricId): tune with hypertune_settings")
    metric_id = metrics[0]["metricId"]
    goal = _goal(metrics[0].get("goal"), name)
    trials = job.get("trials", [])

    def measured(trial: dict) -> float | None:
        if trial.get("state") != "SUCCEEDED":
            return None
        for metric in (trial.get("finalMeasurement") or {}).get("metrics", []):
            if metric.get("metricId") == metric_id:
                return _finite(metric.get("value"))
        return None

    def value(trial: dict, parameter: str) -> Any:
        for item in trial.get("parameters", []):
            if item.get("parameterId") == parameter:
                return item.get("value")
        return None

    return _pick(trials, measured, value, goal, name, "id",
                 f"no SUCCEEDED trial with a final {metric_id!r} metric",
                 "studySpec.parameters")


def _pick(trials: list[dict], measured: Any, value: Any, goal: str, name: str, id_key: str,
          none_found: str, params_field: str) -> BestRun:
    usable = [trial for trial in trials if measured(trial) is not None]
    if not usable:
        raise ValueError(f"job {name} has {none_found} among {len(trials)} trials; check that "
                         "the trainer reports the metric tag with cloudml-hypertune")
    best = (min if goal == "MINIMIZE" else max)(usable, key=measured)

    def parameter(parameter_name: str, whole: bool) -> float:
        text = value(best, parameter_name)
        if text is None:
            raise ValueError(f"trial {best.get(id_key)} has no hyperparameter "
                             f"{parameter_name!r}; add {parameter_name} to the tuning job's "
                             f"{params_field}")
        try:
            number = float(text)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or (whole and not number.is_integer()):
            raise ValueError(f"trial {best.get(id_key)} has {parameter_name}={text!r}; expected "
                             f"a {'whole number' if whole else 'number'}: fix the tuning params")
        return number

    return BestRun(measured(best), parameter("alpha", False), int(parameter("max_iter", True)),
                   best, goal, len(usable), len(trials))


def _goal(goal: Any, name: str) -> str:
    if goal in (None, "GOAL_TYPE_UNSPECIFIED", "MAXIMIZE"):
        return "MAXIMIZE"
    if goal == "MINIMIZE":
        return goal
    raise ValueError(f"job {name} has goal {goal!r}; expected MAXIMIZE or MINIMIZE")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _get_vertex_job(name: str) -> dict:
    region = VERTEX_JOB.fullmatch(name).group(1)
    return _get(lambda: ml_client.aiplatform_service(region).projects().locations()
                .hyperparameterTuningJobs().get(name=name),
                name, ml_client.VERTEX_EMULATOR_HOST_ENV, "Vertex AI tuning jobs")


def _get(request: Any, name: str, switch: str, readable: str) -> dict:
    """Execute one get; HTTP and network errors become a one-line RuntimeError."""
    from google.auth.exceptions import GoogleAuthError
    from googleapiclient.errors import HttpError

    try:
        return request().execute()
    except GoogleAuthError as error:
        raise RuntimeError(f"getting job {name} failed: {one_line(error)}; run the step with "
                           f"Google credentials or set {switch} for the local stand-in") from None
    except HttpError as error:
        fix = {401: "check the pipeline's credentials",
               403: f"check the pipeline's service account may read {readable}",
               404: "check project_id and job_id (the tuning step's job_id output)",
               }.get(error.resp.status, "retry the step")
        raise RuntimeError(f"getting job {name} failed: HTTP {error.resp.status} "
                           f"{http_error_message(error)}; {fix}") from None
    except OSError as error:
        raise RuntimeError(f"getting job {name} failed: {one_line(error)}; check the network or "
                           f"{switch}") from None

"""Local AI Platform Training: the ml v1 `projects.jobs` surface of the local training core.

create/get/list/cancel over the API-neutral `TrainingEngine` (training_core.py): this module
validates an ml v1 Job, describes it as a `JobTask` and renders the Job from the engine's
record (`trainingOutput.trials[]` best first by goal, as the service lists them). The same
engine runs Vertex AI's customJobs and hyperparameterTuningJobs (vertex_training.py).

`masterConfig.imageUri` runs `program_for_image(...)` (an image with no local program is
refused); worker/parameter-server replicas are not started. The process gets
`--job-dir=<jobDir>` after the job's args, and CLOUD_ML_JOB_ID (and CLOUD_ML_TRIAL_ID per
trial).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline import discovery
from pipeline.hypertune import DEFAULT_METRIC_TAG, HypertuneSpecError, parse_spec
from pipeline.local.api_schema import parse_request
from pipeline.local.errors import InvalidArgument, NotFound
from pipeline.local.training_core import TrainingEngine, check_output_dir
from pipeline.local.training_run import JobTask
from pipeline.local.tuning import check_trial_limits, format_value

API, KIND = "ml.v1", "jobs"
JOB_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")
JOB_DIR_FLAGS = ("--job-dir", "--job_dir")  # the trainer's output folder: only from jobDir
CANCEL_REASON = "cancelled by a projects.jobs.cancel request"


class TrainingService:
    """projects.jobs create/get/list/cancel over the local training core.

    Args:
        engine: the training core that runs the jobs.
    """

    def __init__(self, engine: TrainingEngine) -> None:
        self.engine = engine

    def create_job(self, project: str, body: Any) -> dict:
        """Validate a Job, record it QUEUED and start running it; returns the Job.

        Raises:
            InvalidArgument: a bad Job (nothing is written); AlreadyExists: the jobId is taken.
        """
        job_id, request, task = _validate(body, self.engine.storage)
        identity = {"api": API, "kind": KIND, "project": project, "location": ""}
        return render_job(self.engine.submit(job_id, identity, request, task))

    def get_job(self, project: str, job_id: str) -> dict:
        """The Job as stored (NotFound if it is not in this project)."""
        return render_job(self._record(project, job_id))

    def list_jobs(self, project: str, page_size: int = 0, page_token: str = "") -> dict:
        """The project's jobs, newest first, as a ListJobsResponse."""
        jobs = sorted((render_job(record) for record in self.engine.records()
                       if record.get("api") == API and record["project"] == project),
                      key=lambda job: job["createTime"], reverse=True)
        if page_token and not page_token.isdigit():
            raise InvalidArgument(f"pageToken {page_token!r} is not one this service returned")
        start = int(page_token or 0)
        end = start + page_size if page_size > 0 else len(jobs)
        response: dict[str, Any] = {"jobs": jobs[start:end]}
        if end < len(jobs):
            response["nextPageToken"] = str(end)
        return response

    def cancel_job(self, project: str, job_id: str) -> dict:
        """Ask the job's runner (in any process) to stop; it kills running trials within ~0.1 s.

        Raises:
            FailedPrecondition: the job has already ended.
        """
        self._record(project, job_id)
        self.engine.cancel(job_id, CANCEL_REASON)
        return {}

    def _record(self, project: str, job_id: str) -> dict:
        missing = NotFound(f"job projects/{project}/jobs/{job_id} not found")
        if not JOB_ID.fullmatch(job_id):
            raise missing
        try:
            record = self.engine.record(job_id)
        except NotFound:
            raise missing from None
        if record.get("api") != API or record["project"] != project:
            raise missing
        return record


def _validate(body: Any, storage: Path) -> tuple[str, dict, JobTask]:
    """Check a Job body; returns (jobId, the Job as stored, the task to run).

    The trainer writes only where `jobDir` says, which must lie in the project's own storage
    (`storage`, or the storage emulator's gs://), and a job starts at most as many trials as the
    machine takes (check_trial_limits).
    """
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a Job JSON object")
    body = parse_request(discovery.document("ml", "v1"), "GoogleCloudMlV1__Job", body, "job")
    job_id = body.get("jobId")
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise InvalidArgument(f"jobId {job_id!r} is invalid; use a letter then up to 127 "
                              "letters, digits or underscores")
    if body.get("predictionInput"):
        raise InvalidArgument("batch prediction jobs (predictionInput) are not supported "
                              "locally; submit a trainingInput job")
    training_input = body.get("trainingInput")
    if not isinstance(training_input, dict):
        raise InvalidArgument("trainingInput is missing; a training job needs a trainingInput")
    master = training_input.get("masterConfig") or {}
    if not master.get("imageUri"):
        if training_input.get("pythonModule"):
            raise InvalidArgument("trainingInput.pythonModule (package) jobs are not supported "
                                  "locally; set trainingInput.masterConfig.imageUri instead")
        raise InvalidArgument("trainingInput.masterConfig.imageUri is required; set it to the "
                              "trainer image")
    job_dir = training_input.get("jobDir", "")
    if not isinstance(job_dir, str) or not job_dir:
        raise InvalidArgument("trainingInput.jobDir is required by the local training service, "
                              f"as the trainer writes there; set it to a folder under {storage}")
    check_output_dir(job_dir, "trainingInput.jobDir", storage)
    args = training_input.get("args", [])
    # The trainer gets --job-dir=<jobDir> last, which wins over any earlier spelling (fire
    # keeps the last value) unless a "-" or "--" separator cuts the command line before it.
    if bad := [arg for arg in args if arg in ("-", "--") or arg.split("=", 1)[0] in JOB_DIR_FLAGS]:
        raise InvalidArgument(f"trainingInput.args holds {bad[0]!r}; the trainer's output folder "
                              "comes from trainingInput.jobDir only: remove it from args")
    hyperparameters = training_input.get("hyperparameters")
    try:
        spec = parse_spec(hyperparameters) if hyperparameters is not None else None
    except HypertuneSpecError as error:
        raise InvalidArgument(str(error)) from None
    if spec:
        check_trial_limits(spec)
    # The tuning seed leaves out jobDir, which carries the run id: a resumed run proposes the
    # same trials as the run it continues.
    seed = {key: value for key, value in training_input.items() if key != "jobDir"}
    task = JobTask(image=master["imageUri"], output_dir=job_dir, tuning=spec,
                   args=tuple(args), last_args=(f"--job-dir={job_dir}",),
                   env={"CLOUD_ML_JOB_ID": job_id}, seed_key=json.dumps(seed, sort_keys=True))
    request = {"jobId": job_id, "trainingInput": training_input}
    if "labels" in body:
        request["labels"] = body["labels"]
    return job_id, request, task


def render_job(record: dict) -> dict:
    """The ml v1 Job of an engine record."""
    request = record["request"]
    job = {"jobId": record["id"], "trainingInput": request["trainingInput"],
           "createTime": record["createTime"], "state": record["state"]}
    if "labels" in request:
        job["labels"] = request["labels"]
    job.update({key: record[key] for key in ("startTime", "endTime") if key in record})
    if "error" in record:
        job["errorMessage"] = record["error"]["message"]
    if record["tuning"] and ("startTime" in record or record["trials"]):  # once it runs
        job["trainingOutput"] = _tuning_output(record)
    elif "hours" in record:
        job["trainingOutput"] = {"consumedMLUnits": record["hours"]}
    return job


def _tuning_output(record: dict) -> dict:
    hyperparameters = record["request"]["trainingInput"]["hyperparameters"]
    trials = [_trial(trial) for trial in record["trials"]]
    return {"completedTrialCount": str(sum(t["state"] == "SUCCEEDED" for t in trials)),
            "consumedMLUnits": record.get("hours", 0.0),
            "trials": best_first(trials, hyperparameters["goal"]),
            "isHyperparameterTuningJob": True,
            "hyperparameterMetricTag": (hyperparameters.get("hyperparameterMetricTag")
                                        or DEFAULT_METRIC_TAG)}


def _trial(trial: dict) -> dict:
    """An ml v1 HyperparameterOutput of an engine trial."""
    rendered = {"trialId": trial["id"], "state": trial["state"], "isTrialStoppedEarly": False,
                "hyperparameters": {name: format_value(value)
                                    for name, value in trial["values"].items()},
                **{key: trial[key] for key in ("startTime", "endTime") if key in trial}}
    if "metric" in trial:
        rendered["finalMetric"] = {"trainingStep": str(trial["metric"]["step"]),
                                   "objectiveValue": trial["metric"]["value"]}
    return rendered


def best_first(trials: list[dict], goal: str) -> list[dict]:
    """Succeeded trials best first by goal (as the service lists them), then the rest by id.

    Clients should still choose by `finalMetric.objectiveValue`: no document promises order.
    """
    sign = -1 if goal == "MAXIMIZE" else 1

    def key(trial: dict) -> tuple:
        if "finalMetric" in trial:
            return (0, sign * trial["finalMetric"]["objectiveValue"], int(trial["trialId"]))
        return (1, 0.0, int(trial["trialId"]))

    return sorted(trials, key=key)

"""Executor of the KFP 0.2.5 `ml_engine/train` component: submit an ml v1 training job, wait.

Mirrors `kfp_component.google.ml_engine` `_train.py` and `_create_job.py`: the explicit inputs
are merged into `training_input`, the job id is the prefix plus an id derived from the pod
(so a retried step finds its own job: HTTP 409 with the same trainingInput means "already
submitted, keep waiting"), and `projects.jobs.get` is polled until a terminal state. The client
is `pipeline.ml_client.ml_service()`, so the same code talks to the local emulator when
`AI_PLATFORM_EMULATOR_HOST` is set and to ml.googleapis.com otherwise.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.local.actions import inputs
from pipeline.ml_client import EMULATOR_HOST_ENV, EMULATOR_POLL_SECONDS, ml_service

POD_NAME_ENV = "KFP_POD_NAME"
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
_EXAMPLES = {"python_module": "trainer.task", "region": "us-central1", "job_dir": "gs://bucket/job",
             "python_version": "3.7", "runtime_version": "2.11",
             "master_image_uri": "gcr.io/my-project/trainer_image:latest",
             "worker_image_uri": "gcr.io/my-project/trainer_image:latest"}


def train(project_id: Any, python_module: Any = "", package_uris: Any = "", region: Any = "",
          args: Any = "", job_dir: Any = "", python_version: Any = "", runtime_version: Any = "",
          master_image_uri: Any = "", worker_image_uri: Any = "", training_input: Any = "",
          job_id_prefix: Any = "", wait_interval: Any = 30) -> dict[str, str]:
    """Create the training job (or find our earlier one) and wait for it to end.

    Inputs come as the launcher hands them over (pipeline/local/actions/inputs.py):
    `package_uris` and `args` lists, `training_input` a dict (a TrainingInput), '' or None
    for not given.

    Returns:
        {'job_id': the job id, 'job_dir': the job's trainingInput.jobDir ('' if none)}.

    Raises:
        ValueError: a bad input (before anything is submitted) or a job the service refused.
        RuntimeError: the job ended FAILED or CANCELLED, with its errorMessage.
    """
    project_id = inputs.text("project_id", project_id, "my-project")
    if not project_id.strip():
        raise ValueError("project_id is empty; pass the GCP project id (locally any name)")
    body = inputs.mapping("training_input", training_input, '{"scaleTier": "BASIC"}')
    uris = inputs.sequence("package_uris", package_uris, '["gs://bucket/trainer.tar.gz"]')
    arguments = inputs.sequence("args", args, '["--alpha", "0.001"]')
    interval = float(max(inputs.whole_number("wait_interval", wait_interval, 0, "30"), 0.1))
    texts = {"python_module": python_module, "region": region, "job_dir": job_dir,
             "python_version": python_version, "runtime_version": runtime_version,
             "master_image_uri": master_image_uri, "worker_image_uri": worker_image_uri}
    given = {name: inputs.text(name, value, _EXAMPLES[name], number_ok=True)
             for name, value in texts.items()}
    explicit = {"pythonModule": given["python_module"], "packageUris": uris,
                "region": given["region"], "args": arguments, "jobDir": given["job_dir"],
                "pythonVersion": given["python_version"],
                "runtimeVersion": given["runtime_version"]}
    body.update({key: value for key, value in explicit.items() if value})
    for field, image in (("masterConfig", given["master_image_uri"]),
                         ("workerConfig", given["worker_image_uri"])):
        if image:
            body.setdefault(field, {})["imageUri"] = image
    job_id_prefix = inputs.text("job_id_prefix", job_id_prefix, "hptune_")
    job_id = _job_id(job_id_prefix)
    ml = ml_service()
    if os.environ.get(EMULATOR_HOST_ENV):
        interval = min(interval, EMULATOR_POLL_SECONDS)
    name = f"projects/{project_id}/jobs/{job_id}"
    with _cancel_on_termination(name):
        _submit(ml, project_id, {"jobId": job_id, "trainingInput": body})
        job = _wait(ml, name, interval)
    if job["state"] != "SUCCEEDED":
        message = " ".join(job.get("errorMessage", "").split())
        raise RuntimeError(f"Job {job_id} failed with state {job['state']}. Error: {message}")
    return {"job_id": job_id, "job_dir": job["trainingInput"].get("jobDir", "")}


def _job_id(prefix: str) -> str:
    """prefix + an id stable for this pod (a retry reuses it), sanitised to the jobId rules."""
    pod = os.environ.get(POD_NAME_ENV, "")
    context = hashlib.sha256(pod.encode()).hexdigest()[:32] if pod else uuid.uuid4().hex
    job_id = prefix + context[:16] if prefix else "job_" + context
    job_id = re.sub("[^0-9a-zA-Z_]+", "_", job_id)
    if not job_id[0].isalpha() or not job_id[0].isascii():
        job_id = "x_" + job_id
    return job_id[:128]


def _submit(ml: Any, project_id: str, job: dict) -> None:
    """projects.jobs.create; 409 with the same trainingInput is our own earlier submission."""
    from googleapiclient.errors import HttpError

    jobs = ml.projects().jobs()
    try:
        jobs.create(parent=f"projects/{project_id}", body=job).execute()
        print(f"submitted training job {job['jobId']}", flush=True)
    except HttpError as error:
        if error.resp.status == 400:
            raise ValueError(f"the training job was refused: {_message(error)}") from None
        if error.resp.status != 409:
            raise
        name = f"projects/{project_id}/jobs/{job['jobId']}"
        existing = jobs.get(name=name).execute()
        if existing.get("trainingInput") != job["trainingInput"]:
            raise RuntimeError(f"job {job['jobId']} already exists with another trainingInput; "
                               "set another job_id_prefix") from None
        print(f"training job {job['jobId']} was submitted before (retried step); waiting for it",
              flush=True)


def _message(error: Any) -> str:
    try:
        return json.loads(error.content)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return str(error)


def _wait(ml: Any, name: str, interval: float) -> dict:
    """Poll projects.jobs.get until a terminal state, printing state and trial changes."""
    seen: dict[str, str] = {}
    while True:
        job = ml.projects().jobs().get(name=name).execute()
        if seen.get("job") != job["state"]:
            seen["job"] = job["state"]
            print(f"job {job['jobId']}: {job['state']}", flush=True)
        trials = job.get("trainingOutput", {}).get("trials", [])
        for trial in sorted(trials, key=lambda trial: int(trial["trialId"])):
            if seen.get(trial["trialId"]) != trial["state"]:
                seen[trial["trialId"]] = trial["state"]
                print(_trial_line(trial, job["trainingOutput"]), flush=True)
        if job["state"] in TERMINAL_STATES:
            return job
        time.sleep(interval)


def _trial_line(trial: dict, output: dict) -> str:
    values = " ".join(f"{key}={value}" for key, value in trial.get("hyperparameters", {}).items())
    line = f"  trial {trial['trialId']} {trial['state']}: {values}"
    if "finalMetric" in trial:
        metric = trial["finalMetric"]
        line += (f" -> {output.get('hyperparameterMetricTag')}={metric['objectiveValue']}"
                 f" (step {metric.get('trainingStep', '0')})")
    return line


@contextmanager
def _cancel_on_termination(name: str) -> Iterator[None]:
    """Cancel the job if this step is interrupted (SIGTERM, Ctrl-C), as the 0.2.5 op does."""
    def _terminate(signum: int, _: Any) -> None:
        raise SystemExit(128 + signum)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main else None
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        print(f"interrupted: cancelling {name}", flush=True)
        try:  # a fresh client: the interrupted one may hold a half-read response
            ml_service().projects().jobs().cancel(name=name, body={}).execute()
        except Exception as error:  # best effort, like the 0.2.5 cancel_job
            print(f"could not cancel {name}: {error}", flush=True)
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)

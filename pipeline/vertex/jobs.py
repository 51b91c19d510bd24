"""What every Vertex AI component step shares: its identity, finding its own job, waiting.

Retries: Vertex AI assigns job ids itself, so a step cannot name its job the way the 0.2.5
components did (`job_<md5 of the Argo node name>`). Instead every job (and uploaded model) is
labelled with the KFP run and the step's node, and a step first lists the jobs with those
labels. A retried attempt of the step (Argo names it `<node>(1)`, `<node>(2)`...; the
suffix is dropped, as kfp_component.core does) finds the job of the earlier attempt and waits
for it instead of starting a second one. A job found FAILED, CANCELLED or EXPIRED is not
adopted: a retry is meant to try again.

The node name reaches the container through the downward API (env `KFP_NODE_NAME` from the
pod annotation `workflows.argoproj.io/node-name`, added by the DSL), the run id as
`KFP_RUN_ID={{workflow.uid}}` (set by the component specs).
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline import ml_client
from pipeline.errors import one_line
from pipeline.vertex.client import VertexClient, VertexError

RUN_ENV, NODE_ENV = "KFP_RUN_ID", "KFP_NODE_NAME"
NODE_NAME_FIELD = "metadata.annotations['workflows.argoproj.io/node-name']"
RUN_LABEL, NODE_LABEL = "kfp_run", "kfp_node"
SUCCEEDED = "JOB_STATE_SUCCEEDED"
# Terminal states other than success (JobState in aiplatform.v1.json).
FAILED_STATES = ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED",
                 "JOB_STATE_PARTIALLY_SUCCEEDED")
ENDING_STATES = FAILED_STATES + ("JOB_STATE_CANCELLING",)
_FAILED_FIXES = {
    "JOB_STATE_FAILED": "fix the cause (see the job's logs) and re-run the step",
    "JOB_STATE_CANCELLED": "it was cancelled; re-run the step to start a new job",
    "JOB_STATE_EXPIRED": "it expired before it ran; re-run the step to start a new job",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "see the job's logs and re-run the step",
}
_RETRY_SUFFIX = re.compile(r"\(\d+\)$")
_LABEL_VALUE = re.compile(r"[^a-z0-9_-]")


@dataclass(frozen=True)
class StepIdentity:
    """The KFP run and Argo node (retry suffix dropped) of this step."""

    run: str
    node: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StepIdentity:
        """Read KFP_RUN_ID and KFP_NODE_NAME; refuse to run without them (no retry safety)."""
        env = os.environ if environ is None else environ
        run, node = env.get(RUN_ENV, "").strip(), env.get(NODE_ENV, "").strip()
        for name, value in ((RUN_ENV, run), (NODE_ENV, node)):
            if not value:
                raise ValueError(f"{name} is not set, so a retried step could not find its own "
                                 "job; run the step from the compiled pipeline (its template "
                                 f"sets {RUN_ENV} and {NODE_ENV}) or set both")
        return cls(run, _RETRY_SUFFIX.sub("", node))

    @property
    def labels(self) -> dict[str, str]:
        """Vertex AI labels: lowercase letters, digits, '_' and '-', at most 63 characters."""
        return {RUN_LABEL: _LABEL_VALUE.sub("-", self.run.lower())[:63],
                NODE_LABEL: hashlib.md5(self.node.encode()).hexdigest()}

    @property
    def list_filter(self) -> str:
        """The list filter that finds this step's resources."""
        return " AND ".join(f'labels.{key}="{value}"' for key, value in self.labels.items())

    @property
    def display_name(self) -> str:
        """The node name (`<workflow>.<task>`), as the console shows it (128 characters)."""
        return self.node[:128]


@dataclass(frozen=True)
class Waiting:
    """How a step polls: every `interval` seconds (0.1 s against the local stand-in) until
    `deadline` (time.monotonic())."""

    interval: float
    deadline: float
    timeout: int

    @classmethod
    def start(cls, interval: int, timeout: int) -> Waiting:
        if os.environ.get(ml_client.VERTEX_EMULATOR_HOST_ENV):
            interval = min(interval, ml_client.EMULATOR_POLL_SECONDS)
        return cls(interval, time.monotonic() + timeout, timeout)

    def pause(self, what: str, state: str, fix: str) -> None:
        """Sleep one interval, or raise the one-line error of an expired wait."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise VertexError(f"{what} is still {state} after the {self.timeout} s wait_timeout; "
                              f"{fix}")
        time.sleep(min(self.interval, left))


def job_spec(image_uri: str, args: list[str], base_output_directory: str,
             machine_type: str) -> dict[str, Any]:
    """A CustomJobSpec (a custom job's `jobSpec`, a tuning job's `trialJobSpec`): one worker
    pool of a single replica running the image with the args, writing under the directory."""
    return {
        "workerPoolSpecs": [{"machineSpec": {"machineType": machine_type}, "replicaCount": "1",
                             "containerSpec": {"imageUri": image_uri, "args": list(args)}}],
        "baseOutputDirectory": {"outputUriPrefix": base_output_directory},
    }


def run_job(client: VertexClient, kind: str, body: dict, identity: StepIdentity,
            waiting: Waiting, log: Callable[[str], None] = print) -> dict:
    """Find this step's job (by its labels) or create it, then wait until it succeeds.

    Raises:
        VertexError: the job ended FAILED (with the job's own error message), CANCELLED or
            EXPIRED, the wait expired, or a call failed.
    """
    job = own_job(client, kind, identity, log)
    if job is None:
        job = client.create_job(kind, body)
        log(f"created {job['name']} ({job.get('state', 'JOB_STATE_QUEUED')})")
    return wait_for_job(client, kind, job, waiting, log)


def own_job(client: VertexClient, kind: str, identity: StepIdentity,
            log: Callable[[str], None] = print) -> dict | None:
    """The job an earlier attempt of this step started, unless it failed or was cancelled."""
    found = client.list_jobs(kind, identity.list_filter)
    for job in found:
        if job.get("state") in ENDING_STATES:
            log(f"not reusing {job['name']} of an earlier attempt: it is {job['state']}")
    usable = [job for job in found if job.get("state") not in ENDING_STATES]
    if not usable:
        return None
    # A succeeded job first, then the newest (RFC 3339 timestamps sort as text).
    job = max(usable, key=lambda item: (item.get("state") == SUCCEEDED,
                                        item.get("createTime", "")))
    log(f"found {job['name']} ({job.get('state')}) started by an earlier attempt of this step; "
        "waiting for it instead of starting another")
    return job


def wait_for_job(client: VertexClient, kind: str, job: dict, waiting: Waiting,
                 log: Callable[[str], None] = print) -> dict:
    """Poll `job` until JOB_STATE_SUCCEEDED; other terminal states are one-line errors."""
    name, last = job["name"], None
    while True:
        state = job.get("state", "JOB_STATE_UNSPECIFIED")
        if state != last:
            log(f"{name}: {state}")
            last = state
        if state == SUCCEEDED:
            return job
        if state in FAILED_STATES:
            message = one_line((job.get("error") or {}).get("message") or "no error message")
            raise VertexError(f"{name} ended {state}: {message}; {_FAILED_FIXES[state]}")
        waiting.pause(name, state, "it keeps running: re-run the step to wait for it again "
                      "(a re-run finds it) or cancel it")
        job = client.get_job(kind, name)


def wait_for_operation(client: VertexClient, operation: dict, what: str,
                       waiting: Waiting) -> dict:
    """Poll a long-running operation to the end; return its `response`.

    Raises:
        VertexError: the operation ended with an error, or the wait expired.
    """
    while not operation.get("done"):
        waiting.pause(f"{what} (operation {operation.get('name')})", "running",
                      "re-run the step; it finds what the operation made")
        operation = client.get_operation(operation["name"])
    error = operation.get("error")
    if error:
        raise VertexError(f"{what} failed: {error.get('code', '?')} "
                          f"{one_line(error.get('message') or 'no message')}")
    return operation.get("response") or {}

"""A run's tuning job as the summary and the run browser show it, from the training core.

The tuning step is the step that ran a tuning component (its role, pipeline/local/roles.py),
whatever its name; its `job_id` output names the job: an ml v1 job id, or a Vertex AI
hyperparameterTuningJobs resource name. Before that output exists (the step runs, or failed),
the job is found by its output folder, which this project's DSL names after the run
(`.../hypertune/<run id>`). Jobs are read from the training core's records in the local home,
so the CLI needs no server. Either platform's job becomes one `TuningJob` view.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.hypertune import DEFAULT_METRIC_TAG
from pipeline.local import records, roles
from pipeline.local.errors import NotFound
from pipeline.local.home import jobs_dir
from pipeline.local.records import RunRecord
from pipeline.local.summary import step_output, steps_in_order
from pipeline.local.training import API as ML_API
from pipeline.local.training import render_job
from pipeline.local.training_core import read_record, read_records
from pipeline.local.vertex_training import API as VERTEX_API
from pipeline.local.vertex_training import TUNING
from pipeline.local.vertex_training import render as vertex_render

# The DSL gives the tuning job `job_dir={gcs_root}/jobdir/hypertune/{{workflow.uid}}`, and a
# local run's workflow.uid is its run id: how a running or failed tuning step's job is found.
HYPERTUNE_DIR = "/hypertune/"
VERTEX_TUNING_JOB = re.compile(r"projects/([^/]+)/locations/([^/]+)/hyperparameterTuningJobs/"
                               r"([^/]+)")


@dataclass
class Trial:
    """One trial as the page shows it."""

    trial_id: str
    state: str
    parameters: dict[str, str]
    objective: float | None = None
    start: str = ""
    end: str = ""


@dataclass
class TuningJob:
    """A tuning job of either platform, as the page shows it."""

    name: str
    state: str
    goal: str
    metric: str
    error: str = ""
    trials: list[Trial] = field(default_factory=list)

    def best(self) -> Trial | None:
        """The succeeded trial with the best objective for the job's goal."""
        return best_trial(self.trials, self.goal == "MINIMIZE")

    @classmethod
    def from_ml_job(cls, job: dict) -> TuningJob:
        """The view of an ml v1 Job."""
        spec = (job.get("trainingInput") or {}).get("hyperparameters") or {}
        trials = [Trial(str(t.get("trialId", "")), str(t.get("state", "")),
                        {str(k): str(v) for k, v in (t.get("hyperparameters") or {}).items()},
                        _finite((t.get("finalMetric") or {}).get("objectiveValue")),
                        str(t.get("startTime", "")), str(t.get("endTime", "")))
                  for t in (job.get("trainingOutput") or {}).get("trials") or []]
        return cls(str(job.get("jobId", "")), str(job.get("state", "")),
                   str(spec.get("goal") or "MAXIMIZE"),
                   str(spec.get("hyperparameterMetricTag") or DEFAULT_METRIC_TAG),
                   str(job.get("errorMessage") or ""), trials)

    @classmethod
    def from_vertex_job(cls, job: dict) -> TuningJob:
        """The view of a Vertex AI HyperparameterTuningJob."""
        metric = ((job.get("studySpec") or {}).get("metrics") or [{}])[0]
        metric_id = str(metric.get("metricId", ""))
        trials = []
        for t in job.get("trials") or []:
            measured = {m.get("metricId"): m.get("value")
                        for m in (t.get("finalMeasurement") or {}).get("metrics") or []}
            trials.append(Trial(str(t.get("id", "")), str(t.get("state", "")),
                                {str(p.get("parameterId")): str(p.get("value"))
                                 for p in t.get("parameters") or []},
                                _finite(measured.get(metric_id)), str(t.get("startTime", "")),
                                str(t.get("endTime", ""))))
        return cls(str(job.get("name", "")), str(job.get("state", "")),
                   str(metric.get("goal") or "MAXIMIZE"), metric_id,
                   str((job.get("error") or {}).get("message") or ""), trials)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def best_trial(trials: list[Trial], minimize: bool) -> Trial | None:
    """The succeeded trial with the best objective for the job's goal."""
    usable = [t for t in trials if t.state == "SUCCEEDED" and t.objective is not None]
    if not usable:
        return None
    return (min if minimize else max)(usable, key=lambda trial: trial.objective)


def tuning_job(record: RunRecord, home: Path) -> tuple[TuningJob | None, str]:
    """The run's tuning job as it is now, or (None, why there is none)."""
    step = next((step for step in steps_in_order(record) if step.role == roles.TUNING), None)
    if step is None:
        return None, "This run has no tuning step."
    job_id = (step_output(record, step.name, "job_id") or "").strip()
    jobs = jobs_dir(home)
    try:
        if match := VERTEX_TUNING_JOB.fullmatch(job_id):
            project, location, key = match.groups()
            found = read_record(jobs, key)
            if (found.get("api"), found.get("kind"), found.get("project"),
                    found.get("location")) != (VERTEX_API, TUNING, project, location):
                raise NotFound(f"{job_id} not found")
            return TuningJob.from_vertex_job(vertex_render(found)), ""
        if job_id:
            found = read_record(jobs, job_id)
            if found.get("api") != ML_API:
                raise NotFound(f"job {job_id} not found")
            return TuningJob.from_ml_job(render_job(found)), ""
    except NotFound as error:
        return None, f"Tuning job {job_id}: {error}"
    if step.status in (records.RUNNING, records.FAILED):  # no job_id output (yet)
        for found in read_records(jobs):
            if found.get("tuning") and found.get("outputDir", "").rstrip("/").endswith(
                    HYPERTUNE_DIR + record.run_id):
                return (TuningJob.from_vertex_job(vertex_render(found))
                        if found.get("kind") == TUNING else TuningJob.from_ml_job(
                            render_job(found))), ""
    return None, f"No tuning job recorded ({step.name}: {step.status})."

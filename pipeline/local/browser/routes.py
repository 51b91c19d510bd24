"""Routes of the run browser: runs list, run page, step logs, the record as JSON.

Read-only views of `<home>/runs/<run_id>/`, of the local training core's jobs (ml v1 or
Vertex AI) and of the Vertex AI endpoints; every request reads the files again, so a page
shows a running run as it is now.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse

from pipeline.local import records
from pipeline.local.browser import views
from pipeline.local.browser.trials import TuningJob
from pipeline.local.errors import ServiceError
from pipeline.local.home import LOCAL_PROJECT_ID, runs_dir
from pipeline.local.records import RUN_ID, RunRecord, RunStore
from pipeline.local.services import (
    training_engine,
    training_service,
    vertex_endpoints,
    vertex_training,
)
from pipeline.local.summary import EVALUATE_STEP, RunSummary, step_output
from pipeline.local.training import render_job
from pipeline.local.vertex_training import TUNING
from pipeline.local.vertex_training import render as vertex_render

router = APIRouter(include_in_schema=False)
TUNE_STEP = "tune-hyperparameters"
# The DSL gives the tuning job `job_dir={gcs_root}/jobdir/hypertune/{{workflow.uid}}`, and a
# local run's workflow.uid is its run id: how a running or failed tuning step's job is found.
HYPERTUNE_DIR = "/hypertune/"
VERTEX_ENDPOINT = re.compile(r"projects/([^/]+)/locations/([^/]+)/endpoints/([^/]+)")
VERTEX_TUNING_JOB = re.compile(r"projects/([^/]+)/locations/([^/]+)/hyperparameterTuningJobs/"
                               r"([^/]+)")
METADATA_FILE = 4 * 1024 * 1024
NO_SNIFF = {"X-Content-Type-Options": "nosniff"}


class Unavailable(Exception):
    """A run, step or log that cannot be shown; `code` is the HTTP status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@router.get("/")
def runs_list(request: Request) -> HTMLResponse:
    """All runs, newest first."""
    store = _store(request)
    runs = [(record, _summary(record)) for record in store.list()]
    return HTMLResponse(views.runs_page(runs, store.root))


@router.get("/runs/{run_id}.json")
def run_json(run_id: str, request: Request) -> JSONResponse:
    """The run record (run.json) for scripts."""
    try:
        record, _ = _load(request, run_id)
    except Unavailable as error:
        return JSONResponse({"error": {"code": error.code, "message": str(error)}},
                            status_code=error.code)
    return JSONResponse(asdict(record))


@router.get("/runs/{run_id}")
def run_page(run_id: str, request: Request) -> HTMLResponse:
    """One run: graph, steps, trials, evaluation, deployment, parameters."""
    try:
        record, folder = _load(request, run_id)
    except Unavailable as error:
        title = "Run not found" if error.code == 404 else "Unreadable run record"
        return HTMLResponse(views.error_page(title, str(error)), status_code=error.code)
    job, note = _tuning_job(request, record)
    evaluate = record.steps.get(EVALUATE_STEP)
    artifacts = evaluate.artifacts if evaluate else {}
    metrics = _json_artifact(folder, artifacts.get("mlpipeline-metrics")).get("metrics")
    ui = _json_artifact(folder, artifacts.get("mlpipeline-ui-metadata")).get("outputs")
    summary = _summary(record)
    view = views.RunView(record, summary, job, note,
                         metrics if isinstance(metrics, list) else [],
                         [o for o in ui if isinstance(o, dict)] if isinstance(ui, list) else [])
    if summary and summary.deployed_endpoint:
        view.endpoint, view.endpoint_note = _endpoint(request, summary.deployed_endpoint)
    return HTMLResponse(views.run_page(view))


@router.get("/runs/{run_id}/steps/{step:path}/log", response_model=None)
def step_log(run_id: str, step: str, request: Request) -> FileResponse | PlainTextResponse:
    """A step's log as plain text."""
    try:
        record, folder = _load(request, run_id)
        path = _log_path(record, folder, step)
    except Unavailable as error:
        return PlainTextResponse(f"{error}\n", status_code=error.code, headers=NO_SNIFF)
    return FileResponse(path, media_type="text/plain; charset=utf-8", headers=NO_SNIFF)


def _store(request: Request) -> RunStore:
    return RunStore(runs_dir(request.app.state.home))


def _load(request: Request, run_id: str) -> tuple[RunRecord, Path]:
    store = _store(request)
    if not RUN_ID.fullmatch(run_id):
        raise Unavailable(404, f"{run_id!r} is not a run id; pick a run from the list")
    try:
        return store.load(run_id), store.folder(run_id)
    except FileNotFoundError as error:
        raise Unavailable(404, str(error)) from None
    except (ValueError, TypeError) as error:
        raise Unavailable(500, f"{store.folder(run_id) / records.RUN_FILE} is not a readable "
                               f"run record ({error}); it may come from another version") from None


def _log_path(record: RunRecord, folder: Path, name: str) -> Path:
    step = record.steps.get(name)
    if step is None:
        raise Unavailable(404, f"run {record.run_id} has no step {name!r}")
    path = (folder / step.log).resolve() if step.log else None
    if path is None or not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise Unavailable(404, f"step {name} of run {record.run_id} has no log "
                               f"({step.status}; only container steps that started have one)")
    return path


def _summary(record: RunRecord) -> RunSummary | None:
    """The run's summary; None when the record cannot give one (e.g. no threshold)."""
    try:
        return RunSummary.of(record)
    except (TypeError, ValueError):
        return None


def _json_artifact(folder: Path, location: str | None) -> dict:
    """A JSON artifact as a dict; {} when missing, too big or not a JSON object."""
    path = folder / location if location else None
    if path is None or not path.is_file() or path.stat().st_size > METADATA_FILE:
        return {}
    try:
        data = json.loads(path.read_text(errors="replace"))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _tuning_job(request: Request, record: RunRecord) -> tuple[TuningJob | None, str]:
    """The tuning step's job from the local training core, or why there is none.

    Found by the step's `job_id` output: an ml v1 job id, or (Vertex AI) the tuning job's
    resource name `projects/P/locations/L/hyperparameterTuningJobs/ID`. Before that output
    exists (the step runs or failed), by the job's output folder, which the DSL names after
    the run: `.../hypertune/<run id>`.
    """
    step = record.steps.get(TUNE_STEP)
    if step is None:
        return None, f"This run has no {TUNE_STEP} step."
    job_id = (step_output(record, TUNE_STEP, "job_id") or "").strip()
    try:
        if match := VERTEX_TUNING_JOB.fullmatch(job_id):
            job = vertex_training(request.app).get(TUNING, *match.groups())
            return TuningJob.from_vertex_job(job), ""
        if job_id:
            project = record.parameters.get("project_id") or LOCAL_PROJECT_ID
            return TuningJob.from_ml_job(training_service(request.app).get_job(project, job_id)), ""
        if step.status in (records.RUNNING, records.FAILED):  # no job_id output (yet)
            if found := _job_of_run(request, record.run_id):
                return found, ""
    except ServiceError as error:
        return None, f"Tuning job {job_id or '(unknown)'}: {error}"
    return None, f"No tuning job recorded ({TUNE_STEP}: {step.status})."


def _endpoint(request: Request, name: str) -> tuple[dict | None, str]:
    """The Vertex AI Endpoint a run deployed to, as it is now, or why it cannot be shown."""
    match = VERTEX_ENDPOINT.fullmatch(name)
    if match is None:
        return None, f"{name} is not a Vertex AI endpoint name"
    try:
        return vertex_endpoints(request.app).get(*match.groups()), ""
    except ServiceError as error:
        return None, str(error)


def _job_of_run(request: Request, run_id: str) -> TuningJob | None:
    """The tuning job (of either API) whose output folder is the run's hypertune folder."""
    for found in training_engine(request.app).records():
        if not (found["tuning"] and found.get("outputDir", "").rstrip("/").endswith(
                HYPERTUNE_DIR + run_id)):
            continue
        if found["kind"] == TUNING:
            return TuningJob.from_vertex_job(vertex_render(found))
        return TuningJob.from_ml_job(render_job(found))
    return None

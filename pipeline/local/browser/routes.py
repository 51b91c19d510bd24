"""Routes of the run browser: runs list, run page, step logs, the record as JSON.

Read-only views of `<home>/runs/<run_id>/` and of the local training service's jobs; every
request reads the files again, so a page shows a running run as it is now.
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
from pipeline.local.errors import ServiceError
from pipeline.local.home import LOCAL_PROJECT_ID, runs_dir
from pipeline.local.records import RunRecord, RunStore
from pipeline.local.services import training_service
from pipeline.local.summary import EVALUATE_STEP, RunSummary, step_output

router = APIRouter(include_in_schema=False)
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
TUNE_STEP = "tune-hyperparameters"
# The DSL gives the tuning job `job_dir={gcs_root}/jobdir/hypertune/{{workflow.uid}}`, and a
# local run's workflow.uid is its run id: how a running or failed tuning step's job is found.
HYPERTUNE_DIR = "/hypertune/"
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
    view = views.RunView(record, _summary(record), job, note,
                         metrics if isinstance(metrics, list) else [],
                         [o for o in ui if isinstance(o, dict)] if isinstance(ui, list) else [])
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


def _tuning_job(request: Request, record: RunRecord) -> tuple[dict | None, str]:
    """The tuning step's ml v1 Job from the local training service, or why there is none."""
    step = record.steps.get(TUNE_STEP)
    if step is None:
        return None, f"This run has no {TUNE_STEP} step."
    project = record.parameters.get("project_id") or LOCAL_PROJECT_ID
    service = training_service(request.app)
    job_id = (step_output(record, TUNE_STEP, "job_id") or "").strip()
    try:
        if job_id:
            return service.get_job(project, job_id), ""
        if step.status in (records.RUNNING, records.FAILED):  # no job_id output (yet)
            for job in service.list_jobs(project)["jobs"]:
                job_dir = (job.get("trainingInput") or {}).get("jobDir", "")
                if job_dir.rstrip("/").endswith(HYPERTUNE_DIR + record.run_id):
                    return job, ""
    except ServiceError as error:
        return None, f"Tuning job {job_id or '(unknown)'}: {error}"
    return None, f"No tuning job recorded ({TUNE_STEP}: {step.status})."

"""Routes of the run browser: runs list, run page, step logs, the record as JSON.

Read-only views of `<home>/runs/<run_id>/`, of the local training core's jobs (ml v1 or
Vertex AI, tuning_jobs.py) and of the Vertex AI endpoints; every request reads the files
again, so a page shows a running run as it is now. Steps are found by their role, not their
names (pipeline/local/roles.py).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse

from pipeline.local import records, roles
from pipeline.local.browser import views
from pipeline.local.errors import ServiceError
from pipeline.local.home import runs_dir
from pipeline.local.records import RUN_ID, RunRecord, RunStore
from pipeline.local.services import vertex_endpoints
from pipeline.local.summary import RunSummary
from pipeline.local.tuning_jobs import TuningJob, tuning_job

router = APIRouter(include_in_schema=False)
VERTEX_ENDPOINT = re.compile(r"projects/([^/]+)/locations/([^/]+)/endpoints/([^/]+)")
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
    job, note = tuning_job(record, request.app.state.home)
    summary = _summary(record, job)
    evaluate = record.steps.get(summary.evaluation_step or "") if summary else None
    artifacts = evaluate.artifacts if evaluate else {}
    metrics = _json_artifact(folder, artifacts.get(roles.METRICS_ARTIFACT)).get("metrics")
    ui = _json_artifact(folder, artifacts.get("mlpipeline-ui-metadata")).get("outputs")
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


def _summary(record: RunRecord, job: TuningJob | None = None) -> RunSummary | None:
    """The run's summary; None when the record cannot give one (e.g. no threshold)."""
    try:
        return RunSummary.of(record, job)
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


def _endpoint(request: Request, name: str) -> tuple[dict | None, str]:
    """The Vertex AI Endpoint a run deployed to, as it is now, or why it cannot be shown."""
    match = VERTEX_ENDPOINT.fullmatch(name)
    if match is None:
        return None, f"{name} is not a Vertex AI endpoint name"
    try:
        return vertex_endpoints(request.app).get(*match.groups()), ""
    except ServiceError as error:
        return None, str(error)

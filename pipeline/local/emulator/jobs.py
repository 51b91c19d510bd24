"""ml v1 `projects.jobs` routes (create, get, list, cancel) over the local TrainingService.

Paths are the discovery document's flatPaths. One TrainingService per app, made on first use
from `app.state.home` and closed when the server shuts down (running jobs end FAILED,
interrupted, and their trial processes are killed).
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pipeline.local.emulator.bodies import json_body
from pipeline.local.errors import InvalidArgument
from pipeline.local.services import training_service

router = APIRouter()


@router.post("/v1/projects/{project}/jobs")
async def create_job(project: str, request: Request) -> dict:
    """projects.jobs.create: validate, record QUEUED and start the job."""
    body = await json_body(request)
    return await run_in_threadpool(training_service(request.app).create_job, project, body)


@router.get("/v1/projects/{project}/jobs")
async def list_jobs(project: str, request: Request) -> dict:
    """projects.jobs.list: newest first, with pageSize/pageToken paging."""
    query = request.query_params
    if query.get("filter"):
        raise InvalidArgument("filter is not supported by the local emulator; list without it")
    size = query.get("pageSize", "0")
    if not size.isdigit():
        raise InvalidArgument(f"pageSize {size!r} is not a whole number >= 0")
    return await run_in_threadpool(training_service(request.app).list_jobs, project, int(size),
                                   query.get("pageToken", ""))


@router.get("/v1/projects/{project}/jobs/{job}")
async def get_job(project: str, job: str, request: Request) -> dict:
    """projects.jobs.get: the Job with its state and trainingOutput."""
    return await run_in_threadpool(training_service(request.app).get_job, project, job)


@router.post("/v1/projects/{project}/jobs/{job}:cancel")
async def cancel_job(project: str, job: str, request: Request) -> dict:
    """projects.jobs.cancel: returns Empty; the job turns CANCELLING, then CANCELLED."""
    return await run_in_threadpool(training_service(request.app).cancel_job, project, job)

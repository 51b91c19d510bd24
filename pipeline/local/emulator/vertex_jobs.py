"""aiplatform v1 `customJobs` and `hyperparameterTuningJobs` routes over the training core.

create, get, list (filter, pageSize, pageToken) and cancel; paths are the discovery
document's flatPaths. The jobs run on the same local training core as ml v1 jobs.
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pipeline.local.emulator.bodies import json_body
from pipeline.local.services import vertex_training
from pipeline.local.vertex_training import CUSTOM, TUNING

router = APIRouter(prefix="/v1/projects/{project}/locations/{location}")


def _routes(kind: str) -> None:
    """The four routes of one job collection."""

    async def create(project: str, location: str, request: Request) -> dict:
        body = await json_body(request)
        return await run_in_threadpool(vertex_training(request.app).create, kind, project,
                                       location, body)

    async def get(project: str, location: str, job: str, request: Request) -> dict:
        return await run_in_threadpool(vertex_training(request.app).get, kind, project,
                                       location, job)

    async def list_jobs(project: str, location: str, request: Request) -> dict:
        return await run_in_threadpool(vertex_training(request.app).list, kind, project,
                                       location, request.query_params)

    async def cancel(project: str, location: str, job: str, request: Request) -> dict:
        await json_body(request)  # a Cancel*JobRequest, which has no fields
        return await run_in_threadpool(vertex_training(request.app).cancel, kind, project,
                                       location, job)

    name = kind.removesuffix("s")
    router.add_api_route(f"/{kind}", create, methods=["POST"], summary=f"{kind}.create",
                         name=f"create_{name}")
    router.add_api_route(f"/{kind}", list_jobs, methods=["GET"], summary=f"{kind}.list",
                         name=f"list_{kind}")
    router.add_api_route(f"/{kind}/{{job}}", get, methods=["GET"], summary=f"{kind}.get",
                         name=f"get_{name}")
    router.add_api_route(f"/{kind}/{{job}}:cancel", cancel, methods=["POST"],
                         summary=f"{kind}.cancel", name=f"cancel_{name}")


_routes(CUSTOM)
_routes(TUNING)

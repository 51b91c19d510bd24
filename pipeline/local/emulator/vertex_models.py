"""aiplatform v1 `models` (upload, get, list) and `operations.get` routes over the registry.

Uploads copy and verify the artifact (and make its fast path) before they answer, so the
Operation they return is already done; it can still be polled, by its name, on any of the
three operations paths of the discovery document.
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pipeline.local.emulator.bodies import json_body
from pipeline.local.services import vertex_registry

router = APIRouter(prefix="/v1/projects/{project}/locations/{location}")


@router.post("/models:upload", summary="models.upload")
async def upload_model(project: str, location: str, request: Request) -> dict:
    """models.upload: an Operation whose response names the new model."""
    body = await json_body(request)
    return await run_in_threadpool(vertex_registry(request.app).upload_model, project,
                                   location, body)


@router.get("/models", summary="models.list")
async def list_models(project: str, location: str, request: Request) -> dict:
    """models.list: newest first, with filter, pageSize and pageToken."""
    return await run_in_threadpool(vertex_registry(request.app).list_models, project, location,
                                   request.query_params)


@router.get("/models/{model}", summary="models.get")
async def get_model(project: str, location: str, model: str, request: Request) -> dict:
    """models.get: the Model and the endpoints it is deployed to."""
    return await run_in_threadpool(vertex_registry(request.app).get_model, project, location,
                                   model)


@router.get("/operations/{operation}", summary="operations.get")
@router.get("/{collection}/{resource}/operations/{operation}",
            summary="models.operations.get, endpoints.operations.get")
async def get_operation(request: Request) -> dict:
    """operations.get: an Operation returned by upload, create, deploy or undeploy."""
    name = request.url.path.removeprefix("/v1/")
    return await run_in_threadpool(vertex_registry(request.app).get_operation, name)

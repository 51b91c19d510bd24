"""aiplatform v1 `endpoints` routes: create, get, list, deployModel, undeployModel.

Each change answers with a finished Operation; `:predict` is served by vertex_predict.py.
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pipeline.local.emulator.bodies import json_body
from pipeline.local.errors import InvalidArgument
from pipeline.local.services import vertex_endpoints

router = APIRouter(prefix="/v1/projects/{project}/locations/{location}/endpoints")


@router.post("", summary="endpoints.create")
async def create_endpoint(project: str, location: str, request: Request) -> dict:
    """endpoints.create: an Operation whose response is the new Endpoint."""
    body = await json_body(request)
    unknown = sorted(set(request.query_params) - {"endpointId", "alt", "$.xgafv"})
    if unknown:
        raise InvalidArgument(f"query parameter {unknown[0]!r} is not supported; use "
                              "endpointId")
    return await run_in_threadpool(vertex_endpoints(request.app).create, project, location,
                                   body, request.query_params.get("endpointId", ""))


@router.get("", summary="endpoints.list")
async def list_endpoints(project: str, location: str, request: Request) -> dict:
    """endpoints.list: newest first, with filter, pageSize and pageToken."""
    return await run_in_threadpool(vertex_endpoints(request.app).list, project, location,
                                   request.query_params)


@router.get("/{endpoint}", summary="endpoints.get")
async def get_endpoint(project: str, location: str, endpoint: str, request: Request) -> dict:
    """endpoints.get: the Endpoint, its deployed models and traffic split."""
    return await run_in_threadpool(vertex_endpoints(request.app).get, project, location,
                                   endpoint)


@router.post("/{endpoint}:deployModel", summary="endpoints.deployModel")
async def deploy_model(project: str, location: str, endpoint: str, request: Request) -> dict:
    """endpoints.deployModel: an Operation whose response is the DeployedModel."""
    body = await json_body(request)
    return await run_in_threadpool(vertex_endpoints(request.app).deploy, project, location,
                                   endpoint, body)


@router.post("/{endpoint}:undeployModel", summary="endpoints.undeployModel")
async def undeploy_model(project: str, location: str, endpoint: str, request: Request) -> dict:
    """endpoints.undeployModel: an Operation with an empty response."""
    body = await json_body(request)
    return await run_in_threadpool(vertex_endpoints(request.app).undeploy, project, location,
                                   endpoint, body)

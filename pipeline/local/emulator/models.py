"""ml v1 projects.models and projects.models.versions routes over the local model registry.

Paths and shapes follow the discovery document (`discovery/ml.v1.json`). Long-running
operations (version create/delete, model delete) finish before the response, so each returns
an Operation that is already `done`.
"""
from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pipeline.local.emulator.bodies import json_body
from pipeline.local.errors import InvalidArgument
from pipeline.local.services import registry

router = APIRouter(prefix="/v1/projects/{project}/models")

_TYPE = "type.googleapis.com/google.cloud.ml.v1."
_EMPTY = {"@type": "type.googleapis.com/google.protobuf.Empty"}


async def _call(request: Request, method: str, *args: Any, **kwargs: Any) -> Any:
    """Run a registry method in the thread pool: it copies files and unpickles models."""
    function: Callable[..., Any] = getattr(registry(request.app), method)
    return await run_in_threadpool(function, *args, **kwargs)


async def _body(request: Request) -> dict:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return body


def _page(request: Request, items: list[dict], field: str) -> dict:
    """One page of a list response: `pageToken` is the name of the last item already sent."""
    params = request.query_params
    if params.get("filter"):
        raise InvalidArgument("filter is not supported by the local registry; list without it")
    try:
        size = int(params.get("pageSize") or 0)
        after = base64.urlsafe_b64decode(params.get("pageToken", "")).decode()
    except ValueError:
        raise InvalidArgument("pageSize must be an integer and pageToken one returned by a "
                              "previous list call") from None
    if size < 0:
        raise InvalidArgument(f"pageSize {size} is negative; use 0 (no limit) or more")
    items = [item for item in items if item["name"] > after] if after else items
    page: dict[str, Any] = {field: items[:size]} if size else {field: items}
    if size and len(items) > size:
        last = page[field][-1]["name"]
        page["nextPageToken"] = base64.urlsafe_b64encode(last.encode()).decode()
    return page if page[field] else {}  # proto3 JSON omits an empty list


def _operation(project: str, kind: str, model: str, version: dict | None,
               response: dict) -> dict:
    """A finished google.longrunning Operation with ml v1 OperationMetadata."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    suffix = f"_{version['name'].rsplit('/', 1)[-1]}" if version else ""
    metadata = {"@type": _TYPE + "OperationMetadata", "createTime": now, "startTime": now,
                "endTime": now, "operationType": kind,
                "modelName": f"projects/{project}/models/{model}"}
    if version:
        metadata["version"] = version
    verb = kind.split("_")[0].lower()
    return {"name": f"projects/{project}/operations/{verb}_{model}{suffix}-{time.time_ns()}",
            "metadata": metadata, "done": True, "response": response}


@router.post("")
async def create_model(project: str, request: Request) -> dict:
    """projects.models.create"""
    return await _call(request, "create_model", await _body(request), project=project)


@router.get("")
async def list_models(project: str, request: Request) -> dict:
    """projects.models.list"""
    return _page(request, await _call(request, "list_models", project=project), "models")


@router.get("/{model}")
async def get_model(project: str, model: str, request: Request) -> dict:
    """projects.models.get"""
    return await _call(request, "get_model", model, project=project)


@router.delete("/{model}")
async def delete_model(project: str, model: str, request: Request) -> dict:
    """projects.models.delete"""
    await _call(request, "delete_model", model, project=project)
    return _operation(project, "DELETE_MODEL", model, None, _EMPTY)


@router.post("/{model}/versions")
async def create_version(project: str, model: str, request: Request) -> dict:
    """projects.models.versions.create"""
    body = await _body(request)
    version = await _call(request, "create_version", model, body, project=project)
    return _operation(project, "CREATE_VERSION", model, version,
                      {"@type": _TYPE + "Version", **version})


@router.get("/{model}/versions")
async def list_versions(project: str, model: str, request: Request) -> dict:
    """projects.models.versions.list"""
    versions = await _call(request, "list_versions", model, project=project)
    return _page(request, versions, "versions")


@router.get("/{model}/versions/{version}")
async def get_version(project: str, model: str, version: str, request: Request) -> dict:
    """projects.models.versions.get"""
    return await _call(request, "get_version", model, version, project=project)


@router.delete("/{model}/versions/{version}")
async def delete_version(project: str, model: str, version: str, request: Request) -> dict:
    """projects.models.versions.delete"""
    deleted = await _call(request, "delete_version", model, version, project=project)
    return _operation(project, "DELETE_VERSION", model, deleted, _EMPTY)


@router.post("/{model}/versions/{version}:setDefault")
async def set_default(project: str, model: str, version: str, request: Request) -> dict:
    """projects.models.versions.setDefault"""
    await _body(request)  # a SetDefaultVersionRequest, which has no fields
    return await _call(request, "set_default", model, version, project=project)

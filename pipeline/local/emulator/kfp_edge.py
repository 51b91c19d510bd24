"""The edge of the local KFP v1beta1 API: its error JSON, the service behind an app, helpers.

Domain errors (`pipeline.local.errors`) raised below the routes become the API server's
grpc-gateway error body `{"error", "code", "message", "details"}` with the matching HTTP
status here, in one place (`KfpRoute`). Bodies and fields are read as proto JSON: snake_case
(what kfp's client sends) or lowerCamelCase names.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from pipeline.errors import one_line
from pipeline.local.errors import InvalidArgument, NotFound, ServiceError
from pipeline.local.kfp_runs import LaunchSettings, RunLauncher
from pipeline.local.kfp_store import Experiment, KfpStore

API = "/apis/v1beta1"
# google.rpc.Code of each domain error status, as grpc-gateway puts it in `code`.
RPC_CODES = {"INVALID_ARGUMENT": 3, "NOT_FOUND": 5, "ALREADY_EXISTS": 6,
             "FAILED_PRECONDITION": 9, "UNIMPLEMENTED": 12, "INTERNAL": 13}
_lock = threading.Lock()


class Unimplemented(ServiceError):
    code = 501
    status = "UNIMPLEMENTED"


def kfp_error(status: int, rpc_code: int, message: str) -> JSONResponse:
    """The KFP API server's error body; details carry its api.Error (as the upload server's)."""
    detail = {"@type": "type.googleapis.com/api.Error", "error_message": message,
              "error_details": message}
    return JSONResponse({"error": message, "code": rpc_code, "message": message,
                         "details": [detail]}, status_code=status)


class KfpRoute(APIRoute):
    """Turns domain errors into KFP's error JSON at this API's edge."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as error:
                return kfp_error(error.code, RPC_CODES.get(error.status, 13), one_line(error))

        return handle


@dataclass
class KfpService:
    """The store and the run launcher behind one server app."""

    store: KfpStore
    launcher: RunLauncher


def kfp_service(app: Any) -> KfpService:
    """The app's KFP service, made on first use; its runs are stopped at shutdown.

    `app.state.kfp_settings` (a LaunchSettings, set by `covertype serve`) says how runs
    execute; default: the lab's rows, a few runs at a time.
    """
    with _lock:
        service = getattr(app.state, "kfp", None)
        if service is None:
            store = KfpStore(app.state.home)
            settings = getattr(app.state, "kfp_settings", None) or LaunchSettings()
            service = app.state.kfp = KfpService(store, RunLauncher(store, settings))
            app.router.on_shutdown.append(service.launcher.close)
    return service


def store_of(request: Request) -> KfpStore:
    """The store of the request's app."""
    return kfp_service(request.app).store


def single_user(references: Any) -> None:
    """Refuse a namespace reference: like KFP in single-user mode."""
    for item in references if isinstance(references, list) else []:
        key = field(item, "key") or {}
        if field(key, "type") == "NAMESPACE" and field(key, "id"):
            raise InvalidArgument("the local KFP API is single-user: drop the namespace "
                                  "(kfp --namespace, ~/.config/kfp/context.json)")


def reference_filter(request: Request, allowed: tuple[str, ...]) -> str:
    """`resource_reference_key.{type,id}` of a list request: the id of an allowed type."""
    kind = request.query_params.get("resource_reference_key.type", "")
    key_id = request.query_params.get("resource_reference_key.id", "")
    if kind in ("", "UNKNOWN_RESOURCE_TYPE") or (kind == "NAMESPACE" and not key_id):
        return ""
    if kind == "NAMESPACE":
        single_user([{"key": {"type": kind, "id": key_id}}])
    if kind not in allowed:
        raise InvalidArgument(f"cannot list by a {kind} reference here")
    return key_id


def run_document(store: KfpStore, run_id: str) -> dict:
    """The workflow a run executes, as data."""
    return yaml.load(store.run_package(run_id).read_text(),
                     Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def experiment_name(store: KfpStore, experiment_id: str) -> str:
    """The experiment's name; "" once it is gone."""
    try:
        return store.get(Experiment, experiment_id).name
    except NotFound:
        return ""


async def json_body(request: Request) -> dict:
    """The request's JSON object (the security middleware bounds its size)."""
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as error:
        raise InvalidArgument(f"the request body is not JSON ({one_line(error)})") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the request body is not a JSON object")
    return body


def field(message: Any, name: str) -> Any:
    """A proto JSON field by its original (snake_case) or lowerCamelCase name."""
    if not isinstance(message, dict):
        return None
    if name in message:
        return message[name]
    head, *rest = name.split("_")
    return message.get(head + "".join(part.capitalize() for part in rest))

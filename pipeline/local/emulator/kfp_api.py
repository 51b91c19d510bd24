"""The KFP v1beta1 REST subset that kfp 1.8's CLI and `kfp.Client` call, over the local store.

Healthz; pipelines (multipart upload and upload_version, list, get, delete, template);
pipeline versions (list, get, delete, template); experiments (create, list, get); runs
(create, list, get, terminate), which execute in the background with the local runner
(`pipeline.local.kfp_runs`). Paths, query names and JSON shapes follow
backend/api/v1beta1/swagger of kubeflow/pipelines; errors have the API server's
grpc-gateway shape `{"error", "code", "message", "details"}` with the matching HTTP status,
and any other path under /apis/v1beta1 answers UNIMPLEMENTED. Every handler reads its
query itself, so no FastAPI validation error (a different shape) can reach a KFP client.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from pipeline.errors import one_line
from pipeline.local.emulator import kfp_listing as listing
from pipeline.local.emulator.kfp_shapes import (
    experiment_json,
    pipeline_json,
    run_detail_json,
    run_json,
    version_json,
)
from pipeline.local.errors import InvalidArgument, NotFound, ServiceError
from pipeline.local.home import runs_dir
from pipeline.local.kfp_runs import LaunchSettings, RunLauncher, view_run
from pipeline.local.kfp_store import Experiment, KfpStore, Pipeline, Run, Version, now
from pipeline.local.owner import current_owner
from pipeline.local.package import MAX_PACKAGE_BYTES
from pipeline.local.records import RunStore, new_run_id
from pipeline.local.run_local import run_parameters
from pipeline.local.workflow import Workflow

API = "/apis/v1beta1"
UPLOAD_NAME_LIMIT = 100  # the KFP upload server's limit on a pipeline (version) name
DEFAULT_EXPERIMENT = "Default"  # where KFP puts a run created without an experiment
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


router = APIRouter(route_class=KfpRoute, include_in_schema=False)


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


def _store(request: Request) -> KfpStore:
    return kfp_service(request.app).store


# Healthz and pipelines -----------------------------------------------------------------
@router.get(f"{API}/healthz")
async def healthz() -> dict:
    """GetHealthz: a single-user deployment."""
    return {"multi_user": False}


@router.post(f"{API}/pipelines/upload")
async def upload_pipeline(request: Request) -> dict:
    """UploadPipeline: multipart `uploadfile`; query `name` (default: the file name)."""
    filename, data = await _uploaded_file(request)
    name = _upload_name(request.query_params.get("name") or filename, "pipeline")
    store = _store(request)
    pipeline, version = await run_in_threadpool(
        store.create_pipeline, name, request.query_params.get("description", ""), filename, data)
    return pipeline_json(pipeline, version)


@router.post(f"{API}/pipelines/upload_version")
async def upload_pipeline_version(request: Request) -> dict:
    """UploadPipelineVersion: multipart `uploadfile`; query `name`, `pipelineid`."""
    filename, data = await _uploaded_file(request)
    name = _upload_name(request.query_params.get("name") or filename, "pipeline version")
    pipeline_id = request.query_params.get("pipelineid", "")
    if not pipeline_id:
        raise InvalidArgument("Please specify a pipeline id when creating versions.")
    version = await run_in_threadpool(
        _store(request).create_version, pipeline_id, name,
        request.query_params.get("description", ""), filename, data)
    return version_json(version)


@router.get(f"{API}/pipelines")
def list_pipelines(request: Request) -> dict:
    """ListPipelines: paging, sort_by and name filters."""
    store = _store(request)
    page, total, token = listing.page(store.list(Pipeline), request.query_params)
    return {"pipelines": [pipeline_json(item, _default_version(store, item)) for item in page],
            **listing.page_fields(total, token)}


@router.get(f"{API}/pipelines/{{pipeline_id}}")
def get_pipeline(pipeline_id: str, request: Request) -> dict:
    store = _store(request)
    pipeline = store.get(Pipeline, pipeline_id)
    return pipeline_json(pipeline, _default_version(store, pipeline))


@router.delete(f"{API}/pipelines/{{pipeline_id}}")
def delete_pipeline(pipeline_id: str, request: Request) -> dict:
    """DeletePipeline: the pipeline and its versions (runs keep their own package)."""
    _store(request).delete_pipeline(pipeline_id)
    return {}


@router.get(f"{API}/pipelines/{{pipeline_id}}/templates")
def get_template(pipeline_id: str, request: Request) -> dict:
    """GetTemplate: the default version's workflow YAML."""
    store = _store(request)
    pipeline = store.get(Pipeline, pipeline_id)
    return {"template": store.package(pipeline.default_version_id).read_text()}


@router.get(f"{API}/pipeline_versions")
def list_pipeline_versions(request: Request) -> dict:
    """ListPipelineVersions of the pipeline named by `resource_key.type=PIPELINE`."""
    query = request.query_params
    if query.get("resource_key.type") != "PIPELINE" or not query.get("resource_key.id"):
        raise InvalidArgument("List pipeline versions needs resource_key.type=PIPELINE and "
                              "resource_key.id=<pipeline id>")
    store = _store(request)
    store.get(Pipeline, query["resource_key.id"])
    page, total, token = listing.page(store.versions(query["resource_key.id"]), query)
    return {"versions": [version_json(item) for item in page],
            **listing.page_fields(total, token)}


@router.get(f"{API}/pipeline_versions/{{version_id}}")
def get_pipeline_version(version_id: str, request: Request) -> dict:
    return version_json(_store(request).get(Version, version_id))


@router.delete(f"{API}/pipeline_versions/{{version_id}}")
def delete_pipeline_version(version_id: str, request: Request) -> dict:
    _store(request).delete_version(version_id)
    return {}


@router.get(f"{API}/pipeline_versions/{{version_id}}/templates")
def get_pipeline_version_template(version_id: str, request: Request) -> dict:
    store = _store(request)
    store.get(Version, version_id)
    return {"template": store.package(version_id).read_text()}


# Experiments ---------------------------------------------------------------------------
@router.post(f"{API}/experiments")
async def create_experiment(request: Request) -> dict:
    """CreateExperiment from an ApiExperiment body (name, description)."""
    body = await _json_body(request)
    _single_user(_field(body, "resource_references") or [])
    experiment = _store(request).create_experiment(str(_field(body, "name") or ""),
                                                   str(_field(body, "description") or ""))
    return experiment_json(experiment)


@router.get(f"{API}/experiments")
def list_experiments(request: Request) -> dict:
    """ListExperiments: paging, sort_by and name filters."""
    _reference_filter(request, allowed=())
    page, total, token = listing.page(_store(request).list(Experiment), request.query_params)
    return {"experiments": [experiment_json(item) for item in page],
            **listing.page_fields(total, token)}


@router.get(f"{API}/experiments/{{experiment_id}}")
def get_experiment(experiment_id: str, request: Request) -> dict:
    return experiment_json(_store(request).get(Experiment, experiment_id))


# Runs ----------------------------------------------------------------------------------
@router.post(f"{API}/runs")
async def create_run(request: Request) -> dict:
    """CreateRun from an ApiRun: a workflow manifest, a pipeline id or a version reference,
    with parameters and an experiment; the run is queued for the local runner."""
    body = await _json_body(request)
    service = kfp_service(request.app)
    return await run_in_threadpool(_create_run, service, body)


@router.get(f"{API}/runs")
def list_runs(request: Request) -> dict:
    """ListRuns: paging, sort_by, name filters, and runs of one experiment."""
    experiment_id = _reference_filter(request, allowed=("EXPERIMENT",))
    store = _store(request)
    runs = [run for run in store.list(Run)
            if not experiment_id or run.experiment_id == experiment_id]
    page, total, token = listing.page(runs, request.query_params)
    return {"runs": [run_json(view_run(store, run.id), _document(store, run.id),
                              _experiment_name(store, run.experiment_id)) for run in page],
            **listing.page_fields(total, token)}


@router.get(f"{API}/runs/{{run_id}}")
def get_run(run_id: str, request: Request) -> dict:
    """GetRun: status and the runtime workflow manifest, read from the run record."""
    store = _store(request)
    view = view_run(store, run_id)
    return run_detail_json(view, _document(store, run_id),
                           _experiment_name(store, view.run.experiment_id))


@router.post(f"{API}/runs/{{run_id}}/terminate")
def terminate_run(run_id: str, request: Request) -> dict:
    """TerminateRun: stop it like Ctrl-C; a queued run never starts."""
    kfp_service(request.app).launcher.terminate(run_id)
    return {}


@router.api_route(f"{API}/{{rest:path}}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unimplemented(rest: str, request: Request) -> dict:
    raise Unimplemented(f"the local KFP API does not serve {request.method} {API}/{rest}; "
                        "it serves what kfp 1.8's CLI and Client use (see the README)")


# Helpers -------------------------------------------------------------------------------
def _create_run(service: KfpService, body: dict) -> dict:
    store = service.store
    name = str(_field(body, "name") or "")
    if not name.strip():
        raise InvalidArgument("The run name is empty. Please specify a valid name.")
    spec = _field(body, "pipeline_spec") or {}
    if not isinstance(spec, dict):
        raise InvalidArgument("pipeline_spec is not an object")
    if _field(spec, "pipeline_manifest") or _field(spec, "runtime_config"):
        raise InvalidArgument("pipeline_manifest and runtime_config are KFP v2; the local KFP "
                              "API runs v1 workflow manifests")
    experiment, version, pipeline = _run_references(store, _field(body, "resource_references")
                                                    or [])
    manifest = _field(spec, "workflow_manifest")
    pipeline_id = _field(spec, "pipeline_id")
    if manifest and (pipeline_id or version):
        raise InvalidArgument("Please don't specify a pipeline version or pipeline ID when you "
                              "specify a workflow manifest.")
    if version is not None:
        pipeline = pipeline or store.get(Pipeline, version.pipeline_id)
        text = store.package(version.id).read_text()
    elif pipeline_id:
        pipeline = store.get(Pipeline, pipeline_id)
        if not pipeline.default_version_id:
            raise InvalidArgument(f"pipeline {pipeline_id} has no version; upload one")
        text = store.package(pipeline.default_version_id).read_text()
    elif manifest:
        text = _manifest_yaml(manifest)
    else:
        raise InvalidArgument("pipeline_spec needs a workflow_manifest or a pipeline_id, or "
                              "a PIPELINE_VERSION resource reference")
    parameters = _run_parameters_of(spec)
    _check_parameters(store, text, parameters)
    run_id = new_run_id()
    while (store.run_package(run_id).exists()
           or RunStore(runs_dir(store.home)).folder(run_id).exists()):
        run_id = new_run_id()
    run = Run(id=run_id, name=name, description=str(_field(body, "description") or ""),
              created_at=now(), experiment_id=experiment.id,
              parameters=[{"name": key, "value": value} for key, value in parameters.items()],
              pipeline_id=pipeline.id if pipeline else "",
              pipeline_name=pipeline.name if pipeline else "",
              version_id=version.id if version else "", version_name=version.name if version
              else "", service_account=str(_field(body, "service_account") or ""),
              server=current_owner())
    store.create_run(run, text)
    service.launcher.submit(run_id)
    return run_detail_json(view_run(store, run_id), yaml.safe_load(text), experiment.name)


def _run_references(store: KfpStore, references: Any
                    ) -> tuple[Experiment, Version | None, Pipeline | None]:
    """The run's experiment (default: "Default", made if missing) and pipeline version."""
    if not isinstance(references, list):
        raise InvalidArgument("resource_references is not a list")
    _single_user(references)
    experiment = version = pipeline = None
    for item in references:
        key = _field(item, "key") or {}
        kind, key_id = _field(key, "type"), str(_field(key, "id") or "")
        if kind == "EXPERIMENT":
            experiment = store.get(Experiment, key_id)
        elif kind == "PIPELINE_VERSION":
            version = store.get(Version, key_id)
        elif kind == "PIPELINE":
            pipeline = store.get(Pipeline, key_id)
        elif kind != "NAMESPACE":
            raise InvalidArgument(f"a run cannot refer to a {kind}; refer to an EXPERIMENT or "
                                  "a PIPELINE_VERSION")
    if experiment is None:
        found = [item for item in store.list(Experiment) if item.name == DEFAULT_EXPERIMENT]
        experiment = found[0] if found else store.create_experiment(DEFAULT_EXPERIMENT, "")
    if version is not None and pipeline is not None and version.pipeline_id != pipeline.id:
        raise InvalidArgument(f"pipeline version {version.id} is not a version of pipeline "
                              f"{pipeline.id}")
    return experiment, version, pipeline


def _run_parameters_of(spec: dict) -> dict[str, str]:
    items = _field(spec, "parameters") or []
    if not isinstance(items, list):
        raise InvalidArgument("pipeline_spec.parameters is not a list")
    parameters: dict[str, str] = {}
    for item in items:
        name = _field(item, "name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"a parameter has no name: {item!r}")
        if name in parameters:
            raise InvalidArgument(f"parameter {name} is given twice")
        parameters[name] = str(_field(item, "value") or "")
    return parameters


def _check_parameters(store: KfpStore, text: str, parameters: dict[str, str]) -> None:
    """Refuse what the run would refuse, before it is queued: names, missing, bad values."""
    workflow = _workflow(store, text)
    unknown = sorted(set(parameters) - set(workflow.parameters))
    if unknown:
        raise InvalidArgument(f"Failed to verify parameters.: Unrecognized input parameter: "
                              f"{unknown[0]}")
    try:
        run_parameters(workflow, parameters, store.home)
    except ValueError as error:
        raise InvalidArgument(one_line(error)) from None


def _workflow(store: KfpStore, text: str) -> Workflow:
    return store.read_workflow("workflow_manifest.yaml", text.encode(),
                               context="Failed to create a new run")[1]


def _manifest_yaml(manifest: Any) -> str:
    """A run's workflow_manifest (a JSON string, as kfp.Client sends it) as package YAML."""
    try:
        document = json.loads(manifest) if isinstance(manifest, str) else None
    except ValueError as error:
        raise InvalidArgument(f"workflow_manifest is not JSON ({one_line(error)})") from None
    if not isinstance(document, dict):
        raise InvalidArgument("workflow_manifest is not a JSON object (an Argo Workflow)")
    if len(manifest) > MAX_PACKAGE_BYTES:
        raise InvalidArgument(f"workflow_manifest is more than {MAX_PACKAGE_BYTES} bytes")
    return yaml.safe_dump(document, sort_keys=False)


def _single_user(references: list) -> None:
    for item in references if isinstance(references, list) else []:
        key = _field(item, "key") or {} if isinstance(item, dict) else {}
        if _field(key, "type") == "NAMESPACE" and _field(key, "id"):
            raise InvalidArgument("the local KFP API is single-user: drop the namespace "
                                  "(kfp --namespace, ~/.config/kfp/context.json)")


def _reference_filter(request: Request, allowed: tuple[str, ...]) -> str:
    """`resource_reference_key.{type,id}` of a list request: the id of an allowed type."""
    kind = request.query_params.get("resource_reference_key.type", "")
    key_id = request.query_params.get("resource_reference_key.id", "")
    if kind in ("", "UNKNOWN_RESOURCE_TYPE") or (kind == "NAMESPACE" and not key_id):
        return ""
    if kind == "NAMESPACE":
        _single_user([{"key": {"type": kind, "id": key_id}}])
    if kind not in allowed:
        raise InvalidArgument(f"cannot list by a {kind} reference here")
    return key_id


def _default_version(store: KfpStore, pipeline: Pipeline) -> Version | None:
    try:
        return store.get(Version, pipeline.default_version_id)
    except NotFound:
        return None


def _document(store: KfpStore, run_id: str) -> dict:
    return yaml.load(store.run_package(run_id).read_text(),
                     Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _experiment_name(store: KfpStore, experiment_id: str) -> str:
    try:
        return store.get(Experiment, experiment_id).name
    except NotFound:
        return ""


async def _uploaded_file(request: Request) -> tuple[str, bytes]:
    """(file name, content) of the multipart `uploadfile` field."""
    try:
        form = await request.form(max_files=1, max_fields=8)
    except MultiPartException as error:
        raise InvalidArgument(f"Failed to read pipeline from file: {one_line(error)}") from None
    upload = form.get("uploadfile")
    if not isinstance(upload, UploadFile):
        raise InvalidArgument("Failed to read pipeline from file: no multipart/form-data "
                              "field uploadfile (kfp pipeline upload sends it)")
    data = await upload.read(MAX_PACKAGE_BYTES + 1)
    if len(data) > MAX_PACKAGE_BYTES:
        raise InvalidArgument(f"Error read pipeline file. The file is more than "
                              f"{MAX_PACKAGE_BYTES} bytes")
    return upload.filename or "", data


def _upload_name(name: str, kind: str) -> str:
    if len(name) > UPLOAD_NAME_LIMIT:
        raise InvalidArgument(f"Invalid {kind} name. {kind.capitalize()} name too long. "
                              f"Support maximum length of {UPLOAD_NAME_LIMIT}")
    return name


async def _json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as error:
        raise InvalidArgument(f"the request body is not JSON ({one_line(error)})") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the request body is not a JSON object")
    return body


def _field(message: Any, name: str) -> Any:
    """A proto JSON field by its original (snake_case) or lowerCamelCase name."""
    if not isinstance(message, dict):
        return None
    if name in message:
        return message[name]
    head, *rest = name.split("_")
    return message.get(head + "".join(part.capitalize() for part in rest))

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

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from pipeline.errors import one_line
from pipeline.local.emulator import kfp_listing as listing
from pipeline.local.emulator import kfp_runs_api
from pipeline.local.emulator.kfp_edge import (
    API,
    KfpRoute,
    Unimplemented,
    field,
    json_body,
    reference_filter,
    single_user,
    store_of,
)
from pipeline.local.emulator.kfp_shapes import experiment_json, pipeline_json, version_json
from pipeline.local.errors import InvalidArgument, NotFound
from pipeline.local.kfp_store import Experiment, KfpStore, Pipeline, Version
from pipeline.local.package import MAX_PACKAGE_BYTES

UPLOAD_NAME_LIMIT = 100  # the KFP upload server's limit on a pipeline (version) name
router = APIRouter(route_class=KfpRoute, include_in_schema=False)


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
    store = store_of(request)
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
        store_of(request).create_version, pipeline_id, name,
        request.query_params.get("description", ""), filename, data)
    return version_json(version)


@router.get(f"{API}/pipelines")
def list_pipelines(request: Request) -> dict:
    """ListPipelines: paging, sort_by and name filters."""
    store = store_of(request)
    page, total, token = listing.page(store.list(Pipeline), request.query_params)
    items = [pipeline_json(item, _default_version(store, item)) for item in page]
    return listing.listing("pipelines", items, total, token)


@router.get(f"{API}/pipelines/{{pipeline_id}}")
def get_pipeline(pipeline_id: str, request: Request) -> dict:
    store = store_of(request)
    pipeline = store.get(Pipeline, pipeline_id)
    return pipeline_json(pipeline, _default_version(store, pipeline))


@router.delete(f"{API}/pipelines/{{pipeline_id}}")
def delete_pipeline(pipeline_id: str, request: Request) -> dict:
    """DeletePipeline: the pipeline and its versions (runs keep their own package)."""
    store_of(request).delete_pipeline(pipeline_id)
    return {}


@router.get(f"{API}/pipelines/{{pipeline_id}}/templates")
def get_template(pipeline_id: str, request: Request) -> dict:
    """GetTemplate: the default version's workflow YAML."""
    store = store_of(request)
    pipeline = store.get(Pipeline, pipeline_id)
    return {"template": store.package(pipeline.default_version_id).read_text()}


@router.get(f"{API}/pipeline_versions")
def list_pipeline_versions(request: Request) -> dict:
    """ListPipelineVersions of the pipeline named by `resource_key.type=PIPELINE`."""
    query = request.query_params
    if query.get("resource_key.type") != "PIPELINE" or not query.get("resource_key.id"):
        raise InvalidArgument("List pipeline versions needs resource_key.type=PIPELINE and "
                              "resource_key.id=<pipeline id>")
    store = store_of(request)
    store.get(Pipeline, query["resource_key.id"])
    page, total, token = listing.page(store.versions(query["resource_key.id"]), query)
    return listing.listing("versions", [version_json(item) for item in page], total, token)


@router.get(f"{API}/pipeline_versions/{{version_id}}")
def get_pipeline_version(version_id: str, request: Request) -> dict:
    return version_json(store_of(request).get(Version, version_id))


@router.delete(f"{API}/pipeline_versions/{{version_id}}")
def delete_pipeline_version(version_id: str, request: Request) -> dict:
    store_of(request).delete_version(version_id)
    return {}


@router.get(f"{API}/pipeline_versions/{{version_id}}/templates")
def get_pipeline_version_template(version_id: str, request: Request) -> dict:
    store = store_of(request)
    store.get(Version, version_id)
    return {"template": store.package(version_id).read_text()}


# Experiments ---------------------------------------------------------------------------
@router.post(f"{API}/experiments")
async def create_experiment(request: Request) -> dict:
    """CreateExperiment from an ApiExperiment body (name, description)."""
    body = await json_body(request)
    single_user(field(body, "resource_references") or [])
    experiment = store_of(request).create_experiment(str(field(body, "name") or ""),
                                                   str(field(body, "description") or ""))
    return experiment_json(experiment)


@router.get(f"{API}/experiments")
def list_experiments(request: Request) -> dict:
    """ListExperiments: paging, sort_by and name filters."""
    reference_filter(request, allowed=())
    page, total, token = listing.page(store_of(request).list(Experiment), request.query_params)
    items = [experiment_json(item) for item in page]
    return listing.listing("experiments", items, total, token)


@router.get(f"{API}/experiments/{{experiment_id}}")
def get_experiment(experiment_id: str, request: Request) -> dict:
    return experiment_json(store_of(request).get(Experiment, experiment_id))


# Runs ----------------------------------------------------------------------------------
router.include_router(kfp_runs_api.router)


@router.api_route(f"{API}/{{rest:path}}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unimplemented(rest: str, request: Request) -> dict:
    raise Unimplemented(f"the local KFP API does not serve {request.method} {API}/{rest}; "
                        "it serves what kfp 1.8's CLI and Client use (see the README)")


# Helpers -------------------------------------------------------------------------------
def _default_version(store: KfpStore, pipeline: Pipeline) -> Version | None:
    try:
        return store.get(Version, pipeline.default_version_id)
    except NotFound:
        return None


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



"""KFP v1beta1 runs of the local server: create, list, get, terminate.

A created run is queued for the local runner and executes its own copy of the package; its
status and runtime workflow are read from its local run record (`pipeline.local.kfp_runs`).
"""
from __future__ import annotations

import json
from typing import Any

import yaml
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pipeline.errors import one_line
from pipeline.local.emulator import kfp_listing as listing
from pipeline.local.emulator.kfp_edge import (
    API,
    KfpRoute,
    KfpService,
    experiment_name,
    field,
    json_body,
    kfp_service,
    reference_filter,
    run_document,
    single_user,
    store_of,
)
from pipeline.local.emulator.kfp_shapes import run_detail_json, run_json
from pipeline.local.errors import InvalidArgument
from pipeline.local.home import runs_dir
from pipeline.local.kfp_runs import view_run
from pipeline.local.kfp_store import Experiment, KfpStore, Pipeline, Run, Version, now
from pipeline.local.owner import current_owner
from pipeline.local.package import MAX_PACKAGE_BYTES
from pipeline.local.records import RunStore, new_run_id
from pipeline.local.run_local import run_parameters
from pipeline.local.workflow import Workflow

DEFAULT_EXPERIMENT = "Default"  # where KFP puts a run created without an experiment
router = APIRouter(route_class=KfpRoute)


@router.post(f"{API}/runs")
async def create_run(request: Request) -> dict:
    """CreateRun from an ApiRun: a workflow manifest, a pipeline id or a version reference,
    with parameters and an experiment; the run is queued for the local runner."""
    body = await json_body(request)
    service = kfp_service(request.app)
    return await run_in_threadpool(_create_run, service, body)


@router.get(f"{API}/runs")
def list_runs(request: Request) -> dict:
    """ListRuns: paging, sort_by, name filters, and runs of one experiment."""
    experiment_id = reference_filter(request, allowed=("EXPERIMENT",))
    store = store_of(request)
    runs = [run for run in store.list(Run)
            if not experiment_id or run.experiment_id == experiment_id]
    page, total, token = listing.page(runs, request.query_params)
    items = [run_json(view_run(store, run.id), run_document(store, run.id),
                      experiment_name(store, run.experiment_id)) for run in page]
    return listing.listing("runs", items, total, token)


@router.get(f"{API}/runs/{{run_id}}")
def get_run(run_id: str, request: Request) -> dict:
    """GetRun: status and the runtime workflow manifest, read from the run record."""
    store = store_of(request)
    view = view_run(store, run_id)
    return run_detail_json(view, run_document(store, run_id),
                           experiment_name(store, view.run.experiment_id))


@router.post(f"{API}/runs/{{run_id}}/terminate")
def terminate_run(run_id: str, request: Request) -> dict:
    """TerminateRun: stop it like Ctrl-C; a queued run never starts."""
    kfp_service(request.app).launcher.terminate(run_id)
    return {}


def _create_run(service: KfpService, body: dict) -> dict:
    store = service.store
    name = str(field(body, "name") or "")
    if not name.strip():
        raise InvalidArgument("The run name is empty. Please specify a valid name.")
    spec = field(body, "pipeline_spec") or {}
    if not isinstance(spec, dict):
        raise InvalidArgument("pipeline_spec is not an object")
    if field(spec, "pipeline_manifest") or field(spec, "runtime_config"):
        raise InvalidArgument("pipeline_manifest and runtime_config are KFP v2; the local KFP "
                              "API runs v1 workflow manifests")
    experiment, version, pipeline = _run_references(store, field(body, "resource_references")
                                                    or [])
    manifest = field(spec, "workflow_manifest")
    pipeline_id = field(spec, "pipeline_id")
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
    run = Run(id=run_id, name=name, description=str(field(body, "description") or ""),
              created_at=now(), experiment_id=experiment.id,
              parameters=[{"name": key, "value": value} for key, value in parameters.items()],
              pipeline_id=pipeline.id if pipeline else "",
              pipeline_name=pipeline.name if pipeline else "",
              version_id=version.id if version else "", version_name=version.name if version
              else "", service_account=str(field(body, "service_account") or ""),
              server=current_owner())
    store.create_run(run, text)
    service.launcher.submit(run_id)
    return run_detail_json(view_run(store, run_id), yaml.safe_load(text), experiment.name)


def _run_references(store: KfpStore, references: Any
                    ) -> tuple[Experiment, Version | None, Pipeline | None]:
    """The run's experiment (default: "Default", made if missing) and pipeline version."""
    if not isinstance(references, list):
        raise InvalidArgument("resource_references is not a list")
    single_user(references)
    experiment = version = pipeline = None
    for item in references:
        key = field(item, "key") or {}
        kind, key_id = field(key, "type"), str(field(key, "id") or "")
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
    items = field(spec, "parameters") or []
    if not isinstance(items, list):
        raise InvalidArgument("pipeline_spec.parameters is not a list")
    parameters: dict[str, str] = {}
    for item in items:
        name = field(item, "name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"a parameter has no name: {item!r}")
        if name in parameters:
            raise InvalidArgument(f"parameter {name} is given twice")
        parameters[name] = str(field(item, "value") or "")
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



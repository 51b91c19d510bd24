"""KFP v1beta1 JSON shapes of the local store's objects (backend/api/v1beta1 swagger).

Fields are snake_case and defaults are left out, as the KFP API server's grpc-gateway
prints them (`OrigName`, no `EmitDefaults`). A run's `pipeline_runtime.workflow_manifest` is
an Argo Workflow whose `status` (phase, nodes with their phases, times and output
parameters) is read from the local run record, so clients that read Argo's status work.
"""
from __future__ import annotations

import json
import zlib
from datetime import datetime
from typing import Any

from pipeline.local import records
from pipeline.local.kfp_runs import TERMINATED_MESSAGE, RunView
from pipeline.local.kfp_store import Experiment, Pipeline, Version
from pipeline.local.records import StepRecord

NEVER = "1970-01-01T00:00:00Z"  # KFP's finished_at of a run that has not finished
AVAILABLE = "STORAGESTATE_AVAILABLE"
NAMESPACE = "kubeflow"
# Argo node phase of each local step state; Interrupted is resolved per run (see _node_phase).
_NODE_PHASE = {records.RUNNING: "Running", records.SUCCEEDED: "Succeeded",
               records.FAILED: "Failed", records.SKIPPED: "Skipped",
               records.OMITTED: "Omitted"}


def compact(value: Any) -> Any:
    """Leave out defaults (None, "", False, 0, empty lists and objects), as proto3 JSON does."""
    if isinstance(value, dict):
        items = ((key, compact(item)) for key, item in value.items())
        return {key: item for key, item in items if not _default(item)}
    if isinstance(value, list):
        return [compact(item) for item in value]
    return value


def _default(value: Any) -> bool:
    return value is None or value is False or value in ("", [], {}) or (
        type(value) is int and value == 0)


def timestamp(text: str) -> str:
    """An ISO time from the store or a run record, to RFC 3339 in whole seconds."""
    return text.split(".")[0].rstrip("Z") + "Z" if text else ""


def reference(kind: str, key_id: str, relationship: str, name: str = "") -> dict:
    return {"key": {"type": kind, "id": key_id}, "name": name, "relationship": relationship}


def version_json(version: Version) -> dict:
    return compact({
        "id": version.id, "name": version.name, "created_at": timestamp(version.created_at),
        "parameters": version.parameters, "description": version.description,
        "resource_references": [reference("PIPELINE", version.pipeline_id, "OWNER")],
    })


def pipeline_json(pipeline: Pipeline, default: Version | None) -> dict:
    return compact({
        "id": pipeline.id, "name": pipeline.name, "description": pipeline.description,
        "created_at": timestamp(pipeline.created_at),
        "parameters": default.parameters if default else [],
        "default_version": version_json(default) if default else None,
    })


def experiment_json(experiment: Experiment) -> dict:
    return compact({
        "id": experiment.id, "name": experiment.name, "description": experiment.description,
        "created_at": timestamp(experiment.created_at), "storage_state": AVAILABLE,
    })


def run_json(view: RunView, document: dict, experiment_name: str) -> dict:
    """ApiRun: what was asked (pipeline spec, parameters, references) and its status."""
    run = view.run
    references = [reference("EXPERIMENT", run.experiment_id, "OWNER", experiment_name)]
    if run.version_id:
        references.append(reference("PIPELINE_VERSION", run.version_id, "CREATOR",
                                    run.version_name))
    finished = ""
    if view.status in ("Succeeded", "Failed", "Error", "Skipped"):
        finished = view.record.end if view.record and view.record.end else (
            run.ended.get("at", ""))
    return compact({
        "id": run.id, "name": run.name, "description": run.description,
        "storage_state": AVAILABLE, "service_account": run.service_account,
        "pipeline_spec": {
            "pipeline_id": run.pipeline_id, "pipeline_name": run.pipeline_name,
            "workflow_manifest": json.dumps(_with_parameters(document, run.parameters)),
            "parameters": run.parameters,
        },
        "resource_references": references,
        "created_at": timestamp(run.created_at), "scheduled_at": timestamp(run.created_at),
        "finished_at": timestamp(finished) or NEVER, "status": view.status,
    })


def run_detail_json(view: RunView, document: dict, experiment_name: str) -> dict:
    """ApiRunDetail: the run and its runtime Argo Workflow."""
    return {"run": run_json(view, document, experiment_name),
            "pipeline_runtime": {"workflow_manifest": json.dumps(workflow_status(view, document))}}


def workflow_status(view: RunView, document: dict) -> dict:
    """The run as an Argo Workflow object: the package, named after the run, with a status."""
    run, record = view.run, view.record
    values = ([{"name": name, "value": value} for name, value in record.parameters.items()]
              if record else run.parameters)
    workflow = _with_parameters(document, values)
    phase = "Running" if view.status == "Terminating" else view.status
    metadata = dict(workflow.get("metadata", {}))
    metadata.update(name=run.id, namespace=NAMESPACE, uid=run.id,
                    creationTimestamp=timestamp(run.created_at))
    metadata["labels"] = {**metadata.get("labels", {}), "pipeline/runid": run.id,
                          "workflows.argoproj.io/phase": phase}
    status: dict[str, Any] = {"phase": phase, "startedAt": timestamp(
        record.start if record else "") or None, "finishedAt": None, "nodes": {}}
    if view.message:
        status["message"] = view.message
    if record:
        if record.end and view.status != "Terminating":
            status["finishedAt"] = timestamp(record.end)
        status["nodes"] = _nodes(view, workflow)
    elif run.ended:
        status["finishedAt"] = timestamp(run.ended.get("at", ""))
    workflow.update(metadata=metadata, status=status)
    return workflow


def _with_parameters(document: dict, values: list[dict[str, str]]) -> dict:
    """The package with the run's values in `spec.arguments.parameters`, as Argo holds them."""
    given = {item["name"]: item.get("value", "") for item in values}
    spec = dict(document.get("spec", {}))
    arguments = dict(spec.get("arguments", {}))
    arguments["parameters"] = [
        {**item, **({"value": given[item["name"]]} if item.get("name") in given else {})}
        for item in arguments.get("parameters", [])]
    spec["arguments"] = arguments
    return {**document, "spec": spec}


def _nodes(view: RunView, workflow: dict) -> dict[str, dict]:
    """Argo's `status.nodes`: the entrypoint DAG and every step that started or was skipped."""
    run, record = view.run, view.record
    assert record is not None
    templates = {item["name"]: item for item in workflow.get("spec", {}).get("templates", [])}
    steps = {name: step for name, step in record.steps.items()
             if step.status != records.PENDING}

    def node_id(step: StepRecord) -> str:
        return f"{run.id}-{zlib.crc32(_path(step, record.steps).encode())}"

    def children(parent: str, finished_task: str | None) -> list[str]:
        return [node_id(step) for step in steps.values() if step.parent == parent and (
            step.dependencies == [] if finished_task is None
            else finished_task in step.dependencies)]

    root_phase = "Running" if view.status == "Terminating" else view.status
    nodes = {run.id: {
        "id": run.id, "name": run.id, "displayName": run.id, "type": "DAG",
        "templateName": workflow.get("spec", {}).get("entrypoint", ""), "phase": root_phase,
        "startedAt": timestamp(record.start), "finishedAt": timestamp(record.end) or None,
        "children": children("", None),
    }}
    for name, step in steps.items():
        is_dag = "dag" in templates.get(step.template, {})
        skipped = step.status in (records.SKIPPED, records.OMITTED)
        phase, message = _node_phase(view, step)
        node = {
            "id": node_id(step), "name": f"{run.id}.{_path(step, record.steps)}",
            "displayName": name, "type": "Skipped" if skipped else "DAG" if is_dag else "Pod",
            "templateName": step.template, "phase": phase,
            "boundaryID": node_id(record.steps[step.parent]) if step.parent else run.id,
            "startedAt": timestamp(step.start) or None,
            "finishedAt": timestamp(step.end) or None,
            "children": children(step.parent, name) + (children(name, None) if is_dag else []),
        }
        if message:
            node["message"] = message
        if step.outputs:
            node["outputs"] = {"parameters": [{"name": key, "value": value}
                                              for key, value in step.outputs.items()]}
        nodes[node["id"]] = node
    return nodes


def _node_phase(view: RunView, step: StepRecord) -> tuple[str, str]:
    """A step stopped by terminate reads as Argo's terminated node: Failed, "terminated"."""
    stopped = step.status in (records.INTERRUPTED, records.FAILED) and view.run.terminated and (
        not step.end or datetime.fromisoformat(step.end) >= datetime.fromisoformat(
            view.run.terminated_at))
    if stopped:
        return "Failed", TERMINATED_MESSAGE
    if step.status == records.INTERRUPTED:
        return "Error", step.message or "the runner stopped before the step finished"
    return _NODE_PHASE.get(step.status, "Pending"), step.message


def _path(step: StepRecord, steps: dict[str, StepRecord]) -> str:
    """`parent.task` names of a step, as Argo names nested DAG nodes."""
    names = [step.name]
    while step.parent and step.parent in steps:
        step = steps[step.parent]
        names.append(step.name)
    return ".".join(reversed(names))

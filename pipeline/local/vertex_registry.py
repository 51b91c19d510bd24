"""Local Vertex AI models and operations, in the same registry as the ml v1 models.

aiplatform v1 `models.upload` (a long-running Operation), `models.get`, `models.list` and
`operations.get`. An upload copies and verifies the model's `artifactUri` exactly as an ml v1
version's deploymentUri is (`Registry.stage_artifact`: one model.pkl or model.joblib, it loads,
its ONNX fast path is made and checked), under the same lock, before the model is visible.
Endpoints (vertex_endpoints.py) deploy these models; prediction serves them with the same
fast path and loader as ml v1 versions.

Layout, beside the ml v1 models under the registry root (a dot folder, which no ml v1 model
name can be):

    .vertex/models/<id>/model.json          {"project", "location", "model": <Model>}
    .vertex/models/<id>/model.pkl           the copied, verified artifact (+ fast path files)
    .vertex/endpoints/<id>/endpoint.json    {"project", "location", "endpoint": <Endpoint>}
    .vertex/operations/<id>.json            a finished google.longrunning.Operation

Operations finish before the call returns (`done: true`); a refused request is an HTTP error
and changes nothing. Resource names use the project id as asked (the cloud prints numbers).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import uuid
from pathlib import Path
from typing import Any

from pipeline.atomic import write_atomic
from pipeline.local.errors import AlreadyExists, InvalidArgument, NotFound
from pipeline.local.registry import Registry, _check_deployment_uri
from pipeline.local.training_run import now
from pipeline.local.vertex_common import (
    check_display_name,
    check_labels,
    check_parent,
    list_query,
    matches,
    new_id,
    page,
    parse,
    refuse_fields,
)

TYPE = "type.googleapis.com/google.cloud.aiplatform.v1."
MODEL_ID = re.compile(r"[1-9][0-9]{0,18}|[a-z_][a-z0-9_-]{0,62}")
OPERATION_ID = re.compile(r"[1-9][0-9]{0,18}")
DEPLOYMENT_TYPES = ["DEDICATED_RESOURCES"]
_MODEL_UNSUPPORTED = ("explanationSpec", "encryptionSpec", "baseModelSource",
                      "defaultCheckpointId", "versionAliases", "dataStats")


class VertexRegistry:
    """Vertex AI models and operations over the shared `Registry`.

    Args:
        registry: the ml v1 registry whose root, lock and artifact staging are shared.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.root = registry.root / ".vertex"
        for folder in ("models", "endpoints", "operations"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    # models ---------------------------------------------------------------------------------

    def upload_model(self, project: str, location: str, body: Any) -> dict:
        """Copy, verify and register a model; returns the finished upload Operation.

        Raises:
            InvalidArgument: a bad request; FailedPrecondition: the artifact is missing or does
                not load; AlreadyExists: the modelId is taken. Nothing is written then.
        """
        parent = check_parent(project, location)
        where = "uploadModelRequest"
        request = parse("UploadModelRequest", body, where)
        refuse_fields(request, ("parentModel",), where,
                      "model versions are not kept locally; upload a new model")
        model_id = request.get("modelId") or new_id()
        if not MODEL_ID.fullmatch(model_id):
            raise InvalidArgument(f"{where}.modelId {model_id!r} is invalid; use up to 63 "
                                  "lowercase letters, digits, _ or -, not starting with - or "
                                  "a digit")
        model = _model_fields(request.get("model"), f"{where}.model")
        name = f"{parent}/models/{model_id}"
        uri = _check_deployment_uri(model.get("artifactUri"), f"model {model['displayName']}",
                                    self.registry.storage, "artifactUri")
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            self.registry.stage_artifact(uri, staging, "artifactUri")
            created = now()
            model.update(name=name, createTime=created, updateTime=created, etag=etag(),
                         versionId="1", versionAliases=["default"], versionCreateTime=created,
                         versionUpdateTime=created,
                         supportedDeploymentResourcesTypes=DEPLOYMENT_TYPES)
            write_json(staging / "model.json",
                       {"project": project, "location": location, "model": model})
            with self.registry.locked():
                target = self.root / "models" / model_id
                if target.exists():
                    raise AlreadyExists(f"model {name} already exists; pick another modelId")
                os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.operation(name, "UploadModelOperationMetadata",
                              {"@type": TYPE + "UploadModelResponse", "model": name,
                               "modelVersionId": "1"})

    def get_model(self, project: str, location: str, model_id: str) -> dict:
        """The Model, with the endpoints it is deployed to."""
        model = self.model_record(project, location, model_id)["model"]
        deployed = [{"endpoint": endpoint["name"], "deployedModelId": item["id"]}
                    for endpoint in self.endpoints(project, location)
                    for item in endpoint.get("deployedModels", [])
                    if item["model"] == model["name"]]
        return {**model, **({"deployedModels": deployed} if deployed else {})}

    def list_models(self, project: str, location: str, query: Any) -> dict:
        """The location's models, newest first, filtered and paged."""
        check_parent(project, location)
        terms, size, token = list_query(query, ("display_name",))
        models = [self.get_model(project, location, folder.name)
                  for folder in (self.root / "models").iterdir()
                  if _owned(folder / "model.json", project, location)]
        models.sort(key=lambda model: model["createTime"], reverse=True)
        return page([model for model in models if matches(model, terms)], "models", size, token)

    def model_record(self, project: str, location: str, model_id: str) -> dict:
        """The stored model record; NotFound unless it is in this project and location."""
        name = f"{check_parent(project, location)}/models/{model_id}"
        path = self.root / "models" / model_id / "model.json"
        if not MODEL_ID.fullmatch(model_id) or not _owned(path, project, location):
            raise NotFound(f"model {name} not found; upload it first (models.upload)")
        return read_json(path)

    def model_folder(self, model_id: str) -> Path:
        """Where a model's artifact and fast path files are."""
        return self.root / "models" / model_id

    # operations -----------------------------------------------------------------------------

    def operation(self, parent: str, metadata_type: str, response: dict) -> dict:
        """Record a finished Operation on resource `parent`; returns it."""
        stamp = now()
        operation = {"name": f"{parent}/operations/{new_id()}", "done": True,
                     "metadata": {"@type": TYPE + metadata_type,
                                  "genericMetadata": {"createTime": stamp, "updateTime": stamp}},
                     "response": response}
        if metadata_type in ("DeployModelOperationMetadata", "CreateEndpointOperationMetadata"):
            operation["metadata"]["deploymentStage"] = "SUCCESSFULLY_DEPLOYED"
        write_json(self.root / "operations" / f"{operation['name'].rsplit('/', 1)[1]}.json",
                   operation)
        return operation

    def get_operation(self, name: str) -> dict:
        """operations.get: an Operation this registry returned, by its full name."""
        operation_id = name.rsplit("/", 1)[-1]
        path = self.root / "operations" / f"{operation_id}.json"
        if OPERATION_ID.fullmatch(operation_id) and path.exists():
            operation = read_json(path)
            if operation["name"] == name:
                return operation
        raise NotFound(f"operation {name} not found; poll the name the call returned")

    # endpoints, as stored (vertex_endpoints.py changes them) ---------------------------------

    def endpoints(self, project: str, location: str) -> list[dict]:
        """Every stored Endpoint of a project and location."""
        found = []
        for folder in (self.root / "endpoints").iterdir():
            path = folder / "endpoint.json"
            if _owned(path, project, location):
                found.append(read_json(path)["endpoint"])
        return found

    def endpoint_path(self, endpoint_id: str) -> Path:
        """The file of an endpoint's record."""
        return self.root / "endpoints" / endpoint_id / "endpoint.json"


def _model_fields(model: Any, where: str) -> dict:
    """The settable fields of an uploaded Model, checked."""
    if not isinstance(model, dict):
        raise InvalidArgument(f"{where} is required: the Model to upload")
    refuse_fields(model, _MODEL_UNSUPPORTED, where, "the local registry keeps plain models")
    check_display_name(model.get("displayName"), f"{where}.displayName")
    check_labels(model.get("labels", {}), f"{where}.labels")
    if not (model.get("containerSpec") or {}).get("imageUri"):
        raise InvalidArgument(f"{where}.containerSpec.imageUri is required; set it to the "
                              "serving image")
    return {key: value for key, value in model.items() if key not in ("name", "etag")}


def _owned(path: Path, project: str, location: str) -> bool:
    """Whether a stored record exists and belongs to this project and location."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return False
    return (record.get("project"), record.get("location")) == (project, location)


def etag() -> str:
    """A fresh etag."""
    return secrets.token_urlsafe(12)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True))

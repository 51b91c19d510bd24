"""Local Vertex AI endpoints: create, get, list, deployModel, undeployModel, and what serves.

Each call that changes an endpoint rewrites its record atomically under the registry's lock
with a fresh etag, so a prediction server sees the old endpoint or the new one, never half,
and reloads without a restart. Deploy and undeploy follow the documented trafficSplit rules:

- deployModel: a non-empty `trafficSplit` replaces the endpoint's, "0" naming the model being
  deployed; the percentages add up to 100. An empty one leaves the split unchanged (a model
  deployed so receives no traffic until a later split gives it some).
- undeployModel: a model that still receives traffic is undeployed only if the request's
  `trafficSplit` moves its traffic elsewhere, or if it is the last one (the split empties).
- a deployed model needs `dedicatedResources` (machineSpec.machineType, minReplicaCount >= 1),
  as a custom-container model does on Vertex AI; replicas and machines are recorded, and the
  local server serves every deployed model itself.
"""
from __future__ import annotations

import re
from typing import Any

from pipeline.local.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
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
from pipeline.local.vertex_registry import TYPE, VertexRegistry, etag, read_json, write_json

ENDPOINT_ID = re.compile(r"[1-9][0-9]{0,18}|[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
USER_ENDPOINT_ID = re.compile(r"[1-9][0-9]{0,8}|[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
DEPLOYED_MODEL_ID = re.compile(r"[0-9]{1,10}")
_ENDPOINT_UNSUPPORTED = ("encryptionSpec", "network", "privateServiceConnectConfig",
                         "enablePrivateServiceConnect", "dedicatedEndpointEnabled",
                         "predictRequestResponseLoggingConfig", "clientConnectionConfig",
                         "gdcConfig", "genAiAdvancedFeaturesConfig")
_DEPLOYED_UNSUPPORTED = ("automaticResources", "sharedResources", "explanationSpec",
                         "checkpointId", "speculativeDecodingSpec", "fasterDeploymentConfig",
                         "gdcConnectedModel", "disableExplanations")


class VertexEndpoints:
    """Endpoints over the Vertex AI models of `models`.

    Args:
        models: the Vertex AI models and operations (and the shared registry lock).
    """

    def __init__(self, models: VertexRegistry) -> None:
        self.models = models

    def create(self, project: str, location: str, body: Any, endpoint_id: str = "") -> dict:
        """Create an empty endpoint; returns the finished create Operation."""
        parent = check_parent(project, location)
        where = "endpoint"
        endpoint = parse("Endpoint", body, where)
        check_display_name(endpoint.get("displayName"), f"{where}.displayName")
        check_labels(endpoint.get("labels", {}), f"{where}.labels")
        refuse_fields(endpoint, _ENDPOINT_UNSUPPORTED, where, "a local endpoint is plain HTTP")
        refuse_fields(endpoint, ("trafficSplit",), where, "a new endpoint has no models")
        if endpoint_id and not USER_ENDPOINT_ID.fullmatch(endpoint_id):
            raise InvalidArgument(f"endpointId {endpoint_id!r} is invalid; use up to 9 digits, "
                                  "or a lowercase letter then up to 62 letters, digits or -")
        endpoint_id = endpoint_id or new_id()
        created = now()
        endpoint.update(name=f"{parent}/endpoints/{endpoint_id}", createTime=created,
                        updateTime=created, etag=etag())
        path = self.models.endpoint_path(endpoint_id)
        with self.models.registry.locked():
            if path.exists():
                raise AlreadyExists(f"endpoint {endpoint['name']} already exists; pick another "
                                    "endpointId")
            write_json(path, {"project": project, "location": location, "endpoint": endpoint})
        return self.models.operation(endpoint["name"], "CreateEndpointOperationMetadata",
                                     {"@type": TYPE + "Endpoint", **endpoint})

    def get(self, project: str, location: str, endpoint_id: str) -> dict:
        """The Endpoint with its deployed models and traffic split."""
        return self.record(project, location, endpoint_id)["endpoint"]

    def list(self, project: str, location: str, query: Any) -> dict:
        """The location's endpoints, newest first, filtered and paged."""
        check_parent(project, location)
        terms, size, token = list_query(query, ("display_name",))
        endpoints = sorted(self.models.endpoints(project, location),
                           key=lambda endpoint: endpoint["createTime"], reverse=True)
        return page([item for item in endpoints if matches(item, terms)], "endpoints", size,
                    token)

    def deploy(self, project: str, location: str, endpoint_id: str, body: Any) -> dict:
        """Deploy a model to an endpoint; returns the finished deploy Operation."""
        where = "deployModelRequest"
        request = parse("DeployModelRequest", body, where)
        deployed = request.get("deployedModel")
        if not isinstance(deployed, dict):
            raise InvalidArgument(f"{where}.deployedModel is required: the model to deploy and "
                                  "its dedicatedResources")
        model = self._model(project, location, deployed.get("model"), f"{where}.deployedModel")
        deployed = _deployed_fields(deployed, f"{where}.deployedModel")
        with self.models.registry.locked():
            record = self.record(project, location, endpoint_id)
            endpoint = record["endpoint"]
            current = endpoint.get("deployedModels", [])
            deployed_id = deployed.pop("id", "") or new_id()
            if any(item["id"] == deployed_id for item in current):
                raise AlreadyExists(f"deployed model id {deployed_id} is taken on "
                                    f"{endpoint['name']}; pick another id")
            deployed.update(id=deployed_id, model=model["name"], modelVersionId="1",
                            createTime=now())
            deployed.setdefault("displayName", model["displayName"])
            split = request.get("trafficSplit") or {}
            if split:
                split = {deployed_id if key == "0" else key: value
                         for key, value in split.items()}
                _check_split(split, [*[item["id"] for item in current], deployed_id],
                             f"{where}.trafficSplit")
                endpoint["trafficSplit"] = split
            endpoint["deployedModels"] = [*current, deployed]
            self._save(record)
        return self.models.operation(endpoint["name"], "DeployModelOperationMetadata",
                                     {"@type": TYPE + "DeployModelResponse",
                                      "deployedModel": deployed})

    def undeploy(self, project: str, location: str, endpoint_id: str, body: Any) -> dict:
        """Undeploy a deployed model; returns the finished undeploy Operation."""
        where = "undeployModelRequest"
        request = parse("UndeployModelRequest", body, where)
        deployed_id = request.get("deployedModelId", "")
        if not deployed_id:
            raise InvalidArgument(f"{where}.deployedModelId is required; name the deployed "
                                  "model to remove")
        with self.models.registry.locked():
            record = self.record(project, location, endpoint_id)
            endpoint = record["endpoint"]
            current = endpoint.get("deployedModels", [])
            if not any(item["id"] == deployed_id for item in current):
                raise NotFound(f"deployed model {deployed_id!r} is not on {endpoint['name']}; "
                               "see the endpoint's deployedModels")
            remaining = [item for item in current if item["id"] != deployed_id]
            split = request.get("trafficSplit")
            if split:
                _check_split(split, [item["id"] for item in remaining], f"{where}.trafficSplit")
            elif remaining and endpoint.get("trafficSplit", {}).get(deployed_id, 0) > 0:
                raise FailedPrecondition(
                    f"deployed model {deployed_id} still receives "
                    f"{endpoint['trafficSplit'][deployed_id]}% of {endpoint['name']}'s traffic; "
                    "pass a trafficSplit that gives it to the other deployed models")
            else:
                split = {key: value for key, value in endpoint.get("trafficSplit", {}).items()
                         if key != deployed_id} if remaining else {}
            endpoint["deployedModels"], endpoint["trafficSplit"] = remaining, split
            self._save(record)
        return self.models.operation(endpoint["name"], "UndeployModelOperationMetadata",
                                     {"@type": TYPE + "UndeployModelResponse"})

    def record(self, project: str, location: str, endpoint_id: str) -> dict:
        """The stored endpoint record; NotFound unless it is in this project and location."""
        name = f"{check_parent(project, location)}/endpoints/{endpoint_id}"
        path = self.models.endpoint_path(endpoint_id)
        if ENDPOINT_ID.fullmatch(endpoint_id) and path.exists():
            record = read_json(path)
            if (record["project"], record["location"]) == (project, location):
                return record
        raise NotFound(f"endpoint {name} not found; create it first (endpoints.create)")

    def _model(self, project: str, location: str, name: Any, where: str) -> dict:
        """The Model a deployedModel.model names (`.../models/ID`, `@1` or `@default` allowed)."""
        prefix = f"projects/{project}/locations/{location}/models/"
        text = name if isinstance(name, str) else ""
        model_id, _, version = text.removeprefix(prefix).partition("@")
        if not text.startswith(prefix) or version not in ("", "1", "default"):
            raise InvalidArgument(f"{where}.model {name!r} is not a model of {prefix[:-8]}; "
                                  "use the name models.upload returned")
        return self.models.model_record(project, location, model_id)["model"]

    def _save(self, record: dict) -> None:
        endpoint = record["endpoint"]
        endpoint.update(updateTime=now(), etag=etag())
        for field in ("deployedModels", "trafficSplit"):  # proto3 JSON leaves out empty ones
            if not endpoint.get(field):
                endpoint.pop(field, None)
        endpoint_id = record["endpoint"]["name"].rsplit("/", 1)[1]
        write_json(self.models.endpoint_path(endpoint_id), record)


def _deployed_fields(deployed: dict, where: str) -> dict:
    """The settable fields of a DeployedModel, checked."""
    refuse_fields(deployed, _DEPLOYED_UNSUPPORTED, where,
                  "a custom-container model is deployed on dedicatedResources")
    if deployed.get("id") and not DEPLOYED_MODEL_ID.fullmatch(deployed["id"]):
        raise InvalidArgument(f"{where}.id {deployed['id']!r} is invalid; use 1 to 10 digits")
    resources = deployed.get("dedicatedResources") or {}
    machine = resources.get("machineSpec") or {}
    if not machine.get("machineType"):
        raise InvalidArgument(f"{where}.dedicatedResources.machineSpec.machineType is "
                              "required; set e.g. n1-standard-2")
    refuse_fields(machine, ("acceleratorCount", "acceleratorType", "tpuTopology",
                            "gpuPartitionSize", "reservationAffinity"),
                  f"{where}.dedicatedResources.machineSpec", "no accelerators locally")
    refuse_fields(resources, ("spot", "requiredReplicaCount"), f"{where}.dedicatedResources",
                  "local replicas are always there")
    low, high = resources.get("minReplicaCount", 0), resources.get("maxReplicaCount")
    if low < 1 or (high is not None and high < low):
        raise InvalidArgument(f"{where}.dedicatedResources needs minReplicaCount >= 1 and "
                              "maxReplicaCount >= minReplicaCount")
    return {key: value for key, value in deployed.items() if key != "model"}


def _check_split(split: dict, deployed_ids: list[str], where: str) -> None:
    unknown = sorted(set(split) - set(deployed_ids))
    if unknown:
        raise InvalidArgument(f"{where} names {unknown[0]!r}, which is not deployed here; use "
                              "deployed model ids (and \"0\" for the model being deployed)")
    if any(not 0 <= value <= 100 for value in split.values()) or sum(split.values()) != 100:
        raise InvalidArgument(f"{where} percentages {split} must be 0..100 and add up to 100")


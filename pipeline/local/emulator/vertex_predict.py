"""aiplatform v1 `endpoints.predict` over the local Vertex AI endpoints.

`POST /v1/projects/{p}/locations/{l}/endpoints/{e}:predict` answers `{"instances": [...]}`
from one of the endpoint's deployed models, drawn by its trafficSplit, with the same instance
parsing, model loader and verified ONNX fast path as the ml v1 `:predict`
(pipeline/local/prediction.py). The response is Vertex AI's PredictResponse: `predictions`,
`deployedModelId`, `model`, `modelDisplayName`, `modelVersionId`; `X-Deployed-Model-Id` and
`X-Prediction-Path` say who answered and how. Errors are Google's shape, as Vertex AI sends
them: `{"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT"}}` for a bad
request, FAILED_PRECONDITION when the model fails or no deployed model takes traffic,
NOT_FOUND for an unknown endpoint.

Each request compares the endpoint record's identity (one os.stat) with the one it was read
under, so a deploy, undeploy or new split is served at once, without a restart; a loaded
model is kept as long as it is deployed (Vertex AI models do not change once uploaded).
"""
from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pipeline.local.emulator.asgi import (
    ASGIApp,
    Receive,
    Send,
    as_asgi,
    encode_json,
    error_json,
    read_body,
    send_json,
)
from pipeline.local.emulator.predict import PREDICT_OPENAPI, RequestRoute
from pipeline.local.errors import ServiceError
from pipeline.local.instances import PredictionError, parse_instances
from pipeline.local.prediction import (
    ONNX,
    Predictor,
    load_predictor,
)
from pipeline.local.registry import ARTIFACT_NAMES
from pipeline.local.services import vertex_endpoints
from pipeline.local.vertex_endpoints import VertexEndpoints

PATH = (r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
        r"/endpoints/(?P<endpoint>[^/]+?):predict")
router = APIRouter(route_class=RequestRoute)
_STATUS = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "code": {"type": "integer"}, "message": {"type": "string"}, "status": {"type": "string"}}}}}
_OPENAPI = {
    "requestBody": PREDICT_OPENAPI["requestBody"],
    "parameters": [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                   for name in ("project", "location", "endpoint")],
    "responses": {
        "200": {"description": "one class id (0..6) per instance, and who answered",
                "content": {"application/json": {"schema": {
                    "title": "PredictResponse", "type": "object", "properties": {
                        "predictions": {"type": "array", "items": {"type": "integer"}},
                        **{name: {"type": "string"} for name in (
                            "deployedModelId", "model", "modelDisplayName",
                            "modelVersionId")}}}}}},
        "400": {"description": "a bad request, a failing model or no deployed model",
                "content": {"application/json": {"schema": _STATUS}}},
        "404": {"description": "unknown endpoint",
                "content": {"application/json": {"schema": _STATUS}}}},
}


@dataclass
class _Serving:
    """An endpoint as read under one stamp: who takes traffic, with what weight."""

    stamp: str
    deployed: dict[str, dict]
    choices: list[str]
    weights: list[int]


class ServedEndpoints:
    """The endpoints being served and the loaded models behind them."""

    def __init__(self, endpoints: VertexEndpoints, cache_dir: Path) -> None:
        self.endpoints = endpoints
        self.cache_dir = cache_dir
        self._serving: dict[tuple[str, str, str], _Serving] = {}
        self._predictors: dict[str, tuple[Predictor, dict]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def pick(self, project: str, location: str, endpoint: str
                   ) -> tuple[dict, Predictor, dict]:
        """(deployed model, its predictor, its Model) to answer one request."""
        serving = self._current(project, location, endpoint)
        if not serving.choices:
            raise PredictionError(f"endpoint projects/{project}/locations/{location}/endpoints/"
                                  f"{endpoint} has no deployed model that takes traffic; "
                                  "deploy one with a trafficSplit", reason="FAILED_PRECONDITION")
        chosen = serving.deployed[random.choices(serving.choices, serving.weights)[0]]
        predictor, model = await self._predictor(project, location, chosen["model"])
        return chosen, predictor, model

    def _current(self, project: str, location: str, endpoint: str) -> _Serving:
        key = (project, location, endpoint)
        try:
            info = os.stat(self.endpoints.models.endpoint_path(endpoint))
            stamp = f"{info.st_ino}/{info.st_mtime_ns}/{info.st_size}"
        except (OSError, ValueError):
            stamp = ""
        found = self._serving.get(key)
        if found and found.stamp == stamp:
            return found
        try:
            record = self.endpoints.get(project, location, endpoint)
        except ServiceError as error:
            self._serving.pop(key, None)
            raise PredictionError(str(error), error.code) from None
        deployed = {item["id"]: item for item in record.get("deployedModels", [])}
        split = {name: share for name, share in record.get("trafficSplit", {}).items()
                 if share > 0 and name in deployed}
        serving = self._serving[key] = _Serving(stamp, deployed, list(split), list(split.values()))
        live = {item["model"] for entry in self._serving.values()
                for item in entry.deployed.values()}
        for name in set(self._predictors) - live:  # undeployed everywhere: free the memory
            self._predictors.pop(name, None)
        return serving

    async def _predictor(self, project: str, location: str, name: str
                         ) -> tuple[Predictor, dict]:
        if found := self._predictors.get(name):
            return found
        async with self._locks.setdefault(name, asyncio.Lock()):
            if found := self._predictors.get(name):
                return found
            loaded = await run_in_threadpool(self._load, project, location, name)
            self._predictors[name] = loaded
            return loaded

    def _load(self, project: str, location: str, name: str) -> tuple[Predictor, dict]:
        models = self.endpoints.models
        model_id = name.rsplit("/", 1)[-1]
        try:
            model = models.model_record(project, location, model_id)["model"]
        except ServiceError as error:
            raise PredictionError(f"deployed {error}", reason="FAILED_PRECONDITION") from None
        folder = models.model_folder(model_id)
        artifact = next((folder / item for item in ARTIFACT_NAMES if (folder / item).is_file()),
                        None)
        if artifact is None:
            raise PredictionError(f"model {name} has no artifact any more; upload it again",
                                  reason="FAILED_PRECONDITION")
        return load_predictor(model, artifact, self.cache_dir), model


def served_endpoints(app: Any) -> ServedEndpoints:
    """The app's ServedEndpoints, over the same endpoints as the endpoint routes."""
    state = app.state
    if getattr(state, "served_endpoints", None) is None:
        state.served_endpoints = ServedEndpoints(vertex_endpoints(app), state.home / "cache")
    return state.served_endpoints


async def answer_predict(served: ServedEndpoints, project: str, location: str, endpoint: str,
                         receive: Receive, send: Send) -> None:
    """Answer one endpoints.predict request with ASGI messages (see emulator/asgi.py)."""
    raw = await read_body(receive)  # bounded by the security layer (1.5 MB)
    if raw is None:
        return  # the client has gone
    try:
        deployed, predictor, model = await served.pick(project, location, endpoint)
        instances = parse_instances(raw)
        if predictor.path == ONNX:
            predictions = predictor.predict(instances)
        else:
            predictions = await run_in_threadpool(predictor.predict, instances)
    except PredictionError as error:
        body: dict[str, Any] = {"code": error.status, "message": str(error),
                                "status": error.reason}
        await send_json(send, error.status, error_json({"error": body}))
        return
    content = encode_json({"predictions": predictions, "deployedModelId": deployed["id"],
                           "model": model["name"], "modelDisplayName": model["displayName"],
                           "modelVersionId": model["versionId"]})
    await send_json(send, 200, content, [
        (b"x-deployed-model-id", deployed["id"].encode("latin-1")),
        (b"x-prediction-path", predictor.path.encode("latin-1"))])


@router.post("/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict",
             summary="endpoints.predict", response_model=None, openapi_extra=_OPENAPI)
async def predict_route(request: Request) -> ASGIApp:
    """endpoints.predict"""
    params = request.path_params
    return as_asgi(answer_predict, served_endpoints(request.app), params["project"],
                   params["location"], params["endpoint"])

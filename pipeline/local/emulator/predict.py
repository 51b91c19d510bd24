"""AI Platform Prediction `:predict` routes over the local registry, and the registry check's.

Every request compares the model's registry identity (one os.stat) with the one its loaded
versions were resolved under, so a new version or a new default is served from the next
request on, without a restart, and each request is answered by exactly one version, named in
`X-Model-Version` (`X-Prediction-Path` says onnx or sklearn). Failures are the cloud's predict
shape, `{"error": "<message>"}` with a 4xx status; a registry folder edited by hand into an
inconsistent state is reported for the broken model or version only (registry_check.py).
Requests are read and answered with plain ASGI messages (asgi.py), the hot path of
`covertype serve`.
"""
from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from pipeline import schema
from pipeline.local.emulator.asgi import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    as_asgi,
    encode_json,
    error_json,
    read_body,
    send_json,
)
from pipeline.local.emulator.registry_check import check_registry, explain
from pipeline.local.errors import ServiceError
from pipeline.local.home import LOCAL_PROJECT_ID
from pipeline.local.instances import PredictionError, parse_instances
from pipeline.local.prediction import (
    ONNX,
    Predictor,
    load_predictor,
)
from pipeline.local.registry import NAME_PATTERN, Registry
from pipeline.local.services import registry


class RequestRoute(APIRoute):
    """A route whose endpoint gets the raw Request: FastAPI documents the operation (OpenAPI)
    but validates no parameters and no body, work that costs more than an ONNX prediction."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Any]]:
        return self.endpoint


router = APIRouter(prefix="/v1/projects/{project}", route_class=RequestRoute)

_NUMBER, _STRING = {"type": "number"}, {"type": "string"}
_FEATURE_TYPES = [_NUMBER if name in schema.NUMERIC_COLUMNS else _STRING
                  for name in schema.FEATURE_COLUMNS]
_ERROR = {"application/json": {"schema": {"type": "object", "required": ["error"],
                                          "properties": {"error": _STRING}}}}
PREDICT_OPENAPI = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "title": "PredictRequest", "type": "object", "required": ["instances"],
        "properties": {"instances": {"type": "array", "minItems": 1, "items": {"oneOf": [
            {"type": "array", "items": _FEATURE_TYPES, "minItems": len(_FEATURE_TYPES),
             "maxItems": len(_FEATURE_TYPES),
             "description": "the features in order: " + ", ".join(schema.FEATURE_COLUMNS)},
            {"type": "object", "required": list(schema.FEATURE_COLUMNS),
             "properties": {**dict(zip(schema.FEATURE_COLUMNS, _FEATURE_TYPES, strict=True)),
                            schema.LABEL_COLUMN: {"type": "integer", "description": "ignored"}},
             "additionalProperties": False}]}}}}}}},
    "responses": {
        "200": {"description": "one class id (0..6) per instance", "content": {
            "application/json": {"schema": {"title": "PredictResponse", "type": "object",
                                            "properties": {"predictions": {
                                                "type": "array",
                                                "items": {"type": "integer"}}}}}}},
        "400": {"description": "a bad request or a broken version", "content": _ERROR},
        "404": {"description": "unknown project, model or version", "content": _ERROR}},
}


def _path_parameters(*extra: str) -> list[dict]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in ("project", "model", *extra)]


@dataclass
class _Entry:
    """A model's versions loaded under one registry stamp."""

    stamp: str
    default: str | None = None
    predictors: dict[str, Predictor] = field(default_factory=dict)


class ServedModels:
    """The loaded versions of every model, reloaded when the model's registry stamp changes."""

    def __init__(self, registry: Registry, cache_dir: Path) -> None:
        self.registry = registry
        self.cache_dir = cache_dir
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._stamps: dict[str, tuple[tuple[int, int, int], str]] = {}  # (identity, stamp)
        self._root = str(registry.root)

    def loaded(self, model: str, version: str | None) -> Predictor | None:
        """The loaded version (default when None) that answers now; None when it must be loaded
        first (`predictor`), on first use or after a change in the registry."""
        return self._cached(model, version, self._stamp(model, version))

    async def predictor(self, model: str, version: str | None) -> Predictor:
        """The version (default when None) that answers; loads it on first use or a change."""
        if found := self.loaded(model, version):
            return found
        lock = self._locks.setdefault(model, asyncio.Lock())
        async with lock:
            stamp = self._stamp(model, version)
            if found := self._cached(model, version, stamp):
                return found
            entry = self._entries.get(model)
            previous = entry.predictors if entry else {}
            predictor = await run_in_threadpool(self._load, model, version, previous)
            if entry is None or entry.stamp != stamp:
                entry = self._entries[model] = _Entry(stamp)
            entry.predictors[predictor.version] = predictor
            if version is None:
                entry.default = predictor.version
            return predictor

    def _cached(self, model: str, version: str | None, stamp: str) -> Predictor | None:
        entry = self._entries.get(model)
        if entry is None or entry.stamp != stamp:
            return None
        return entry.predictors.get(version or entry.default or "")

    def _stamp(self, model: str, version: str | None) -> str:
        """Registry.stamp plus model.json's identity: the registry replaces model.json (a new
        inode) on every change, so the etag is re-read (13 us) only when an os.stat (2 us)
        differs, and a hand edit of model.json reloads the model too."""
        try:
            known = self._stamps.get(model)  # only names that passed the check below
            if known is None and not NAME_PATTERN.fullmatch(model):
                self.registry.stamp(model)  # raises InvalidArgument naming the rule
            info = os.stat(f"{self._root}/{model}/model.json")
            identity = (info.st_ino, info.st_mtime_ns, info.st_size)
            if known is not None and known[0] == identity:
                return known[1]
            stamp = self.registry.stamp(model)
            if stamp:
                stamp = f"{identity}/{stamp}"
                self._stamps[model] = (identity, stamp)
        except ServiceError as error:
            raise PredictionError(str(error), error.code) from None
        except (OSError, ValueError, KeyError, TypeError):
            stamp = None
        if stamp is None:
            self._entries.pop(model, None)
            self._stamps.pop(model, None)
            _raise(self.registry.root, model, version, PredictionError(
                f"model {model} not found in project {LOCAL_PROJECT_ID}; deploy it first", 404))
        return stamp

    def _load(self, model: str, version: str | None, previous: dict[str, Predictor]
              ) -> Predictor:
        """Resolve in the registry and load (or reuse an unchanged loaded version)."""
        try:
            record, artifact = self.registry.resolve(model, version)
        except ServiceError as error:
            _raise(self.registry.root, model, version, PredictionError(str(error), error.code))
        except (OSError, ValueError, KeyError, TypeError) as error:
            _raise(self.registry.root, model, version, PredictionError(
                f"model {model} cannot be read ({type(error).__name__}); see "
                f"GET /v1/projects/{LOCAL_PROJECT_ID}/registry:check"))
        loaded = previous.get(record["name"].rsplit("/", 1)[-1])
        if loaded and loaded.etag == record.get("etag", "") and loaded.artifact == artifact:
            return loaded
        return load_predictor(record, artifact, self.cache_dir)


def _raise(root: Path, model: str, version: str | None, fallback: PredictionError) -> NoReturn:
    """Raise the registry problem behind a failure (400) if there is one, else `fallback`."""
    message = explain(root, model, version)
    raise (PredictionError(message) if message else fallback) from None


def _served(app: FastAPI) -> ServedModels:
    """The app's ServedModels over the same registry as the model routes."""
    state = app.state
    if getattr(state, "served", None) is None:
        state.served = ServedModels(registry(app), state.home / "cache")
    return state.served


async def answer_predict(served: ServedModels, project: str, model: str, version: str | None,
                         receive: Receive, send: Send) -> None:
    """Answer one projects.predict request with ASGI messages: no Request or Response objects,
    which cost more than the ONNX prediction itself."""
    raw = await read_body(receive)  # bounded by the security layer (1.5 MB)
    if raw is None:
        return  # the client has gone
    try:
        if project != LOCAL_PROJECT_ID:
            raise PredictionError(f"project {project} not found; the local server serves "
                                  f"projects/{LOCAL_PROJECT_ID}", 404)
        predictor = served.loaded(model, version) or await served.predictor(model, version)
        instances = parse_instances(raw)
        if predictor.path == ONNX:
            predictions = predictor.predict(instances)
        else:
            predictions = await run_in_threadpool(predictor.predict, instances)
    except PredictionError as error:
        await send_json(send, error.status, error_json({"error": str(error)}))
        return
    await send_json(send, 200, _predictions_body(predictions),
                    _answer_headers(predictor.version, predictor.path))


@lru_cache(maxsize=1024)
def _answer_headers(version: str, path: str) -> tuple[tuple[bytes, bytes], ...]:
    """X-Model-Version and X-Prediction-Path, encoded once per version."""
    return ((b"x-model-version", version.encode("latin-1")),
            (b"x-prediction-path", path.encode("latin-1")))


_INTEGER = frozenset({int})  # bool is no integer here


def _predictions_body(predictions: list) -> bytes:
    """`{"predictions": [...]}` as json.dumps(..., separators=(",", ":")) writes it: for
    class ids (integers of 64 bits at most) orjson writes the same bytes, 5x faster."""
    if _INTEGER.issuperset(map(type, predictions)):
        try:
            return orjson.dumps({"predictions": predictions})
        except orjson.JSONEncodeError:  # an integer past 64 bits
            pass
    return encode_json({"predictions": predictions})


# Path parameters are documented here and read from the path (see RequestRoute); the routes
# answer with the shortcut's code (`as_asgi`), for an app served without PredictShortcut.
@router.post("/models/{model}/versions/{version}:predict", response_model=None,
             openapi_extra={**PREDICT_OPENAPI, "parameters": _path_parameters("version")})
async def predict_version(request: Request) -> ASGIApp:
    """projects.predict on a version"""
    params = request.path_params
    return as_asgi(answer_predict, _served(request.app), params["project"], params["model"],
                   params["version"])


@router.post("/models/{model}:predict", response_model=None,
             openapi_extra={**PREDICT_OPENAPI, "parameters": _path_parameters()})
async def predict_default(request: Request) -> ASGIApp:
    """projects.predict on the model's default version"""
    params = request.path_params
    return as_asgi(answer_predict, _served(request.app), params["project"], params["model"],
                   None)


@router.get("/registry:check", openapi_extra={"parameters": _path_parameters()[:1]})
async def registry_check(request: Request) -> JSONResponse:
    """Problems in the registry folder, and how each version is served (onnx or sklearn)."""
    project = request.path_params["project"]
    if project != LOCAL_PROJECT_ID:
        return JSONResponse({"error": f"project {project} not found; the local server serves "
                                      f"projects/{LOCAL_PROJECT_ID}"}, status_code=404)
    root = _served(request.app).registry.root
    problems, versions = await run_in_threadpool(check_registry, root)
    return JSONResponse({"ok": not problems, "problems": problems, "versions": versions})


class PredictShortcut:
    """ASGI wrapper for `covertype serve`: sends each :predict request (ml v1 models and
    versions, aiplatform v1 endpoints) straight to its handler, past FastAPI's router and
    middleware, which cost more than the handler's own work; every other request goes to the
    app. The app's predict routes run the same handlers."""

    # The predict routes' paths, as Starlette matches them ({name} is [^/]+).
    PATH = re.compile(r"/v1/projects/(?P<project>[^/]+)/models/(?P<model>[^/]+?)"
                      r"(?:/versions/(?P<version>[^/]+))?:predict")

    def __init__(self, app: FastAPI) -> None:
        from pipeline.local.emulator import vertex_predict

        self.app = app
        self._vertex = vertex_predict
        self._vertex_path = re.compile(vertex_predict.PATH)
        self._routes: dict[str, tuple] = {}  # by POST path: a regex match costs ~0.7 us
        self._served: ServedModels | None = None
        self._served_endpoints: Any = None  # vertex_predict.ServedEndpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self._routes.get(path := scope["path"])
            if route is None:
                if len(self._routes) >= 4096:
                    self._routes.clear()
                route = self._routes[path] = self._route(path)
            if route:
                await route[0](*route[1:], receive, send)
                return
        await self.app(scope, receive, send)

    def _route(self, path: str) -> tuple:
        """(handler, its served models, path parameters...) of a :predict path, else ()."""
        if match := self.PATH.fullmatch(path):
            self._served = self._served or _served(self.app)
            return (answer_predict, self._served, match["project"], match["model"],
                    match["version"])
        if match := self._vertex_path.fullmatch(path):
            self._served_endpoints = (self._served_endpoints
                                      or self._vertex.served_endpoints(self.app))
            return (self._vertex.answer_predict, self._served_endpoints, match["project"],
                    match["location"], match["endpoint"])
        return ()

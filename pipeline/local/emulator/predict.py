"""AI Platform Prediction `:predict` routes over the local registry, and a registry check.

Every request compares the model's registry stamp (one small file read) with the one its
loaded versions were resolved under, so a new version or a new default is served without a
restart, and each request is answered by exactly one version, named in `X-Model-Version`
(`X-Prediction-Path` says onnx or sklearn). Failures are the cloud's predict shape,
`{"error": "<message>"}` with a 4xx status; a registry folder edited by hand into an
inconsistent state is reported for the broken model or version only.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from pipeline import schema
from pipeline.local.errors import ServiceError
from pipeline.local.home import LOCAL_PROJECT_ID
from pipeline.local.prediction import (
    ONNX,
    PredictionError,
    Predictor,
    load_predictor,
    parse_instances,
    read_verdict,
)
from pipeline.local.registry import ARTIFACT_NAMES, NAME_PATTERN, Registry
from pipeline.local.services import registry


class RequestRoute(APIRoute):
    """A route whose endpoint gets the raw Request: FastAPI documents the operation (OpenAPI)
    but validates no parameters and no body, work that costs more than an ONNX prediction."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
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
        self._stamps: dict[str, str] = {}
        self._root = str(registry.root)

    async def predictor(self, model: str, version: str | None) -> Predictor:
        """The version (default when None) that answers; loads it on first use or a change."""
        stamp = self._stamp(model, version)
        if found := self._cached(model, version, stamp):
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
            if not NAME_PATTERN.fullmatch(model):
                self.registry.stamp(model)  # raises InvalidArgument naming the rule
            info = os.stat(f"{self._root}/{model}/model.json")
            key = f"{info.st_ino}/{info.st_mtime_ns}/{info.st_size}"
            if (known := self._stamps.get(model)) and known.startswith(key + "/"):
                return known
            stamp = self.registry.stamp(model)
            if stamp:
                stamp = self._stamps[model] = f"{key}/{stamp}"
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


def _served(request: Request) -> ServedModels:
    """The app's ServedModels over the same registry as the model routes."""
    state = request.app.state
    if getattr(state, "served", None) is None:
        state.served = ServedModels(registry(request.app), state.home / "cache")
    return state.served


async def _predict(request: Request, project: str, model: str, version: str | None
                   ) -> Response:
    try:
        if project != LOCAL_PROJECT_ID:
            raise PredictionError(f"project {project} not found; the local server serves "
                                  f"projects/{LOCAL_PROJECT_ID}", 404)
        raw = await request.body()  # bounded by the security layer (1.5 MB)
        predictor = await _served(request).predictor(model, version)
        instances = parse_instances(raw)
        if predictor.path == ONNX:
            predictions = predictor.predict(instances)
        else:
            predictions = await run_in_threadpool(predictor.predict, instances)
        content = json.dumps({"predictions": predictions}, separators=(",", ":"))
    except PredictionError as error:
        return JSONResponse({"error": str(error)}, status_code=error.status)
    return Response(content, media_type="application/json",
                    headers={"X-Model-Version": predictor.version,
                             "X-Prediction-Path": predictor.path})


# Path parameters are documented here and read from the path (see RequestRoute).
@router.post("/models/{model}/versions/{version}:predict",
             openapi_extra={**PREDICT_OPENAPI, "parameters": _path_parameters("version")})
async def predict_version(request: Request) -> Response:
    """projects.predict on a version"""
    params = request.path_params
    return await _predict(request, params["project"], params["model"], params["version"])


@router.post("/models/{model}:predict", openapi_extra={**PREDICT_OPENAPI,
                                                       "parameters": _path_parameters()})
async def predict_default(request: Request) -> Response:
    """projects.predict on the model's default version"""
    params = request.path_params
    return await _predict(request, params["project"], params["model"], None)


@router.get("/registry:check", openapi_extra={"parameters": _path_parameters()[:1]})
async def registry_check(request: Request) -> JSONResponse:
    """Problems in the registry folder, and how each version is served (onnx or sklearn)."""
    project = request.path_params["project"]
    if project != LOCAL_PROJECT_ID:
        return JSONResponse({"error": f"project {project} not found; the local server serves "
                                      f"projects/{LOCAL_PROJECT_ID}"}, status_code=404)
    root = _served(request).registry.root
    problems, versions = await run_in_threadpool(check_registry, root)
    return JSONResponse({"ok": not problems, "problems": problems, "versions": versions})


class PredictShortcut:
    """ASGI wrapper for `covertype serve`: sends each :predict request (ml v1 models and
    versions, aiplatform v1 endpoints) straight to its handler, past FastAPI's router and
    middleware (about 15% of the CPU of a one-instance request); every other request goes to
    the app."""

    # The predict routes' paths, as Starlette matches them ({name} is [^/]+).
    PATH = re.compile(r"/v1/projects/(?P<project>[^/]+)/models/(?P<model>[^/]+?)"
                      r"(?:/versions/(?P<version>[^/]+))?:predict")

    def __init__(self, app: FastAPI) -> None:
        from pipeline.local.emulator import vertex_predict

        self.app = app
        self._vertex = vertex_predict
        self._vertex_path = re.compile(vertex_predict.PATH)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        post = scope["type"] == "http" and scope["method"] == "POST"
        if post and (match := self.PATH.fullmatch(scope["path"])):
            scope["app"] = self.app
            response = await _predict(Request(scope, receive, send), match["project"],
                                      match["model"], match["version"])
        elif post and (match := self._vertex_path.fullmatch(scope["path"])):
            scope["app"] = self.app
            response = await self._vertex.predict(Request(scope, receive, send),
                                                  match["project"], match["location"],
                                                  match["endpoint"])
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


# the registry check -------------------------------------------------------------------------

def check_registry(root: Path, only: str | None = None) -> tuple[list[dict], list[dict]]:
    """(problems, versions): each problem names an entry and its fix; each version says how it
    is served, from its stored fast path verdict. `only` limits the check to one model."""
    problems: list[dict] = []
    versions: list[dict] = []

    def problem(name: str, message: str) -> None:
        problems.append({"name": name, "problem": message})

    entries = [root / only] if only else sorted(root.iterdir())
    for folder in entries:
        if folder.name.startswith(".") or not folder.exists():
            continue
        if not NAME_PATTERN.fullmatch(folder.name) or not folder.is_dir():
            problem(str(folder), "not a model folder (a letter, then letters, digits or "
                                 "underscores); remove it from the registry")
            continue
        name = f"projects/{LOCAL_PROJECT_ID}/models/{folder.name}"
        version_names = sorted(p.name for p in (folder / "versions").glob("*")
                               if not p.name.startswith("."))
        good = [v for v in version_names if _check_version(folder / "versions" / v,
                                                           f"{name}/versions/{v}", problem)]
        try:
            record = json.loads((folder / "model.json").read_text())
            default = (record.get("defaultVersion") or {}).get("name", "").rsplit("/", 1)[-1]
        except (OSError, ValueError, AttributeError) as error:
            problem(name, f"model.json is missing or not a JSON object ({type(error).__name__}); "
                          "restore it or delete the model folder")
            continue
        if default and default not in good:
            problem(name, f"the default version {default} is missing or broken; call setDefault "
                          "on a servable version")
        elif not default and good:
            problem(name, "no default version; call setDefault on one of its versions")
        for version in good:
            verdict = read_verdict(folder / "versions" / version) or {}
            versions.append({"name": f"{name}/versions/{version}", "isDefault": version == default,
                             "predictionPath": verdict.get("path", "not loaded yet"),
                             "detail": verdict.get("reason", "")})
    return problems, versions


def _check_version(folder: Path, name: str, problem: Callable[[str, str], None]) -> bool:
    """Report what keeps one version folder from being served; True when it is servable."""
    if not NAME_PATTERN.fullmatch(folder.name) or not folder.is_dir():
        problem(str(folder), "not a version folder; remove it from the registry")
        return False
    try:
        if not isinstance(json.loads((folder / "version.json").read_text()), dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as error:
        problem(name, f"version.json is missing or not a JSON object ({type(error).__name__}); "
                      "delete the version folder and deploy it again")
        return False
    artifacts = [artifact for artifact in ARTIFACT_NAMES if (folder / artifact).is_file()]
    if len(artifacts) != 1:
        problem(name, f"holds {len(artifacts)} of {' / '.join(ARTIFACT_NAMES)}; expected one: "
                      "delete the version and deploy it again")
        return False
    return True


def explain(root: Path, model: str, version: str | None) -> str | None:
    """The registry problem that stops `model` (its default, or `version`) from being served."""
    if not NAME_PATTERN.fullmatch(model) or not (root / model).is_dir():
        return None
    problems, _ = check_registry(root, only=model)
    name = f"projects/{LOCAL_PROJECT_ID}/models/{model}"
    wanted = f"{name}/versions/{version or _default_of(root / model)}"
    for item in problems:  # the version's own problem first
        if item["name"] == wanted:
            return f"{item['name']} cannot be served: {item['problem']}"
    for item in problems:
        if item["name"] == name and (version is None or item["problem"].startswith("model.json")):
            return f"{item['name']} cannot be served: {item['problem']}"
    return None


def _default_of(folder: Path) -> str:
    try:
        record = json.loads((folder / "model.json").read_text())
        return record["defaultVersion"]["name"].rsplit("/", 1)[-1]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""

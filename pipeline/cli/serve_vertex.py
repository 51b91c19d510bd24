"""`covertype serve` as a Vertex AI custom serving container (the serving image's entrypoint).

Vertex AI starts the container with AIP_HTTP_PORT, AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE and
AIP_STORAGE_URI (its copy of the Model's artifactUri). When they are set, `covertype serve`
serves only the model found at AIP_STORAGE_URI (model.pkl or model.joblib, local or gs://):
- it listens on 0.0.0.0:AIP_HTTP_PORT (Vertex AI reaches the container from outside it);
- GET AIP_HEALTH_ROUTE answers 503 while the model loads, 200 once it serves;
- POST AIP_PREDICT_ROUTE takes `{"instances": [...]}` (extra keys such as "parameters" are
  ignored) and answers `{"predictions": [...]}`, with the same instance checks, bounded body
  and verified ONNX fast path as the local server; a bad request is a 4xx `{"error": "..."}`;
- nothing else is served (no registry, no run browser). A model that cannot load ends the
  process with a one-line error, so Vertex AI reports the deployment as failed.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import schema
from pipeline.errors import one_line

log = logging.getLogger("covertype.serve")
VARIABLES = ("AIP_HTTP_PORT", "AIP_HEALTH_ROUTE", "AIP_PREDICT_ROUTE", "AIP_STORAGE_URI")
BIND_HOST = "0.0.0.0"  # Vertex AI sends health checks and predictions from outside the container


@dataclass(frozen=True)
class ContainerSettings:
    """The custom-container contract's environment, validated."""

    port: int
    health_route: str
    predict_route: str
    storage_uri: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ContainerSettings | None:
        """The settings when all four AIP_* variables are set, None when none is.

        Raises:
            ValueError: some but not all are set, or one is malformed (one line).
        """
        env = os.environ if environ is None else environ
        values = {name: env.get(name, "").strip() for name in VARIABLES}
        given = [name for name, value in values.items() if value]
        if not given:
            return None
        if len(given) < len(VARIABLES):
            missing = next(name for name in VARIABLES if name not in given)
            raise ValueError(f"{given[0]} is set but {missing} is not; Vertex AI sets all of "
                             f"{', '.join(VARIABLES)}: set them all or none")
        port = values["AIP_HTTP_PORT"]
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"AIP_HTTP_PORT={port!r} is not a port; use 1..65535, e.g. 8080")
        for name in ("AIP_HEALTH_ROUTE", "AIP_PREDICT_ROUTE"):
            if not values[name].startswith("/") or any(c.isspace() for c in values[name]):
                raise ValueError(f"{name}={values[name]!r} is not a URL path; use e.g. /predict")
        if values["AIP_HEALTH_ROUTE"] == values["AIP_PREDICT_ROUTE"]:
            raise ValueError("AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE are the same path; give "
                             "each its own")
        return cls(int(port), values["AIP_HEALTH_ROUTE"], values["AIP_PREDICT_ROUTE"],
                   values["AIP_STORAGE_URI"])


class ServedModel:
    """The one model of the container: loaded in the background, then its Predictor."""

    def __init__(self, storage_uri: str, folder: Path | None = None) -> None:
        self.storage_uri = storage_uri
        self.folder = folder  # where the artifact is copied (default: a new temporary folder)
        self.predictor: Any = None
        self.failure: str | None = None
        self.loaded = threading.Event()

    def load(self) -> None:
        """Copy the artifact from storage and load it with its fast path (sets `loaded`)."""
        from pipeline.local.prediction import load_predictor

        try:
            folder = self.folder or Path(tempfile.mkdtemp(prefix="covertype-model-"))
            artifact = fetch_artifact(self.storage_uri, folder)
            self.predictor = load_predictor({"name": self.storage_uri}, artifact,
                                            folder / "cache")
        except Exception as error:  # any failure to load means the container cannot serve
            self.failure = f"cannot serve {self.storage_uri}: {one_line(error)}"
        finally:
            self.loaded.set()


def fetch_artifact(storage_uri: str, folder: Path) -> Path:
    """Copy the single model.pkl or model.joblib at `storage_uri` into `folder`."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(storage_uri)
    names = {path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(root, detail=False)}
    found = [name for name in schema.MODEL_ARTIFACT_NAMES if name in names]
    if len(found) != 1:
        raise ValueError(f"AIP_STORAGE_URI holds {' and '.join(found) or 'no model file'}; "
                         f"expected exactly one of {', '.join(schema.MODEL_ARTIFACT_NAMES)}")
    target = folder / found[0]
    fs.get(f"{root.rstrip('/')}/{found[0]}", str(target))
    return target


def create_app(settings: ContainerSettings, model: ServedModel) -> Any:
    """The container's two routes over `model`."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from pipeline.local.instances import PredictionError, parse_instances

    async def health(_: Request) -> JSONResponse:
        if model.predictor is None:
            return JSONResponse({"error": model.failure or "the model is loading"}, 503)
        return JSONResponse({"status": "ok", "predictionPath": model.predictor.path})

    async def predict(request: Request) -> JSONResponse:
        if model.predictor is None:
            return JSONResponse({"error": model.failure or "the model is loading; retry"}, 503)
        try:
            instances = parse_instances(await request.body())
            predictions = model.predictor.predict(instances)
        except PredictionError as error:
            return JSONResponse({"error": str(error)}, error.status)
        return JSONResponse({"predictions": predictions},
                            headers={"X-Prediction-Path": model.predictor.path})

    return Starlette(routes=[Route(settings.health_route, health, methods=["GET"]),
                             Route(settings.predict_route, predict, methods=["POST"])])


def serve(settings: ContainerSettings) -> int:
    """Serve until stopped; 1 (after a one-line error) if the model cannot be loaded."""
    import uvicorn

    from pipeline.cli.serve import RequestLog, check_address
    from pipeline.local.emulator.security import JSON, VERTEX_PREDICT_LIMIT, BodyLimit, RouteRule

    # Vertex AI's own front end checks the caller; the container still bounds the body.
    body_rule = RouteRule(re.compile(".*"), JSON, 1_572_864, VERTEX_PREDICT_LIMIT)

    check_address(BIND_HOST, settings.port)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    model = ServedModel(settings.storage_uri)
    server = uvicorn.Server(uvicorn.Config(
        RequestLog(BodyLimit(create_app(settings, model), body_rule)), host=BIND_HOST,
        port=settings.port, workers=1, access_log=False, log_level="warning"))

    def load_then_check() -> None:
        model.load()
        if model.failure:
            server.should_exit = True

    log.info("Vertex AI container mode: serving %s on http://%s:%d (predict: POST %s, "
             "health: GET %s)", settings.storage_uri, BIND_HOST, settings.port,
             settings.predict_route, settings.health_route)
    threading.Thread(target=load_then_check, name="load-model", daemon=True).start()
    server.run()
    if model.failure:
        print(f"covertype: error: {model.failure}", file=sys.stderr)
        return 1
    return 0

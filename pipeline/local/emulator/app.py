"""Builds the emulator's FastAPI app: one router per ml v1 and aiplatform v1 resource family,
errors shaped at the edge."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pipeline import discovery
from pipeline.local.emulator.security import AccessPolicy, Guard
from pipeline.local.errors import ServiceError
from pipeline.local.home import local_home

SERVED_APIS = (("ml", "v1"), ("aiplatform", "v1"))


def secure(app: FastAPI, policy: AccessPolicy | None = None) -> Any:
    """What a server runs: the app behind the :predict shortcut, all behind the security layer
    (emulator/security.py), so every route, the shortcut's included, passes its rules."""
    from pipeline.local.emulator.predict import PredictShortcut

    return Guard(PredictShortcut(app), policy)


def create_app(home: Path | None = None, images: Mapping[str, str] | None = None) -> FastAPI:
    """The emulator app over the local home folder (default: `local_home()`); `images` maps
    training images to local programs (`covertype run --local --image`)."""
    from pipeline.local import browser
    from pipeline.local.emulator import (
        bigquery_api,
        components,
        gcs_api,
        jobs,
        kfp_api,
        models,
        predict,
        vertex_endpoints,
        vertex_jobs,
        vertex_models,
        vertex_predict,
    )

    app = FastAPI(title="Covertype local AI Platform (ml v1) and Vertex AI (aiplatform v1) "
                        "subsets")
    app.state.home = home or local_home()
    app.state.images = dict(images or {})

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, error: ServiceError) -> JSONResponse:
        body = {"error": {"code": error.code, "message": str(error), "status": error.status}}
        if error.reason:
            body["error"]["errors"] = [{"message": str(error), "domain": "global",
                                        "reason": error.reason}]
        return JSONResponse(body, status_code=error.code)

    @app.get("/discovery/{api}/{version}", include_in_schema=False)
    def discovery_route(api: str, version: str, request: Request) -> JSONResponse:
        """The real ml v1 or aiplatform v1 discovery document, its rootUrl pointed here."""
        if (api, version) not in SERVED_APIS:
            return JSONResponse({"error": {"code": 404, "message": f"no API {api} {version}; "
                                           "this server has ml v1 and aiplatform v1",
                                           "status": "NOT_FOUND"}}, status_code=404)
        document = dict(discovery.document(api, version))
        document["rootUrl"] = document["baseUrl"] = str(request.base_url)
        return JSONResponse(document)

    @app.get("/healthz")
    def health() -> dict:
        """Liveness probe."""
        return {"status": "ok"}

    app.include_router(predict.router)  # first: predict is the hot path
    app.include_router(vertex_predict.router)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(vertex_jobs.router)
    app.include_router(vertex_models.router)
    app.include_router(vertex_endpoints.router)
    app.include_router(kfp_api.router)
    app.include_router(gcs_api.router)
    app.include_router(bigquery_api.router)
    app.include_router(components.router)
    app.include_router(browser.router)
    return app

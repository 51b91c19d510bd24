"""The aiplatform v1 calls of the Vertex AI components: one short method per REST method.

Built on `pipeline.ml_client.aiplatform_service(region)`: Google's discovery client over the
packaged aiplatform v1 document, against the regional endpoint or, when
`VERTEX_AI_EMULATOR_HOST` is set, the local stand-in. Every failure becomes a VertexError whose
text is one line: what was called, the HTTP status, Google's message and a fix.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from pipeline import ml_client
from pipeline.errors import http_error_message, one_line

CUSTOM_JOBS, TUNING_JOBS = "customJobs", "hyperparameterTuningJobs"
# Which `operations` collection serves an operation name (the client checks each pattern).
_OPERATION_OWNER = re.compile(
    r"projects/[^/]+/locations/[^/]+/(?:(customJobs|hyperparameterTuningJobs|models|endpoints)"
    r"/[^/]+/)?operations/[^/]+")
_FIXES = {400: "fix the request named above", 401: "check the credentials (ADC) of the step",
          403: "grant the step's service account the Vertex AI User role and enable the "
               "Vertex AI API", 404: "check project_id, region and the resource name",
          409: "the resource exists already; retry the step", 429: "retry the step later"}


class VertexError(RuntimeError):
    """A Vertex AI call failed or a job or operation ended badly; the text is one line."""


class VertexClient:
    """The Vertex AI resources of one project and region."""

    def __init__(self, project: str, region: str, service: Any = None) -> None:
        from google.auth.exceptions import GoogleAuthError

        self.parent = f"projects/{project}/locations/{region}"
        try:
            service = service or ml_client.aiplatform_service(region)
        except GoogleAuthError as error:
            raise VertexError(f"no Google credentials for Vertex AI ({one_line(error)}); run the "
                              "step as a service account (Workload Identity, or USE_KFP_SA=True)"
                              f" or set {ml_client.VERTEX_EMULATOR_HOST_ENV} for the local "
                              "stand-in") from None
        self._locations = service.projects().locations()

    # jobs ----------------------------------------------------------------------------------
    def create_job(self, kind: str, body: dict) -> dict:
        """Create a CustomJob or HyperparameterTuningJob (`kind`: CUSTOM_JOBS, TUNING_JOBS)."""
        return _execute(self._jobs(kind).create(parent=self.parent, body=body),
                        f"creating a {_singular(kind)} in {self.parent}")

    def get_job(self, kind: str, name: str) -> dict:
        return _execute(self._jobs(kind).get(name=name), f"getting {name}")

    def list_jobs(self, kind: str, where: str) -> list[dict]:
        """Every job of `kind` matching the list filter `where` (all pages)."""
        jobs = self._jobs(kind)
        return list(_pages(jobs, jobs.list(parent=self.parent, filter=where), kind,
                           f"listing {kind} of {self.parent}"))

    # models --------------------------------------------------------------------------------
    def upload_model(self, body: dict) -> dict:
        """models.upload: the long-running Operation."""
        return _execute(self._locations.models().upload(parent=self.parent, body=body),
                        f"uploading a model to {self.parent}")

    def list_models(self, where: str) -> list[dict]:
        models = self._locations.models()
        return list(_pages(models, models.list(parent=self.parent, filter=where), "models",
                           f"listing models of {self.parent}"))

    # endpoints -----------------------------------------------------------------------------
    def list_endpoints(self) -> list[dict]:
        endpoints = self._locations.endpoints()
        return list(_pages(endpoints, endpoints.list(parent=self.parent), "endpoints",
                           f"listing endpoints of {self.parent}"))

    def create_endpoint(self, body: dict) -> dict:
        """endpoints.create: the long-running Operation."""
        return _execute(self._locations.endpoints().create(parent=self.parent, body=body),
                        f"creating an endpoint in {self.parent}")

    def get_endpoint(self, name: str) -> dict:
        return _execute(self._locations.endpoints().get(name=name), f"getting {name}")

    def deploy_model(self, endpoint: str, body: dict) -> dict:
        """endpoints.deployModel: the long-running Operation."""
        return _execute(self._locations.endpoints().deployModel(endpoint=endpoint, body=body),
                        f"deploying a model to {endpoint}")

    def undeploy_model(self, endpoint: str, body: dict) -> dict:
        """endpoints.undeployModel: the long-running Operation."""
        return _execute(self._locations.endpoints().undeployModel(endpoint=endpoint, body=body),
                        f"undeploying deployed model {body.get('deployedModelId')} from {endpoint}")

    # operations ----------------------------------------------------------------------------
    def get_operation(self, name: str) -> dict:
        """operations.get of whichever collection the operation belongs to."""
        match = _OPERATION_OWNER.fullmatch(name or "")
        if not match:
            raise VertexError(f"operation name {name!r} is not a Vertex AI operation; the service "
                              "answered something unexpected: retry the step")
        owner = match.group(1)
        collection = getattr(self._locations, owner)().operations() if owner else (
            self._locations.operations())
        return _execute(collection.get(name=name), f"getting operation {name}")

    def _jobs(self, kind: str) -> Any:
        if kind not in (CUSTOM_JOBS, TUNING_JOBS):
            raise ValueError(f"unknown job kind {kind!r}; use {CUSTOM_JOBS} or {TUNING_JOBS}")
        return getattr(self._locations, kind)()


def _singular(kind: str) -> str:
    return {CUSTOM_JOBS: "CustomJob", TUNING_JOBS: "HyperparameterTuningJob"}.get(kind, kind)


def _pages(collection: Any, request: Any, field: str, what: str) -> Iterator[dict]:
    while request is not None:
        page = _execute(request, what)
        yield from page.get(field, [])
        request = collection.list_next(request, page)


def _execute(request: Any, what: str) -> dict:
    """Run one request; HTTP and network failures become a one-line VertexError."""
    from google.auth.exceptions import GoogleAuthError
    from googleapiclient.errors import HttpError

    try:
        return request.execute()
    except HttpError as error:
        status = error.resp.status
        raise VertexError(f"{what} failed: HTTP {status} {http_error_message(error)}; "
                          f"{_FIXES.get(status, 'retry the step')}") from None
    except GoogleAuthError as error:  # credentials that cannot be refreshed
        raise VertexError(f"{what} failed: {one_line(error)}; check the step's credentials"
                          ) from None
    except OSError as error:
        raise VertexError(f"{what} failed: {one_line(error)}; check the network or "
                          f"{ml_client.VERTEX_EMULATOR_HOST_ENV}") from None

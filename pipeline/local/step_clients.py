"""Google's clients inside a local step, pointed at the local stand-ins (see `step_env`).

Applied by the step's `sitecustomize` right after each module loads, never elsewhere:
- `google.auth.default()` gives anonymous credentials and the project of
  `GOOGLE_CLOUD_PROJECT`: a local step never uses (or needs) the user's Google credentials.
  With it, `storage.Client()` and `bigquery.Client()` work as they are, since they honour
  `STORAGE_EMULATOR_HOST` and `BIGQUERY_EMULATOR_HOST`.
- `googleapiclient.discovery.build(api, version)` of an API with a local stand-in (ml v1,
  aiplatform v1, bigquery v2) builds from the packaged discovery document with the stand-in
  as root URL, offline. Any other API is refused in one line: a local step has no cloud.
  A `discoveryServiceUrl` the caller chose is honoured as given.
- google-cloud-bigquery never makes a BigQuery Storage (gRPC) client: results are read
  through the REST subset.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import os
from types import ModuleType
from typing import Any

from pipeline.ml_client import EMULATOR_HOST_ENV, VERTEX_EMULATOR_HOST_ENV

BIGQUERY_EMULATOR_ENV = "BIGQUERY_EMULATOR_HOST"
PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"
# API -> the switch naming its local stand-in.
STAND_INS = {("ml", "v1"): EMULATOR_HOST_ENV, ("aiplatform", "v1"): VERTEX_EMULATOR_HOST_ENV,
             ("bigquery", "v2"): BIGQUERY_EMULATOR_ENV}


def patch(module: ModuleType) -> None:
    """Point a freshly imported Google module at the local stand-ins."""
    {"google.auth": _patch_auth, "googleapiclient.discovery": _patch_discovery,
     "google.cloud.bigquery": _patch_bigquery}[module.__name__](module)


def anonymous_default(scopes: Any = None, request: Any = None, quota_project_id: Any = None,
                      default_scopes: Any = None) -> tuple[Any, str | None]:
    """`google.auth.default` of a local step: anonymous credentials, the step's project."""
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials(), os.environ.get(PROJECT_ENV) or None


def _patch_auth(auth: ModuleType) -> None:
    auth.default = importlib.import_module("google.auth._default").default = anonymous_default


def _patch_discovery(discovery: ModuleType) -> None:
    original = discovery.build
    signature = inspect.signature(original)
    default_urls = {discovery.DISCOVERY_URI, discovery.V2_DISCOVERY_URI}

    @functools.wraps(original)
    def build(serviceName: str, version: str, *args: Any, **kwargs: Any) -> Any:
        arguments = signature.bind(serviceName, version, *args, **kwargs).arguments
        if arguments.get("discoveryServiceUrl", discovery.DISCOVERY_URI) not in default_urls:
            return original(serviceName, version, *args, **kwargs)
        arguments.pop("serviceName"), arguments.pop("version")
        return build_local(discovery, serviceName, version, **arguments)

    discovery.build = build


def build_local(discovery: ModuleType, serviceName: str, version: str,  # noqa: N803
                **kwargs: Any) -> Any:
    """`build(api, version, ...)` against the API's local stand-in, from the packaged document.

    Credentials and an `api_endpoint` the caller passes are dropped: a local step reaches
    only the stand-ins, anonymously.

    Raises:
        googleapiclient.errors.UnknownApiNameOrVersion: no local stand-in for this API.
    """
    from google.auth.credentials import AnonymousCredentials
    from googleapiclient.errors import UnknownApiNameOrVersion

    from pipeline import discovery as documents

    api = serviceName
    switch = STAND_INS.get((api, version))
    host = os.environ.get(switch, "").rstrip("/") if switch else ""
    if not host:
        known = ", ".join(f"{name} {ver}" for name, ver in STAND_INS)
        raise UnknownApiNameOrVersion(
            f"discovery.build({api!r}, {version!r}): a local step reaches only the local "
            f"stand-ins ({known}); run this step on the cloud, or use one of those APIs")
    document = dict(documents.document(api, version))
    document["rootUrl"] = host + "/"
    document["baseUrl"] = host + "/" + document.get("servicePath", "")
    options = kwargs.get("client_options")
    if isinstance(options, dict):
        options = {key: value for key, value in options.items() if key != "api_endpoint"}
    elif options is not None and getattr(options, "api_endpoint", None):
        options.api_endpoint = None
    http = kwargs.get("http")
    return discovery.build_from_document(
        document, http=http, developerKey=kwargs.get("developerKey"), model=kwargs.get("model"),
        requestBuilder=kwargs.get("requestBuilder", discovery.HttpRequest),
        credentials=None if http is not None else AnonymousCredentials(),
        client_options=options)


def _patch_bigquery(bigquery: ModuleType) -> None:
    from google.cloud.bigquery import client

    client.Client._ensure_bqstorage_client = lambda self, *args, **kwargs: None

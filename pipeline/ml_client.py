"""The one way this package builds its Google ML clients: AI Platform (ml v1) and Vertex AI.

Endpoint switches, in the spirit of `STORAGE_EMULATOR_HOST`:
- `AI_PLATFORM_EMULATOR_HOST=http://127.0.0.1:PORT` points the ml v1 client at the local
  emulator: the discovery document is fetched from the emulator, whose `rootUrl` sends every
  request back to it, with anonymous credentials. Unset, the client talks to
  ml.googleapis.com with application default credentials.
- `VERTEX_AI_EMULATOR_HOST=http://127.0.0.1:PORT` points the aiplatform v1 client at the local
  Vertex AI stand-in, with anonymous credentials. Unset, it talks to the regional endpoint
  `https://{region}-aiplatform.googleapis.com/` with application default credentials.
The aiplatform v1 client is built offline from the packaged discovery document
(`pipeline/discovery/`), as googleapiclient 1.x bundles none. Copied into the base image, so it
imports only googleapiclient/google-auth and this package's cloud path.
"""
from __future__ import annotations

import os
import re
from typing import Any

EMULATOR_HOST_ENV = "AI_PLATFORM_EMULATOR_HOST"
VERTEX_EMULATOR_HOST_ENV = "VERTEX_AI_EMULATOR_HOST"
# How often a step polls a job of a local stand-in: a local request costs milliseconds, and a
# job's end is seen at once, not up to a cloud interval (30 s) later.
EMULATOR_POLL_SECONDS = 0.1
_REGION = re.compile(r"[a-z][a-z0-9-]{0,62}")


def _emulator_host(variable: str) -> str:
    """The emulator URL from `variable` without a trailing slash, or '' when unset."""
    host = os.environ.get(variable, "").rstrip("/")
    if host and not host.startswith(("http://", "https://")):
        raise ValueError(f"{variable}={host!r} is not a URL; set it like http://127.0.0.1:8080")
    return host


def ml_service(http: Any = None) -> Any:
    """Build the `ml` v1 Resource, against the emulator when `AI_PLATFORM_EMULATOR_HOST` is set."""
    from googleapiclient import discovery

    host = _emulator_host(EMULATOR_HOST_ENV)
    if not host:
        return discovery.build("ml", "v1", http=http, cache_discovery=False)
    from google.auth.credentials import AnonymousCredentials

    return discovery.build(
        "ml",
        "v1",
        http=http,
        discoveryServiceUrl=host + "/discovery/{api}/{apiVersion}",
        credentials=None if http else AnonymousCredentials(),
        cache_discovery=False,
    )


def aiplatform_service(region: str, http: Any = None) -> Any:
    """Build the `aiplatform` v1 Resource for `region`.

    Raises:
        ValueError: `region` is not a Google Cloud region name, or the switch is not a URL.
    """
    from googleapiclient import discovery as google_discovery

    from pipeline import discovery

    if not _REGION.fullmatch(region or ""):
        raise ValueError(f"region {region!r} is not a Google Cloud region; use e.g. us-central1")
    host = _emulator_host(VERTEX_EMULATOR_HOST_ENV)
    document = dict(discovery.document("aiplatform", "v1"))
    document["rootUrl"] = document["baseUrl"] = (
        host + "/" if host else f"https://{region}-aiplatform.googleapis.com/")
    credentials = None
    if host and http is None:
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    return google_discovery.build_from_document(document, http=http, credentials=credentials)

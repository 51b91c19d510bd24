"""The one way this package builds an AI Platform (ml v1) client.

`AI_PLATFORM_EMULATOR_HOST=http://127.0.0.1:PORT` points the client at the local
emulator (in the spirit of `STORAGE_EMULATOR_HOST`): the discovery document is fetched
from the emulator, whose `rootUrl` sends every request back to it, with anonymous
credentials. Unset, the client talks to ml.googleapis.com with application default
credentials. Copied into the base image, so it imports only googleapiclient/google-auth.
"""
from __future__ import annotations

import os
from typing import Any

EMULATOR_HOST_ENV = "AI_PLATFORM_EMULATOR_HOST"


def ml_service(http: Any = None) -> Any:
    """Build the `ml` v1 Resource, against the emulator when `AI_PLATFORM_EMULATOR_HOST` is set."""
    from googleapiclient import discovery

    host = os.environ.get(EMULATOR_HOST_ENV, "").rstrip("/")
    if not host:
        return discovery.build("ml", "v1", http=http, cache_discovery=False)
    if not host.startswith(("http://", "https://")):
        raise ValueError(
            f"{EMULATOR_HOST_ENV}={host!r} is not a URL; set it like http://127.0.0.1:8080"
        )
    from google.auth.credentials import AnonymousCredentials

    return discovery.build(
        "ml",
        "v1",
        http=http,
        discoveryServiceUrl=host + "/discovery/{api}/{apiVersion}",
        credentials=None if http else AnonymousCredentials(),
        cache_discovery=False,
    )

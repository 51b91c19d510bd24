"""Google's discovery documents of the APIs this package calls or stands in for (see PROVENANCE.md).

Standard library only: the cloud path builds clients from them with `build_from_document`.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
APIS = (("ml", "v1"), ("aiplatform", "v1"), ("bigquery", "v2"))


@functools.cache
def document(api: str, version: str) -> dict:
    """The discovery document of `api` `version`, parsed once per process.

    Raises:
        KeyError: this package does not carry that API's document.
    """
    if (api, version) not in APIS:
        raise KeyError(f"no discovery document for {api} {version}; known: "
                       f"{', '.join(f'{a} {v}' for a, v in APIS)}")
    return json.loads((FOLDER / f"{api}.{version}.json").read_text(encoding="utf-8"))

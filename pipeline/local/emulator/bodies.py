"""The JSON body of an emulator request, read once for every route module."""
from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from pipeline.errors import one_line
from pipeline.local.errors import InvalidArgument


async def json_body(request: Request) -> Any:
    """The parsed body; an empty body is `{}` (a request message with no fields set)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as error:
        raise InvalidArgument(f"the request body is not valid JSON ({one_line(error)}); send "
                              "a JSON object") from None


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, refused as Cloud Storage and BigQuery refuse it (with their
    `errors[].reason`: parseError, invalid); an empty body is `{}`."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise InvalidArgument("the request body is not valid JSON", reason="parseError") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object", reason="invalid")
    return body

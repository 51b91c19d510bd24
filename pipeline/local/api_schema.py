"""Request bodies read as a Google API server reads them, from the API's discovery document.

Shared by the local stand-ins of ml v1 and aiplatform v1: unknown fields are refused (nested
too), output-only fields are dropped as the cloud ignores them, a value of the wrong JSON type
is refused, and numbers are put in their proto3 JSON form (int64 as a decimal string, int32 as
a JSON integer), so a stored request reads back exactly as Google's server would print it. As
Google's parser does, a boolean field also takes the text "true" or "false" (what the 0.2.5
launcher's fire makes of JSON's true and false) and stores the boolean.
Enum values are left to the surface that reads the field: it names the field and the fix.
"""
from __future__ import annotations

import re
from typing import Any

from pipeline.launcher_values import google_boolean
from pipeline.local.errors import InvalidArgument

_INTEGER = re.compile(r"-?[0-9]+")
_EXPECTED = {"object": "a JSON object", "array": "a list", "string": "a string",
             "integer": "an integer", "number": "a number", "boolean": "true or false"}


def parse_request(document: dict, schema: str, body: Any, where: str) -> dict:
    """The body as a normalised copy, or InvalidArgument naming the first bad field.

    Args:
        document: the API's discovery document.
        schema: the request schema's name in the document, e.g. GoogleCloudAiplatformV1CustomJob.
        body: the parsed JSON body.
        where: how the message names the body, e.g. "customJob".
    """
    return _value(document, {"$ref": schema}, body, where)


def short_name(document: dict, schema: str) -> str:
    """A schema's message name: GoogleCloudAiplatformV1CustomJob -> CustomJob."""
    prefix = f"GoogleCloud{document['name'].capitalize()}{document['version'].capitalize()}"
    return schema.removeprefix(prefix).lstrip("_")


def _value(document: dict, spec: dict, value: Any, where: str) -> Any:
    if "$ref" in spec:
        return _object(document, spec["$ref"], value, where)
    kind = spec.get("type")
    if kind == "any":
        return value
    if kind == "object":
        if not isinstance(value, dict):
            raise InvalidArgument(f"{where} must be a JSON object")
        extra = spec.get("additionalProperties", {"type": "any"})
        return {key: _value(document, extra, item, f"{where}[{key!r}]")
                for key, item in value.items()}
    if kind == "array":
        if not isinstance(value, list):
            items = spec.get("items", {}).get("type")
            suffix = f" of {items}s" if items in ("string", "integer", "number") else ""
            raise InvalidArgument(f"{where} must be a list{suffix}")
        return [_value(document, spec["items"], item, f"{where}[{index}]")
                for index, item in enumerate(value)]
    return _scalar(kind, spec.get("format"), value, where)


def _object(document: dict, schema: str, value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be a JSON object ({short_name(document, schema)})")
    properties = document["schemas"][schema].get("properties", {})
    parsed = {}
    for name, item in value.items():
        if name not in properties:
            raise InvalidArgument(
                f"unknown field {name!r} in {where}; use the {document['name']} "
                f"{document['version']} field names of {short_name(document, schema)}")
        if properties[name].get("readOnly"):
            continue  # output only: ignored in requests, as the cloud does
        parsed[name] = _value(document, properties[name], item, f"{where}.{name}")
    return parsed


def _scalar(kind: str | None, fmt: str | None, value: Any, where: str) -> Any:
    """A string, integer, number or boolean in its proto3 JSON form."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    if kind == "string" and fmt in ("int64", "uint64"):
        if whole or (isinstance(value, str) and _INTEGER.fullmatch(value.strip())):
            return str(int(value))
        raise InvalidArgument(f"{where} must be an integer, not {value!r:.60}")
    if kind == "integer":
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            return int(value)
        if whole:
            return value
    elif kind == "number":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
    elif kind == "boolean":
        if (boolean := google_boolean(value)) is not None:
            return boolean
    elif kind == "string":
        if isinstance(value, str):
            return value
    raise InvalidArgument(f"{where} must be {_EXPECTED.get(kind or '', kind)}, "
                          f"not {value!r:.60}")

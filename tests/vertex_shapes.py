"""Checks that a JSON value has the shape of an aiplatform v1 schema of the discovery document.

For the Vertex AI tests' own request bodies and job fixtures: every key is a property of the
schema, every enum value is one of the document's, int64 fields are JSON strings, int32 and
double fields are numbers. (The local stand-in's tests validate its responses the same way.)
"""
from __future__ import annotations

from typing import Any

from pipeline import discovery

PREFIX = "GoogleCloudAiplatformV1"


def problems(schema: str, value: Any, where: str = "") -> list[str]:
    """Every way `value` departs from the document's schema `schema` (short name or full)."""
    schemas = discovery.document("aiplatform", "v1")["schemas"]
    name = schema if schema in schemas else PREFIX + schema
    return _check(schemas, schemas[name], value, where or name)


def _check(schemas: dict, spec: dict, value: Any, where: str) -> list[str]:
    if "$ref" in spec:
        return _check(schemas, schemas[spec["$ref"]], value, where)
    kind, found = spec.get("type"), []
    if kind == "object" and "properties" in spec:
        if not isinstance(value, dict):
            return [f"{where} is not an object"]
        for key, item in value.items():
            if key not in spec["properties"]:
                found.append(f"{where}.{key} is not a field")
            else:
                found += _check(schemas, spec["properties"][key], item, f"{where}.{key}")
    elif kind == "object" and "additionalProperties" in spec:
        if not isinstance(value, dict):
            return [f"{where} is not a map"]
        for key, item in value.items():
            found += _check(schemas, spec["additionalProperties"], item, f"{where}[{key}]")
    elif kind == "array":
        if not isinstance(value, list):
            return [f"{where} is not a list"]
        for index, item in enumerate(value):
            found += _check(schemas, spec["items"], item, f"{where}[{index}]")
    elif kind == "string":
        if not isinstance(value, str):
            found.append(f"{where} is {value!r}, not a string"
                         + (" (int64 is a JSON string)" if spec.get("format") == "int64" else ""))
        elif "enum" in spec and value not in spec["enum"]:
            found.append(f"{where} is {value!r}, not one of the enum")
    elif kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                kind == "integer" and not float(value).is_integer()):
            found.append(f"{where} is {value!r}, not an {kind}")
    elif kind == "boolean" and not isinstance(value, bool):
        found.append(f"{where} is {value!r}, not a boolean")
    return found

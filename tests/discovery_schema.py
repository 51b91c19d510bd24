"""Check a JSON value against a schema of a Google discovery document, strictly.

Used by the tests of every local stand-in of a Google REST API (ml v1, aiplatform v1, bigquery
v2): a response must be what Google's own server could send. Written apart from the code under
test, from the discovery format itself:

- `$ref` resolves to `document["schemas"][name]`;
- objects: no field outside `properties`; maps (`additionalProperties`) check every value;
- strings with format int64/uint64 are decimal integers in a JSON string (proto3 JSON);
  google-datetime / date-time are RFC 3339 timestamps, google-duration is like "3.5s";
- integers (int32/uint32) are JSON integers in range, never booleans; numbers are int or float;
- `enum` values come from the list;
- a `type: any` object carrying `"@type": "type.googleapis.com/<package>.<Message>"` (an
  Operation's metadata and response) is checked against the schema that message maps to.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any

_INT64 = re.compile(r"-?(0|[1-9][0-9]*)")
_UINT64 = re.compile(r"0|[1-9][0-9]*")
_DURATION = re.compile(r"-?[0-9]+(\.[0-9]{1,9})?s")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1)}
_TYPE_URL = "type.googleapis.com/"


class SchemaMismatch(AssertionError):
    """The value does not conform; the message names the JSON path and the rule."""


def assert_conforms(document: dict, schema_name: str, value: Any) -> None:
    """Raise SchemaMismatch unless `value` conforms to `document["schemas"][schema_name]`."""
    if schema_name not in document["schemas"]:
        raise SchemaMismatch(f"the document has no schema {schema_name!r}")
    _check(document, {"$ref": schema_name}, value, "$")


def _check(document: dict, schema: dict, value: Any, path: str) -> None:
    if "$ref" in schema:
        _check(document, document["schemas"][schema["$ref"]], value, path)
        return
    kind = schema.get("type")
    if kind == "any":
        if isinstance(value, dict) and "@type" in value:
            _check_any(document, value, path)
        return
    if kind == "object":
        _check_object(document, schema, value, path)
    elif kind == "array":
        _expect(isinstance(value, list), path, f"a JSON array, not {value!r:.80}")
        for index, item in enumerate(value):
            _check(document, schema["items"], item, f"{path}[{index}]")
    elif kind == "string":
        _check_string(schema, value, path)
    elif kind == "integer":
        _expect(isinstance(value, int) and not isinstance(value, bool), path,
                f"a JSON integer, not {value!r:.80}")
        low, high = _INT_RANGES.get(schema.get("format", "int32"), _INT_RANGES["int32"])
        _expect(low <= value <= high, path, f"in {schema.get('format', 'int32')} range")
    elif kind == "number":
        _expect(isinstance(value, int | float) and not isinstance(value, bool), path,
                f"a JSON number, not {value!r:.80}")
    elif kind == "boolean":
        _expect(isinstance(value, bool), path, f"a JSON boolean, not {value!r:.80}")
    else:
        raise SchemaMismatch(f"{path}: the schema has an unknown type {kind!r}")


def _check_object(document: dict, schema: dict, value: Any, path: str) -> None:
    _expect(isinstance(value, dict), path, f"a JSON object, not {value!r:.80}")
    properties = schema.get("properties")
    extra = schema.get("additionalProperties")
    for name, item in value.items():
        if properties is not None and name in properties:
            _check(document, properties[name], item, f"{path}.{name}")
        elif extra is not None:
            if extra.get("type") == "any" and name == "@type":
                continue
            _check(document, extra, item, f"{path}[{name!r}]")
        else:
            known = ", ".join(sorted(properties or {})) or "none"
            raise SchemaMismatch(f"{path}: unknown field {name!r} (known: {known})")
    if extra is not None and extra.get("type") == "any" and "@type" in value:
        _check_any(document, value, path)


def _check_any(document: dict, value: dict, path: str) -> None:
    """A google.protobuf.Any in JSON: its @type names the schema of the other fields."""
    type_url = value["@type"]
    _expect(isinstance(type_url, str) and type_url.startswith(_TYPE_URL), path,
            f"an @type like {_TYPE_URL}<message>, not {type_url!r}")
    name = schema_of_type(document, type_url[len(_TYPE_URL):])
    if name is None:
        raise SchemaMismatch(f"{path}: @type {type_url} names no schema of the document")
    _check(document, {"$ref": name},
           {key: item for key, item in value.items() if key != "@type"}, f"{path}<{name}>")


def schema_of_type(document: dict, message: str) -> str | None:
    """The schema name of a protobuf message (`google.cloud.aiplatform.v1.Endpoint` ->
    GoogleCloudAiplatformV1Endpoint; ml v1 spells it GoogleCloudMlV1__Version)."""
    *package, short = message.split(".")
    prefix = "".join(part[:1].upper() + part[1:] for part in package)
    for candidate in (prefix + short, f"{prefix}__{short}"):
        if candidate in document["schemas"]:
            return candidate
    return None


def _check_string(schema: dict, value: Any, path: str) -> None:
    _expect(isinstance(value, str), path, f"a JSON string, not {value!r:.80}")
    fmt = schema.get("format")
    if fmt == "int64":
        _expect(bool(_INT64.fullmatch(value)) and -(2**63) <= int(value) < 2**63, path,
                f"an int64 as a decimal string, not {value!r}")
    elif fmt == "uint64":
        _expect(bool(_UINT64.fullmatch(value)) and int(value) < 2**64, path,
                f"a uint64 as a decimal string, not {value!r}")
    elif fmt in ("google-datetime", "date-time"):
        _expect(bool(_RFC3339.fullmatch(value)) and _parses(value), path,
                f"an RFC 3339 timestamp, not {value!r}")
    elif fmt == "google-duration":
        _expect(bool(_DURATION.fullmatch(value)), path, f"a duration like '3.5s', not {value!r}")
    if "enum" in schema:
        _expect(value in schema["enum"], path,
                f"one of {', '.join(schema['enum'])}, not {value!r}")


def _parses(text: str) -> bool:
    seconds = re.sub(r"(\.\d{1,6})\d*", r"\1", text)  # Python parses at most microseconds
    try:
        datetime.fromisoformat(seconds.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _expect(condition: bool, path: str, expected: str) -> None:
    if not condition:
        raise SchemaMismatch(f"{path}: expected {expected}")

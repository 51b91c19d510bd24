"""What every local aiplatform v1 (Vertex AI) resource shares: names, ids, labels, list filters.

Resource names are `projects/{project}/locations/{location}/{collection}/{id}`; ids are
numeric strings the service assigns, as Vertex AI does. `list` takes the documented filter
subset that the pipeline's components need to find their own earlier job (retry safety):
`labels.KEY="VALUE"`, `display_name="NAME"` and (jobs) `state="JOB_STATE_..."` terms joined
by AND. Anything else is refused, never half-applied.
"""
from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterable
from typing import Any

from pipeline import discovery
from pipeline.local.api_schema import parse_request
from pipeline.local.errors import InvalidArgument, NotFound

API = "aiplatform.v1"
PREFIX = "GoogleCloudAiplatformV1"
PROJECT = re.compile(r"[a-z][a-z0-9-]{0,62}|[0-9]{1,20}")
LOCATION = re.compile(r"[a-z][a-z0-9-]{0,62}")
NUMERIC_ID = re.compile(r"[1-9][0-9]{0,18}")
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
MAX_LABELS = 64
_TERM = re.compile(r'\s*(?P<field>labels\.[a-z][a-z0-9_-]*|display_name|displayName|state)'
                   r'\s*=\s*(?P<value>"(?:[^"\\]|\\.)*"|[^\s"()]+)\s*')
_AND = re.compile(r"AND\b")


def document() -> dict:
    """The aiplatform v1 discovery document."""
    return discovery.document("aiplatform", "v1")


def parse(schema: str, body: Any, where: str) -> dict:
    """A request body of schema `GoogleCloudAiplatformV1<schema>`, normalised (api_schema)."""
    return parse_request(document(), PREFIX + schema, body, where)


def check_parent(project: str, location: str) -> str:
    """`projects/{project}/locations/{location}`, or InvalidArgument."""
    if not PROJECT.fullmatch(project):
        raise InvalidArgument(f"project {project!r} is invalid; use a project id such as "
                              "my-project (or local)")
    if not LOCATION.fullmatch(location):
        raise InvalidArgument(f"location {location!r} is invalid; use a region such as "
                              "us-central1")
    return f"projects/{project}/locations/{location}"


def new_id() -> str:
    """A fresh resource id: a numeric string, as Vertex AI assigns them."""
    return str(10**17 + secrets.randbelow(9 * 10**17))


def check_id(resource_id: str, name: str) -> str:
    """A numeric resource id from a path; NotFound otherwise (no resource can have it)."""
    if not NUMERIC_ID.fullmatch(resource_id):
        raise NotFound(f"{name} not found; ids are numbers assigned by the service")
    return resource_id


def check_display_name(value: Any, where: str) -> str:
    """A required displayName: 1 to 128 characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > 128:
        raise InvalidArgument(f"{where} is required: 1 to 128 characters naming the resource")
    return value


def check_labels(labels: dict[str, str], where: str) -> dict[str, str]:
    """Labels as Vertex AI accepts them: lowercase keys and values, at most 64 of them."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"{where} has {len(labels)} labels; at most {MAX_LABELS} allowed")
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key):
            raise InvalidArgument(f"{where} key {key!r} is invalid; start with a lowercase "
                                  "letter, then up to 62 lowercase letters, digits, _ or -")
        if not LABEL_VALUE.fullmatch(value):
            raise InvalidArgument(f"{where}[{key!r}] value {value!r} is invalid; use up to 63 "
                                  "lowercase letters, digits, _ or -")
    return labels


def refuse_fields(body: dict, fields: Iterable[str], where: str, reason: str) -> None:
    """InvalidArgument naming the first of `fields` present in `body` and why it is refused."""
    for name in fields:
        if body.get(name) not in (None, "", [], {}, False):
            raise InvalidArgument(f"{where}.{name} is not supported locally ({reason}); "
                                  "remove it")


def parse_filter(text: str, fields: tuple[str, ...]) -> list[tuple[str, str]]:
    """The (field, value) terms of a list filter; `fields` names what else than labels.KEY
    may be compared. `displayName` is read as display_name."""
    supported = " ".join([*(f'{name}="..."' for name in fields), 'labels.KEY="VALUE"'])
    refusal = InvalidArgument(f"filter {text!r} is not supported locally; use {supported} "
                              "terms joined by AND")
    terms, position = [], 0
    while True:
        match = _TERM.match(text, position)
        if match is None:
            raise refusal
        field = "display_name" if match["field"] == "displayName" else match["field"]
        if not field.startswith("labels.") and field not in fields:
            raise refusal
        value = match["value"]
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        terms.append((field, value))
        position = match.end()
        if position == len(text):
            return terms
        joiner = _AND.match(text, position)
        if joiner is None:
            raise refusal
        position = joiner.end()


def matches(resource: dict, terms: list[tuple[str, str]]) -> bool:
    """Whether a rendered resource meets every filter term."""
    for field, value in terms:
        if field.startswith("labels."):
            actual = resource.get("labels", {}).get(field.removeprefix("labels."))
        else:
            actual = resource.get("displayName" if field == "display_name" else field)
        if actual != value:
            return False
    return True


def page(items: list[dict], field: str, page_size: str, page_token: str) -> dict:
    """One page of a list response (proto3 JSON: an empty list is left out)."""
    try:
        size = int(page_size or 0)
        start = int(base64.urlsafe_b64decode(page_token.encode()).decode() or 0)
    except ValueError:
        raise InvalidArgument("pageSize must be an integer and pageToken one returned by a "
                              "previous list call") from None
    if size < 0 or start < 0:
        raise InvalidArgument("pageSize and pageToken must not be negative")
    end = start + size if size else len(items)
    response: dict[str, Any] = {field: items[start:end]} if items[start:end] else {}
    if end < len(items):
        response["nextPageToken"] = base64.urlsafe_b64encode(str(end).encode()).decode()
    return response


def list_query(query: Any, fields: tuple[str, ...]) -> tuple[list[tuple[str, str]], str, str]:
    """(filter terms, pageSize, pageToken) of a list request's query; readMask is refused."""
    unknown = sorted(set(query) - {"filter", "pageSize", "pageToken", "alt", "$.xgafv"})
    if unknown:
        raise InvalidArgument(f"query parameter {unknown[0]!r} is not supported locally; "
                              "use filter, pageSize and pageToken")
    text = query.get("filter", "")
    terms = parse_filter(text, fields) if text.strip() else []
    return terms, query.get("pageSize", ""), query.get("pageToken", "")

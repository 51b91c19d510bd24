"""List requests of the KFP v1beta1 API: `filter` (filter.proto as JSON), `sort_by`, paging.

Filters on `name` with EQUALS, NOT_EQUALS and IS_SUBSTRING (what kfp's Client and the KFP
UI send) are applied; any other key or operation is refused rather than ignored.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pipeline.errors import one_line
from pipeline.local.errors import InvalidArgument

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 20, 200  # the KFP API server's
SORT_FIELDS = ("name", "created_at", "id")
# filter.proto Predicate.Op, by number and by name.
OPS = {0: "UNKNOWN", 1: "EQUALS", 2: "NOT_EQUALS", 3: "GREATER_THAN", 5: "GREATER_THAN_EQUALS",
       6: "LESS_THAN", 7: "LESS_THAN_EQUALS", 8: "IN", 9: "IS_SUBSTRING"}
_MATCH = {"EQUALS": lambda value, wanted: value == wanted,
          "NOT_EQUALS": lambda value, wanted: value != wanted,
          "IS_SUBSTRING": lambda value, wanted: wanted in value}

Item = TypeVar("Item")


def page(items: Sequence[Item], query: Mapping[str, str]) -> tuple[list[Item], int, str]:
    """(this page's items, how many match, the next page's token or "")."""
    predicates = _predicates(query.get("filter", ""))
    matching = [item for item in items if _matches(item, predicates)]
    ordered = _sorted(matching, query.get("sort_by", ""))
    size = _page_size(query.get("page_size", ""))
    start = _offset(query.get("page_token", ""))
    chunk = ordered[start:start + size]
    more = start + size < len(ordered)
    token = base64.urlsafe_b64encode(json.dumps({"offset": start + size}).encode()).decode()
    return chunk, len(matching), token if more else ""


def listing(key: str, items: list[dict], total: int, token: str) -> dict[str, Any]:
    """A list response: `key` (the items), `total_size`, `next_page_token`; empty ones are
    left out, as proto3 JSON leaves them."""
    return {name: value for name, value in ((key, items), ("total_size", total),
                                            ("next_page_token", token)) if value}


def _predicates(text: str) -> list[tuple[str, str]]:
    """(op name, wanted name) of each predicate; anything but a name filter is refused."""
    if not text:
        return []
    try:
        document = json.loads(text)
    except ValueError as error:
        raise InvalidArgument(f"filter is not a JSON Filter ({one_line(error)})") from None
    predicates = document.get("predicates", []) if isinstance(document, dict) else None
    if not isinstance(predicates, list):
        raise InvalidArgument("filter is not a JSON Filter with a predicates list")
    found = []
    for predicate in predicates:
        if not isinstance(predicate, dict):
            raise InvalidArgument(f"filter predicate {predicate!r} is not an object")
        op = predicate.get("op", 0)
        op = OPS.get(op, str(op)) if isinstance(op, int) else str(op)
        wanted = predicate.get("string_value", predicate.get("stringValue"))
        if predicate.get("key") != "name" or op not in _MATCH or not isinstance(wanted, str):
            raise InvalidArgument(f"Invalid filter: the local KFP API filters on name with "
                                  f"EQUALS, NOT_EQUALS or IS_SUBSTRING and a string_value; "
                                  f"got {json.dumps(predicate)}")
        found.append((op, wanted))
    return found


def _matches(item: Any, predicates: list[tuple[str, str]]) -> bool:
    return all(_MATCH[op](item.name, wanted) for op, wanted in predicates)


def _sorted(items: list[Item], sort_by: str) -> list[Item]:
    words = sort_by.split()
    if not words:
        return list(items)  # the store's order: created_at, oldest first
    field, direction = words[0], (words[1] if len(words) > 1 else "asc")
    if field not in SORT_FIELDS or direction not in ("asc", "desc") or len(words) > 2:
        raise InvalidArgument(f"Invalid sorting field: {sort_by!r}; use one of "
                              f"{', '.join(SORT_FIELDS)}, optionally followed by asc or desc")
    return sorted(items, key=lambda item: (getattr(item, field), item.created_at, item.id),
                  reverse=direction == "desc")


def _page_size(text: str) -> int:
    if not text:
        return DEFAULT_PAGE_SIZE
    if not text.lstrip("-").isdigit() or int(text) < 0:
        raise InvalidArgument(f"page_size {text!r} is not a whole number >= 0")
    return min(int(text), MAX_PAGE_SIZE) or DEFAULT_PAGE_SIZE


def _offset(token: str) -> int:
    if not token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token.encode()))["offset"]
    except (ValueError, KeyError, TypeError):
        offset = None
    if not isinstance(offset, int) or offset < 0:
        raise InvalidArgument(f"Invalid page token {token!r}; pass the next_page_token of the "
                              "previous page")
    return offset

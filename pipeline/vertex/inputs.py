"""Component inputs as KFP passes them (text), checked and typed before any Vertex AI call.

KFP v1 hands every input to the container as a string: Lists and Dicts as JSON, Bools as
'True'/'False', Integers as digits. Each parser raises ValueError with one line naming the
input and the fix, so a step with a bad input changes nothing.
"""
from __future__ import annotations

import json
import re
from typing import Any

_ID = re.compile(r"[^/\s]+")
_MACHINE_TYPE = re.compile(r"[a-z][a-z0-9-]{0,62}")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def required(name: str, value: Any, example: str) -> str:
    """A non-empty single-line text input."""
    text = str(value).strip()
    if not text or "\n" in text:
        raise ValueError(f"{name} is empty or not one line; pass e.g. {example}")
    return text


def resource_id(name: str, value: Any, example: str) -> str:
    """A project id or similar path segment: non-empty, no '/' or whitespace."""
    text = str(value).strip()
    if not _ID.fullmatch(text):
        raise ValueError(f"{name}={text!r} is not an id; pass e.g. {example}")
    return text


def folder_uri(name: str, value: Any) -> str:
    """A gs:// folder (or an absolute local path, for the local stand-in), no trailing slash."""
    text = str(value).strip().rstrip("/")
    if not text.startswith(("gs://", "/")) or any(char.isspace() for char in text) or (
            ".." in text.split("/")):
        raise ValueError(f"{name}={value!r} is not a folder URI; pass gs://bucket/folder")
    return text


def machine_type(name: str, value: Any) -> str:
    text = str(value).strip()
    if not _MACHINE_TYPE.fullmatch(text):
        raise ValueError(f"{name}={value!r} is not a Compute Engine machine type; pass e.g. "
                         "n1-standard-4")
    return text


def json_list_of_strings(name: str, value: Any) -> list[str]:
    """A JSON list of strings ('' is an empty list), e.g. the trainer's args."""
    text = str(value).strip()
    if not text:
        return []
    try:
        parsed = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{name} is not JSON ({error.msg} at char {error.pos}); pass a JSON "
                         'list like ["--alpha", "0.001"]') from None
    if not isinstance(parsed, list):
        raise ValueError(f'{name} is not a JSON list; pass a list like ["--alpha", "0.001"]')
    for index, item in enumerate(parsed):
        if not isinstance(item, str):
            raise ValueError(f"{name}[{index}] is {item!r}, not a string; quote every argument")
    return parsed


def boolean(name: str, value: Any) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name}={value!r} is not a boolean; pass True or False")


def integer(name: str, value: Any, minimum: int, maximum: int) -> int:
    text = str(value).strip()
    if not re.fullmatch(r"-?\d+", text) or not minimum <= int(text) <= maximum:
        raise ValueError(f"{name}={value!r} is not a whole number in {minimum}..{maximum}")
    return int(text)

"""The 0.2.5 component inputs as the launcher hands them to an action, checked and typed.

`pipeline.local.launcher` parses every flag value as the real launcher's fire does
(pipeline.launcher_values), so an action gets `True`, `None`, numbers, dicts and lists where
fire makes them, and text otherwise. Each function accepts what the 0.2.5 action could use and
refuses the rest with one line naming the input and the fix, before anything is sent.
"""
from __future__ import annotations

import json
from typing import Any

from pipeline.launcher_values import launcher_dict

_FIRE = "once the launcher has parsed it (fire reads flags as Python literals)"


def text(name: str, value: Any, example: str, number_ok: bool = False) -> str:
    """A String input; None (fire's `None`) is no value, as upstream's `if value:` reads it.

    Args:
        number_ok: the input only goes into an API request, where Google reads a number for a
            string field as its text (`runtime_version 2.11`), so a number is accepted as that.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if number_ok and isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(value)
    kind = "a number" if isinstance(value, int | float) and not isinstance(value, bool) else (
        f"the boolean {value}" if isinstance(value, bool) else f"a {type(value).__name__}")
    raise ValueError(f"{name} is {kind} {_FIRE}, not text; pass text such as {example}")


def mapping(name: str, value: Any, example: str) -> dict:
    """A Dict input; '' and None are none given."""
    if value is None or value == "":
        return {}
    return launcher_dict(value, name, example)


def sequence(name: str, value: Any, example: str) -> list | None:
    """A List input of strings; '' and None are none given."""
    if value is None or value == "":
        return None
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name} is not a list {_FIRE}; pass a list such as {example}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"{name}[{index}] is {item!r}, not a string; quote every item, "
                             f"e.g. {example}")
    return list(value)


def flag(name: str, value: Any) -> bool:
    """A Bool input. The 0.2.5 actions test it for truth, so any text would be true: the text
    'true' is accepted as true, '' and upstream's misspelt default 'Fasle' as false, and other
    text (such as 'false', which the real launcher would take for true) is refused."""
    if isinstance(value, bool):
        return value
    if value in ("", None, "Fasle"):
        return False
    if value == "true":
        return True
    raise ValueError(f"{name}={value!r} is not a boolean {_FIRE}; pass True or False")


def whole_number(name: str, value: Any, minimum: int, example: str) -> int:
    """An Integer input of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not a whole number >= {minimum}; pass e.g. "
                         f"{example}")
    return value

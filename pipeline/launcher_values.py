"""Component inputs as the 0.2.5 GCP launcher (`kfp_component.launcher`) reads them.

The launcher hands each `--flag value` of a component to its action with fire, which parses
the value as a Python literal where it can (`True`, `None`, numbers, dicts, lists; a bare word
inside one becomes text, so JSON's `true` arrives as 'true') and keeps it as text otherwise.
Everything that reads a value meant for those components (the local launcher, the run
parameter checks of `make run` and local runs, the Vertex AI tuning step, which takes the same
`hypertune_settings`) parses it here, with fire's own parser, so a value passes exactly when
the launcher would hand it over.
"""
from __future__ import annotations

import json
from typing import Any

# Google's JSON parser reads these texts in a boolean field as the booleans (what fire makes of
# JSON's true and false inside a dict).
_BOOLEAN_TEXTS = {"true": True, "false": False}


def launcher_value(text: str) -> Any:
    """One flag value as the launcher's fire hands it to the action."""
    from fire.parser import DefaultParseValue  # here: the rest of this module is stdlib only

    return DefaultParseValue(text)


def launcher_dict(value: Any, name: str, example: str) -> dict:
    """A Dict input (e.g. `training_input`, `hypertune_settings`): text the launcher parses
    into a dict, or a dict it parsed already; returned in its JSON form (tuples as lists).

    Raises:
        ValueError: one line naming the input, when the launcher would not get a JSON-able dict.
    """
    parsed = launcher_value(value) if isinstance(value, str) else value
    if isinstance(parsed, str):
        raise ValueError(f"{name} is neither JSON nor a Python literal (the 0.2.5 launcher "
                         f"parses it with fire); pass an object such as {example}")
    if not isinstance(parsed, dict):
        raise ValueError(f"{name} is {type(parsed).__name__} {_short(parsed)}, not an object; "
                         f"pass an object such as {example}")
    return jsonable(parsed, name)


def jsonable(value: Any, name: str) -> Any:
    """`value` as the JSON a Google client sends (tuples become lists).

    Raises:
        ValueError: the value holds something JSON cannot (a set, bytes, a complex number).
    """
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} holds a value JSON cannot carry ({error}); use objects, "
                         "lists, text, numbers, True/False and None only") from None


def google_boolean(value: Any) -> bool | None:
    """A boolean field's value as Google's JSON parser reads it: true/false, or the text
    'true'/'false'; None for anything else."""
    if isinstance(value, bool):
        return value
    return _BOOLEAN_TEXTS.get(value) if isinstance(value, str) else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

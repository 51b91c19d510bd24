"""Argo's small languages, as the workflow controller evaluates them.

Placeholders (`{{inputs.parameters.x}}`, `{{item.a}}`), `when` expressions (govaluate: one
comparison of numbers or quoted strings, as KFP v1 writes them), loop items and their node
names, the aggregation of loop outputs into a JSON list, and retry strategies. The DAG engine
(`dag.py`) and the load-time check (`support.py`) share them.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class WorkflowError(ValueError):
    """The package is not a workflow this runner can execute faithfully."""


# Argo substitutes tags that start with these roots; any other `{{...}}` (e.g. in Python code)
# is left as is. `item` is substituted only in the fields of a looped task.
_PLACEHOLDER = re.compile(
    r"\{\{\s*((?:inputs|outputs|tasks|steps|workflow|pod|node|lastRetry)\.[^{}\s]+|retries)\s*\}\}")
_ITEM = re.compile(r"\{\{\s*(item(?:\.[^{}\s]+)?)\s*\}\}")


def placeholders(text: str) -> list[str]:
    """The Argo tags in `text` (without braces), loop items included."""
    return [match.group(1) for match in _PLACEHOLDER.finditer(text)] + [
        match.group(1) for match in _ITEM.finditer(text)]


def substitute(text: str, scope: Mapping[str, str]) -> str:
    """Replace Argo placeholders from `scope`; an unknown one is an error, as in Argo."""
    return _PLACEHOLDER.sub(lambda match: _lookup(match.group(1), scope), text)


def substitute_item(text: str, item_scope: Mapping[str, str]) -> str:
    """Replace `{{item}}` / `{{item.field}}` in a looped task's fields."""
    return _ITEM.sub(lambda match: _lookup(match.group(1), item_scope), text)


def _lookup(key: str, scope: Mapping[str, str]) -> str:
    if key not in scope:
        raise WorkflowError(f"cannot resolve {{{{{key}}}}}")
    return scope[key]


# when -------------------------------------------------------------------------------------
_OPERATORS = ("==", "!=", ">=", "<=", ">", "<")
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")
_OPERAND = r"(\"[^\"]*\"|'[^']*'|[^\s\"'=!<>]+)"
_COMPARISON = re.compile(rf"^\s*{_OPERAND}\s*(==|!=|>=|<=|>|<)\s*{_OPERAND}\s*$")


def is_comparison(expression: str) -> bool:
    """Whether a (possibly unresolved) `when` is the one comparison KFP v1 writes."""
    masked = re.sub(r"\{\{[^{}]*\}\}", "x", expression)
    return bool(_COMPARISON.match(masked))


def evaluate_condition(expression: str) -> bool:
    """Evaluate a resolved `when` as govaluate does: `"heads" == "heads"`, `0.71 > 0.69`.

    Quoted operands are strings, bare ones must be numbers or true/false; strings compare
    lexically, numbers numerically, and `==` between a string and a number is false.
    """
    match = _COMPARISON.match(expression)
    if not match:
        raise WorkflowError(f"unsupported when expression {expression!r}; the local runner "
                            "evaluates one comparison such as \"a\" == \"b\" or 1 > 0.5")
    left, operator, right = (_operand(match.group(1), expression), match.group(2),
                             _operand(match.group(3), expression))
    if operator == "==":
        return type(left) is type(right) and left == right
    if operator == "!=":
        return not (type(left) is type(right) and left == right)
    if type(left) is not type(right) or isinstance(left, bool):
        raise WorkflowError(f"when {expression!r}: {operator} compares two numbers or two "
                            "strings")
    return {">": left > right, "<": left < right,
            ">=": left >= right, "<=": left <= right}[operator]


def _operand(token: str, expression: str) -> str | float | bool:
    if token[0] in "\"'":
        return token[1:-1]
    if token in ("true", "false"):
        return token == "true"
    if _NUMBER.fullmatch(token):
        return float(token)
    raise WorkflowError(f"when {expression!r}: {token!r} is neither a number nor a quoted "
                        "string")


# Loop items -------------------------------------------------------------------------------
def go_json(value: Any) -> str:
    """JSON as Go's encoding/json writes it: compact, sorted keys, <, > and & escaped."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return json.dumps(value)
    return go_json(value)


def item_scope(item: Any) -> dict[str, str]:
    """`{{item}}` and, for an object, `{{item.<key>}}` of one loop item."""
    if isinstance(item, dict):
        scope = {f"item.{key}": _text(value) for key, value in item.items()}
        scope["item"] = go_json(item)
        return scope
    return {"item": _text(item)}


def item_label(index: int, item: Any) -> str:
    """Argo's node-name suffix of a loop iteration: `(0:1)`, `(1:a:1,b:x)`."""
    if isinstance(item, dict):
        text = ",".join(sorted(f"{key}:{_text(value)}" for key, value in item.items()))
    else:
        text = _text(item)
    return f"({index}:{text})"


def aggregate(values: list[str]) -> str:
    """A loop's output as Argo hands it on: a JSON list of the iterations' values.

    Values that all parse as JSON objects or lists are embedded as JSON; otherwise the list
    holds the values as strings (`["1","4","9"]`).
    """
    parsed = []
    for value in values:
        try:
            loaded = json.loads(value)
        except ValueError:
            loaded = None
        if not isinstance(loaded, dict | list):
            return go_json(values)
        parsed.append(loaded)
    return go_json(parsed)


# retryStrategy ----------------------------------------------------------------------------
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
RETRY_POLICIES = ("Always", "OnFailure", "OnError", "OnTransientError")
# Pod fields a container's env may read (`valueFrom.fieldRef`), besides any
# `metadata.labels['...']`: what KFP's `add-pod-env` and the Vertex AI components use.
POD_FIELDS = ("metadata.name", "metadata.uid", "metadata.namespace",
              "metadata.annotations['workflows.argoproj.io/node-name']")


def parse_duration(text: Any) -> float:
    """Seconds of an Argo duration: an integer (seconds) or Go's `1m30s` form."""
    value = str(text).strip()
    if value.isdigit():
        return float(value)
    parts = _DURATION.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise WorkflowError(f"{text!r} is not a duration such as 30, 10s or 2m")
    return sum(float(number) * _UNIT[unit] for number, unit in parts)


@dataclass(frozen=True)
class RetryStrategy:
    """A container template's retryStrategy: how many retries, on what, after what pause."""

    limit: int = 0
    policy: str = "OnFailure"
    backoff_s: float | None = None
    factor: float = 1
    cap_s: float | None = None
    max_duration_s: float | None = None

    @classmethod
    def of(cls, template: Mapping[str, Any]) -> RetryStrategy:
        spec = template.get("retryStrategy") or {}
        backoff = spec.get("backoff") or {}
        return cls(
            limit=int(spec.get("limit") or 0),
            policy=spec.get("retryPolicy") or "OnFailure",
            backoff_s=parse_duration(backoff["duration"]) if "duration" in backoff else None,
            factor=float(backoff.get("factor") or 1),
            cap_s=parse_duration(backoff["cap"]) if "cap" in backoff else None,
            max_duration_s=(parse_duration(backoff["maxDuration"])
                            if "maxDuration" in backoff else None))

    def pause(self, failures: int, error: bool, elapsed_s: float) -> float | None:
        """Seconds to wait before the next attempt, or None when the step has failed for good.

        Args:
            failures: attempts that failed so far (1 after the first failure).
            error: the last attempt could not run at all (Argo's Error phase), rather than
                exiting non-zero or exceeding its deadline (Failed).
            elapsed_s: seconds since the first attempt started.
        """
        retried = {"Always": True, "OnFailure": not error, "OnError": error,
                   "OnTransientError": False}[self.policy]
        if not retried or failures > self.limit:
            return None
        wait = 0.0
        if self.backoff_s is not None:
            wait = self.backoff_s * self.factor ** (failures - 1)
            if self.cap_s is not None:
                wait = min(wait, self.cap_s)
        if self.max_duration_s is not None and elapsed_s + wait > self.max_duration_s:
            return None
        return wait

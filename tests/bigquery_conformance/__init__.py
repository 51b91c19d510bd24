"""BigQuery's documented examples as data, and how a local result is held against them.

Each `<family>.yaml` holds cases transcribed from one page of the GoogleSQL for BigQuery
function reference (`page` + `#anchor` is the source): the query, the result's columns as
`name TYPE`, and the rows as the page shows them. Values are compared by type: FLOAT64 to the
digits the page prints, BYTES as base64 (or `{escaped: ...}` where the page prints escapes),
DATE/DATETIME/TIME/TIMESTAMP parsed, JSON as parsed JSON; rows in any order unless the case
says `ordered: true`.

The pages were read from stored copies of docs.cloud.google.com (the apstndb/bigquery-docs-
mirror repository holds them as markdown). Examples whose shown result contradicts the page's
own query (a typo in a value, a column the query does not select) were left out; a case whose
page shows its text normalized says so in `normalize` and `note`.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from pipeline.local.bigquery.types import column_types, struct_fields

FOLDER = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    """One documented example."""

    family: str
    function: str
    source: str
    query: str
    columns: list[tuple[str, str]]
    rows: list[list[Any]]
    ordered: bool = False
    normalize: str = ""
    note: str = ""
    index: int = field(default=0, compare=False)

    @property
    def id(self) -> str:
        return f"{self.family}-{self.index:03d}-{re.sub(r'[^A-Za-z0-9]+', '_', self.function)}"


def load_cases() -> list[Case]:
    """Every case of every family file, in file order."""
    cases = []
    for path in sorted(FOLDER.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        for index, raw in enumerate(data["cases"]):
            columns = [tuple(column.split(" ", 1)) for column in raw["columns"]]
            cases.append(Case(
                family=path.stem, function=raw["function"],
                source=f"{data['page']}#{raw['anchor']}", query=raw["query"],
                columns=[(name, kind.strip()) for name, kind in columns],
                rows=raw["rows"], ordered=raw.get("ordered", False), note=raw.get("note", ""),
                normalize=raw.get("normalize", ""),
                index=index,
            ))
    return cases


def differences(case: Case, table: Any) -> list[str]:
    """How a local result (an Arrow table from Warehouse.query) differs from the case."""
    problems = []
    names = list(table.column_names)
    kinds = [_normal(kind) for kind in column_types(table)]
    expected_names = [name for name, _ in case.columns]
    expected_kinds = [_normal(kind) for _, kind in case.columns]
    if names != expected_names:
        problems.append(f"columns {names} != {expected_names}")
    if kinds != expected_kinds:
        problems.append(f"types {kinds} != {expected_kinds}")
    if problems:
        return problems
    actual = [list(row.values()) for row in table.to_pylist()]
    if case.normalize:
        actual = [[_normalized(v, case.normalize) for v in row] for row in actual]
        expected_rows = [[_normalized(v, case.normalize) for v in row] for row in case.rows]
    else:
        expected_rows = case.rows
    if len(actual) != len(expected_rows):
        return [f"{len(actual)} rows != {len(expected_rows)}: {actual}"]
    unmatched = list(actual)
    for position, expected in enumerate(expected_rows):
        candidates = [unmatched[0]] if case.ordered else unmatched
        match = next((row for row in candidates
                      if all(_equal(value, want, kind)
                             for value, want, kind in zip(row, expected, expected_kinds,
                                                          strict=True))), None)
        if match is None:
            return [f"row {position} {expected} not in {candidates}"]
        unmatched.remove(match)
    return []


def _normalized(value: Any, form: str) -> Any:
    """A STRING as a page that normalizes its text shows it."""
    return unicodedata.normalize(form, value) if isinstance(value, str) else value


def _normal(kind: str) -> str:
    """A type's spelling without optional spaces: `STRUCT<a INT64,b STRING>`."""
    return re.sub(r"\s*,\s*", ",", re.sub(r"\s+", " ", kind.strip()))


def _equal(value: Any, expected: Any, kind: str) -> bool:
    """Whether a local value equals the page's value of BigQuery type `kind`."""
    if expected is None or value is None:
        return expected is None and value is None
    if kind.startswith("ARRAY<"):
        return (isinstance(value, list) and len(value) == len(expected)
                and all(_equal(v, e, kind[6:-1]) for v, e in zip(value, expected, strict=True)))
    if kind.startswith("STRUCT<"):
        fields = struct_fields(kind.replace(",", ", "))
        return all(_equal(value.get(name), expected.get(name), sub) for name, sub in fields)
    return _equal_scalar(value, expected, kind)


def _equal_scalar(value: Any, expected: Any, kind: str) -> bool:
    if kind == "FLOAT64":
        return _close(value, str(expected))
    if kind in ("NUMERIC", "BIGNUMERIC"):
        return Decimal(str(value)) == Decimal(str(expected))
    if kind == "BYTES":
        if isinstance(expected, dict):
            text = expected["escaped"]
            return value == text.encode("latin-1").decode("unicode_escape").encode("latin-1")
        return base64.b64encode(value).decode() == expected
    if kind == "DATE":
        return value == dt.date.fromisoformat(expected)
    if kind == "DATETIME":
        return value == dt.datetime.fromisoformat(expected.replace(" ", "T"))
    if kind == "TIME":
        return value == dt.time.fromisoformat(expected)
    if kind == "TIMESTAMP":
        return value == _timestamp(expected)
    if kind == "JSON":
        return json.loads(value) == json.loads(expected)
    return type(value) is type(expected) and value == expected


def _close(value: float, text: str) -> bool:
    """FLOAT64 equal to the digits the page prints (it rounds long fractions)."""
    word = text.strip().lower().lstrip("+")
    if word in ("nan", "-nan"):
        return math.isnan(value)
    if word in ("inf", "infinity", "-inf", "-infinity"):
        return math.isinf(value) and (value < 0) == word.startswith("-")
    expected = float(text)
    mantissa, _, exponent = text.lower().partition("e")
    if "." not in mantissa and not exponent:
        return value == expected
    decimals = len(mantissa.partition(".")[2]) - int(exponent or 0)
    tolerance = max(0.5 * 10.0 ** -decimals, 4 * math.ulp(expected))
    return abs(value - expected) <= tolerance


def _timestamp(text: str) -> dt.datetime:
    """A TIMESTAMP as the page prints it: `... UTC`, `...+00` or `...+00:00`."""
    text = text.strip().replace(" UTC", "+00:00")
    text = re.sub(r"([+-]\d{2})$", r"\1:00", text)
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


@dataclass(frozen=True)
class Outcome:
    """What the local BigQuery did with a case: `pass`, `refused`, `wrong` or `error`."""

    status: str
    detail: str = ""


def outcome(warehouse: Any, case: Case) -> Outcome:
    """Run a case on an open Warehouse and judge the result against the page."""
    from pipeline.local.bigquery import NotSupportedError, WarehouseError

    try:
        table = warehouse.query(case.query)
    except NotSupportedError as refusal:
        return Outcome("refused", refusal.what)
    except WarehouseError as error:
        return Outcome("error", str(error))
    problems = differences(case, table)
    return Outcome("wrong", "; ".join(problems)) if problems else Outcome("pass")

"""A warehouse result printed as the bq CLI prints query results (--format=...).

bq takes the REST API's values (types.api_value), shows a TIMESTAMP as `YYYY-MM-DD HH:MM:SS`
(UTC, seconds), and then: `json` and `prettyjson` print a JSON array of row objects with
sorted keys; `csv` prints a header and minimally quoted rows, NULL as empty; `pretty` prints
a bordered table, NULL as `NULL`, STRING columns left-aligned and the others right-aligned.
Nested values are compact JSON text in `csv` and `pretty`. An empty result prints nothing,
except `[]` in the JSON formats.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import pyarrow as pa
from rich.cells import cell_len

from pipeline.local.bigquery.types import api_value, column_types, struct_fields

FORMATS = ("csv", "json", "prettyjson", "pretty")


def render(table: pa.Table, output_format: str) -> str:
    """The text bq prints for this result, newline-terminated (or "" for no output)."""
    names = list(table.column_names)
    kinds = column_types(table)
    rows = [[_displayed(value, kind) for value, kind in zip(row.values(), kinds, strict=True)]
            for row in table.to_pylist()]
    if output_format in ("json", "prettyjson"):
        objects = [dict(zip(names, row, strict=True)) for row in rows]
        if output_format == "json":
            return json.dumps(objects, separators=(",", ":"), sort_keys=True,
                              ensure_ascii=False) + "\n"
        return json.dumps(objects, separators=(", ", ": "), sort_keys=True, indent=2,
                          ensure_ascii=False) + "\n"
    if not rows:
        return ""
    if output_format == "csv":
        return _csv(names, rows)
    if output_format == "pretty":
        return _pretty(names, kinds, rows)
    raise ValueError(f"unknown format {output_format!r}; use one of {', '.join(FORMATS)}")


def _displayed(value: Any, kind: str) -> Any:
    """bq's normalization of an API value: TIMESTAMP to seconds, STRUCT to an object."""
    if value is None:
        return None
    if kind.startswith("ARRAY<"):
        return [_displayed(item, kind[6:-1]) for item in value]
    if kind.startswith("STRUCT<"):
        return {name: _displayed(value.get(name), field) for name, field in struct_fields(kind)}
    if kind == "TIMESTAMP":
        seconds = value.astimezone(dt.UTC).replace(tzinfo=None, microsecond=0)
        return seconds.isoformat(" ")
    return api_value(value, kind)


def _flat(value: Any, null: str) -> str:
    if value is None:
        return null
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


def _csv(names: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    for row in rows:
        writer.writerow([_flat(value, "") for value in row])
    return ("\n".join([",".join(names), buffer.getvalue()]).rstrip()) + "\n"


def _pretty(names: list[str], kinds: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(_flat(value, "NULL")).split("\n") for value in row] for row in rows]
    widths = [max([cell_len(name)] + [cell_len(line) for row in cells for line in row[i]])
              for i, name in enumerate(names)]
    aligns = ["l" if kind == "STRING" else "r" for kind in kinds]
    rule = "+" + "+".join("-" * (width + 2) for width in widths) + "+"
    header = [_center(name, width) for name, width in zip(names, widths, strict=True)]
    lines = [rule, _line(header), rule]
    for row in cells:
        for index in range(max(len(cell) for cell in row)):
            parts = []
            for cell, width, align in zip(row, widths, aligns, strict=True):
                text = cell[index] if index < len(cell) else ""
                padding = " " * (width - cell_len(text))
                parts.append(text + padding if align == "l" or not text else padding + text)
            lines.append(_line(parts))
    lines.append(rule)
    return "\n".join(lines) + "\n"


def _center(text: str, width: int) -> str:
    left = (width - cell_len(text)) // 2
    return " " * left + text + " " * (width - cell_len(text) - left)


def _line(parts: list[str]) -> str:
    return "|" + "|".join(f" {part} " for part in parts) + "|"

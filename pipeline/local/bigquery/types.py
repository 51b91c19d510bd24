"""BigQuery types of the local warehouse's results: the one mapping from DuckDB, and bq's text.

A result leaves the warehouse as an Arrow table whose fields carry their BigQuery type in the
field metadata (`bigquery_type`), with values already in BigQuery's domain (INT64 as int64,
TIMESTAMP in UTC, ...). The CLI and any REST surface read the type from there.
"""
from __future__ import annotations

import base64
import datetime as dt
import math
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.local.bigquery.names import NotSupportedError, WarehouseError, first_line

TYPE_KEY = b"bigquery_type"
_SCALARS = {
    "boolean": "BOOL",
    "tinyint": "INT64", "smallint": "INT64", "integer": "INT64", "bigint": "INT64",
    "hugeint": "INT64", "utinyint": "INT64", "usmallint": "INT64", "uinteger": "INT64",
    "ubigint": "INT64", "uhugeint": "INT64",
    "float": "FLOAT64", "double": "FLOAT64",
    "varchar": "STRING", "blob": "BYTES",
    "date": "DATE", "time": "TIME", "timestamp": "DATETIME",
    "timestamp with time zone": "TIMESTAMP",
    "null": "INT64",  # BigQuery types an untyped NULL as INT64
}
_ARROW = {
    "BOOL": pa.bool_(), "INT64": pa.int64(), "FLOAT64": pa.float64(), "STRING": pa.string(),
    "BYTES": pa.binary(), "DATE": pa.date32(), "TIME": pa.time64("us"),
    "DATETIME": pa.timestamp("us"), "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "JSON": pa.string(),
}


def bigquery_type(duckdb_type: duckdb.typing.DuckDBPyType) -> str:
    """BigQuery's name for a DuckDB result type, e.g. `ARRAY<STRUCT<a INT64, b STRING>>`.

    Raises:
        NotSupportedError: a type with no BigQuery counterpart the stand-in verified.
    """
    if str(duckdb_type) == "JSON":
        return "JSON"
    kind = duckdb_type.id
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind in ("list", "array"):
        return f"ARRAY<{bigquery_type(dict(duckdb_type.children)['child'])}>"
    if kind == "struct":
        fields = ", ".join(f"{name} {bigquery_type(child)}" for name, child in duckdb_type.children)
        return f"STRUCT<{fields}>"
    raise NotSupportedError(f"a result of DuckDB type {duckdb_type}")


def arrow_type(bigquery: str) -> pa.DataType:
    """The Arrow type holding values of a BigQuery type (as `bigquery_type` spells it)."""
    if bigquery.startswith("ARRAY<"):
        return pa.list_(arrow_type(bigquery[6:-1]))
    if bigquery.startswith("STRUCT<"):
        return pa.struct([pa.field(name, arrow_type(kind))
                          for name, kind in struct_fields(bigquery)])
    return _ARROW[bigquery]


def struct_fields(bigquery: str) -> list[tuple[str, str]]:
    """`STRUCT<a INT64, b ARRAY<STRING>>` -> [("a", "INT64"), ("b", "ARRAY<STRING>")]."""
    fields, depth, start, body = [], 0, 0, bigquery[7:-1]
    for index, char in enumerate(body + ","):
        depth += {"<": 1, ">": -1}.get(char, 0)
        if char == "," and depth == 0:
            name, _, kind = body[start:index].strip().partition(" ")
            fields.append((name, kind))
            start = index + 1
    return fields if body else []


def to_bigquery_table(relation: duckdb.DuckDBPyRelation, names: list[str]) -> pa.Table:
    """Fetch a DuckDB result as Arrow with BigQuery types (metadata) and values.

    Integers of any width become int64 (an overflowing HUGEINT sum is an error, as it is
    in BigQuery), an untyped NULL column becomes INT64.
    """
    kinds = [bigquery_type(kind) for kind in relation.types]
    table = relation.to_arrow_table()
    schema = pa.schema([
        pa.field(name, arrow_type(kind), metadata={TYPE_KEY: kind.encode()})
        for name, kind in zip(names, kinds, strict=True)
    ])
    try:  # cast only what differs: a split query's 170,000 rows are not copied
        columns = [column if column.type == field.type else column.cast(field.type)
                   for column, field in zip(table.columns, schema, strict=True)]
        result = pa.Table.from_arrays(columns, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise WarehouseError(f"query failed: {first_line(error)}") from None
    for name, column in zip(names, result.columns, strict=True):
        if _null_element(column.type, column):
            raise WarehouseError("Array cannot have a null element; error in writing field "
                                 f"{name}")
    return result


def _null_element(kind: pa.DataType, values: pa.ChunkedArray | pa.Array) -> bool:
    """Whether an array in these values holds a NULL (BigQuery refuses such results)."""
    if pa.types.is_list(kind):
        items = pc.list_flatten(values)
        return items.null_count > 0 or _null_element(kind.value_type, items)
    if pa.types.is_struct(kind):
        return any(_null_element(field.type, pc.struct_field(values, field.name))
                   for field in kind)
    return False


def column_types(table: pa.Table) -> list[str]:
    """The BigQuery type of each column of a warehouse result."""
    return [field.metadata[TYPE_KEY].decode() for field in table.schema]


def api_value(value: Any, kind: str) -> Any:
    """A value as BigQuery's REST API returns it in query results: each scalar a string
    (FLOAT64 in Java's notation, TIMESTAMP as epoch seconds, BYTES in base64), NULL as None,
    an ARRAY a list and a STRUCT a dict of such values."""
    if value is None:
        return None
    if kind.startswith("ARRAY<"):
        return [api_value(item, kind[6:-1]) for item in value]
    if kind.startswith("STRUCT<"):
        return {name: api_value(value.get(name), field) for name, field in struct_fields(kind)}
    if kind == "BOOL":
        return "true" if value else "false"
    if kind == "FLOAT64":
        return java_double(value)
    if kind == "BYTES":
        return base64.b64encode(value).decode()
    if kind == "TIMESTAMP":
        return java_double((value - _EPOCH).total_seconds())
    if kind in ("DATETIME", "TIME"):
        return value.isoformat()
    return str(value)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def java_double(value: float) -> str:
    """Java's Double.toString, the API's notation for floating point values: the shortest
    digits, plain between 10^-3 and 10^7 ("3.0"), else scientific ("1.0E20")."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1, value) < 0 else "0.0"
    digits, exponent = _shortest_digits(abs(value))
    sign = "-" if value < 0 else ""
    if 1e-3 <= abs(value) < 1e7:
        point = exponent + 1
        if point <= 0:
            return f"{sign}0.{'0' * -point}{digits}"
        whole, fraction = digits[:point].ljust(point, "0"), digits[point:] or "0"
        return f"{sign}{whole}.{fraction}"
    return f"{sign}{digits[0]}.{digits[1:] or '0'}E{exponent}"


def _shortest_digits(value: float) -> tuple[str, int]:
    """The shortest round-tripping decimal digits of a positive float (Python's repr) and
    the exponent of the first digit: 1234.5 -> ("12345", 3)."""
    _, digits, exponent = Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    return text, len(digits) + int(exponent) - 1

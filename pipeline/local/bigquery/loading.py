"""Loading CSV files into the warehouse: local or gs:// files, and the Covertype schema check."""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline import schema
from pipeline.local.bigquery.names import WarehouseError, first_line, literal, quote

CSV_OPTIONS = "header=true, delim=',', quote='\"', escape='\"'"
_DUCKDB_TYPES = {"INTEGER": "BIGINT", "STRING": "VARCHAR"}
Sql = Callable[..., list[tuple]]


def load(sql: Sql, exists: Callable[[str, str], bool], dataset: str, name: str, path: str,
         csv_path: str, replace: bool) -> int:
    """Create or append `dataset.name` from the CSV at local `path`; return rows loaded."""
    target = f"{quote(dataset)}.{quote(name)}"
    reader = f"read_csv({literal(path)}, {CSV_OPTIONS}, all_varchar=true)"
    header = [row[0] for row in sql(f"DESCRIBE SELECT * FROM {reader}")]
    if set(header) & set(schema.COLUMNS):
        source = _stage_covertype(sql, reader, header, csv_path)
    else:
        source = f"SELECT * FROM read_csv({literal(path)}, {CSV_OPTIONS})"
    sql(f"CREATE SCHEMA IF NOT EXISTS {quote(dataset)}")
    if replace or not exists(dataset, name):
        rows = sql(f"CREATE OR REPLACE TABLE {target} AS {source}")[0][0]
    else:
        rows = sql(f"INSERT INTO {target} BY NAME {source}")[0][0]
    sql("DROP TABLE IF EXISTS _covertype_load")
    return int(rows)


def _stage_covertype(sql: Sql, reader: str, header: list[str], csv_path: str) -> str:
    """Stage a Covertype CSV as text, check names and types; return the typed SELECT.

    A CSV with Covertype columns must have exactly schema.COLUMNS and their types; it is
    stored in schema order so TO_JSON_STRING (and so the splits) match the lab's table.
    """
    expected = ", ".join(schema.COLUMNS)
    for name in schema.COLUMNS:
        if name not in header:
            raise WarehouseError(f"{csv_path}: column {name!r} is missing; expected {expected}")
    for name in header:
        if name not in schema.COLUMNS:
            raise WarehouseError(f"{csv_path}: unexpected column {name!r}; expected {expected}")
    sql(f"CREATE OR REPLACE TEMP TABLE _covertype_load AS SELECT * FROM {reader}")
    integers = [n for n in schema.COLUMNS if schema.BIGQUERY_TYPES[n] == "INTEGER"]
    bad = {n: f"NOT regexp_full_match({quote(n)}, '[-+]?[0-9]{{1,18}}')" for n in integers}
    firsts = ", ".join(f"min(rowid) FILTER (WHERE {test})" for test in bad.values())
    # rowids of rows written in an open transaction start at a large offset: subtract it
    base, *rows = sql(f"SELECT min(rowid), {firsts} FROM _covertype_load")[0]
    failures = [(r, n) for r, n in zip(rows, integers, strict=True) if r is not None]
    if failures:
        row, name = min(failures)
        value = sql(f"SELECT {quote(name)} FROM _covertype_load WHERE rowid = ?", [row])[0][0]
        raise WarehouseError(f"{csv_path}: row {row - base + 1} column {name!r} has "
                             f"{value!r}; expected an INTEGER")
    casts = ", ".join(
        f"CAST({quote(n)} AS {_DUCKDB_TYPES[schema.BIGQUERY_TYPES[n]]}) AS {quote(n)}"
        for n in schema.COLUMNS
    )
    return f"SELECT {casts} FROM _covertype_load"


@contextlib.contextmanager
def local_copy(csv_path: str) -> Iterator[str]:
    """A local path for DuckDB to read: the file itself, or a download of a gs:// object."""
    try:
        fs, path = fsspec.core.url_to_fs(csv_path)
        exists = fs.isfile(path)
    except (OSError, ValueError) as error:
        raise WarehouseError(f"{csv_path}: cannot open ({first_line(error)})") from None
    if not exists:
        raise WarehouseError(f"{csv_path}: no such file; check the path")
    with tempfile.TemporaryDirectory() as folder:
        local = path
        if not isinstance(fs, LocalFileSystem):
            local = os.path.join(folder, os.path.basename(path))
            try:
                fs.get_file(path, local)
            except OSError as error:
                raise WarehouseError(f"{csv_path}: cannot read ({first_line(error)})") from None
        if os.path.getsize(local) == 0:
            raise WarehouseError(f"{csv_path}: the file is empty; expected a CSV with a header")
        yield local


def csv_error(csv_path: str, error: WarehouseError) -> WarehouseError:
    """Say which line of a malformed CSV DuckDB stopped at, instead of its parser dump."""
    message = str(error)
    line = re.search(r"CSV Error on Line: (\d+)", message)
    if not line and "sniffing file" not in message:
        return error
    where = f"line {line.group(1)}" if line else "its rows"
    return WarehouseError(
        f"{csv_path}: not a well-formed CSV ({where}: ragged rows or bad quoting); fix the file"
    )


def export_csv(sql: Sql, source_sql: str, target: str) -> None:
    """Write a CSV with a header: temp file, then os.replace (local) or upload (gs://)."""
    try:
        fs, path = fsspec.core.url_to_fs(target)
        local = isinstance(fs, LocalFileSystem)
        folder = os.path.dirname(path) if local else tempfile.gettempdir()
        os.makedirs(folder, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=folder, prefix=".bq-export-", suffix=".csv")
        os.close(handle)
    except (OSError, ValueError) as error:
        raise WarehouseError(f"cannot write {target}: {first_line(error)}") from None
    try:
        sql(f"COPY ({source_sql}) TO {literal(temp)} (FORMAT csv, HEADER true)")
        os.replace(temp, path) if local else fs.put_file(temp, path)
    except OSError as error:
        raise WarehouseError(f"cannot write {target}: {first_line(error)}") from None
    finally:
        if os.path.exists(temp):
            os.remove(temp)

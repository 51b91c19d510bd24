"""BigQuery stand-in: a DuckDB file queried with BigQuery Standard SQL translated by sqlglot.

A dataset is a DuckDB schema; `project.dataset.table` and `dataset.table` name the table
`dataset.table` (the project is dropped). FARM_FINGERPRINT is BigQuery's (FarmHash
Fingerprint64 as a signed INT64), and TO_JSON_STRING(row) gives BigQuery's text for integer
and string columns, so the pipeline's split queries pick the same rows as in the cloud.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import duckdb
import farmhash
import fsspec
import numpy as np
import pyarrow as pa
import sqlglot
from fsspec.implementations.local import LocalFileSystem
from sqlglot import exp

from pipeline import schema
from pipeline.local.home import warehouse_path

DEFAULT_DATASET = "kfp_tmp_dataset"
# Hidden dataset (BigQuery hides names starting with "_") holding fingerprint caches.
CACHE_DATASET = "_covertype_cache"
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]{1,1024}")
_PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:_-]{0,127}")
_DUCKDB_TYPES = {"INTEGER": "BIGINT", "STRING": "VARCHAR"}
_WRITE_DISPOSITIONS = ("WRITE_TRUNCATE", "WRITE_APPEND", "WRITE_EMPTY")
_CREATE_DISPOSITIONS = ("CREATE_IF_NEEDED", "CREATE_NEVER")
_JOB_CONFIG_KEYS = {"writeDisposition", "createDisposition", "useLegacySql", "priority"}
_CSV_OPTIONS = "header=true, delim=',', quote='\"', escape='\"'"
# TO_JSON_STRING(row) in DuckDB, as the fingerprint cache computes it (part of its signature).
_ROW_ALIAS = "_covertype_row"
_ROW_JSON = exp.JSONFormat(this=exp.column(_ROW_ALIAS)).sql(dialect="duckdb")


class WarehouseError(ValueError):
    """A bad query, name or file for the local warehouse; the message is one line."""


def fingerprint64(values: list[str]) -> np.ndarray:
    """BigQuery FARM_FINGERPRINT of each string: FarmHash Fingerprint64 read as signed INT64."""
    unsigned = np.fromiter(map(farmhash.fingerprint64, values), dtype=np.uint64, count=len(values))
    return unsigned.view(np.int64)


def _farm_fingerprint_udf(values: pa.ChunkedArray) -> pa.Array:
    """Vectorised DuckDB UDF: one call per chunk of rows (DuckDB handles NULLs)."""
    return _int64_array(fingerprint64(values.to_pylist()))


def _int64_array(values: np.ndarray) -> pa.Array:
    """Wrap int64 numbers without copying.

    Not pa.array or to_numpy: both import pandas, 0.2-0.4 s in every pipeline step.
    """
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _numpy_int64(values: pa.ChunkedArray) -> np.ndarray:
    """Int64 Arrow values (no nulls) as numpy, without pyarrow's pandas-importing to_numpy."""
    parts = [np.frombuffer(chunk.buffers()[1], dtype=np.int64)[chunk.offset:][:len(chunk)]
             for chunk in values.chunks]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def validate_identifier(kind: str, value: str) -> str:
    """Check a dataset or table id against BigQuery's rules; return it."""
    if not _IDENTIFIER.fullmatch(value or ""):
        raise WarehouseError(
            f"invalid {kind} {value!r}: use 1-1024 letters, digits or underscores"
        )
    if kind.startswith("dataset") and value.lower() == CACHE_DATASET:
        raise WarehouseError(f"invalid {kind} {value!r}: reserved for the local warehouse")
    return value


def parse_table_name(name: str) -> tuple[str, str]:
    """Split and check `dataset.table`."""
    dataset, dot, table = (name or "").partition(".")
    if (not dot or not _IDENTIFIER.fullmatch(dataset) or not _IDENTIFIER.fullmatch(table)
            or dataset.lower() == CACHE_DATASET):
        raise WarehouseError(
            f"invalid table name {name!r}: use dataset.table, each 1-1024 letters, digits "
            "or underscores"
        )
    return dataset, table


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _parse(sql: str) -> exp.Expression:
    """Parse one BigQuery statement and map its names to DuckDB schemas and tables."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="bigquery") if s is not None]
    except sqlglot.errors.SqlglotError as error:
        raise WarehouseError(f"invalid BigQuery SQL: {_first_line(error)}") from None
    if len(statements) != 1:
        raise WarehouseError(
            f"expected one SQL statement, got {len(statements)}; run statements one at a time"
        )
    statement = statements[0]
    if isinstance(statement, exp.Create | exp.Drop) and statement.kind == "SCHEMA":
        parts = ".".join(part.name for part in statement.this.parts).split(".")
        dataset = validate_identifier("dataset", parts[-1])
        statement.set("this", exp.Table(db=exp.to_identifier(dataset, quoted=True)))
        statement.set("properties", None)  # OPTIONS(location=...) has no DuckDB meaning
        return statement
    for table in statement.find_all(exp.Table):
        if table.args.get("db"):
            table.set("catalog", None)
    return statement


class Warehouse:
    """The local BigQuery: one DuckDB file, held under an exclusive lock while open.

    DuckDB allows one writing process per file; the lock makes parallel pipeline steps wait
    for each other instead of failing. Do not open two Warehouses on one file in one process.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else warehouse_path()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._fingerprints: dict[str, tuple[str, np.ndarray]] = {}
        self._lock: IO[str] | None = None

    def __enter__(self) -> Warehouse:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_name(self.path.name + ".lock"), "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            self._con = duckdb.connect(str(self.path))
            self._con.create_function(
                "farm_fingerprint", _farm_fingerprint_udf, ["VARCHAR"], "BIGINT", type="arrow"
            )
            self._con.create_function(
                "_covertype_cached_fingerprint", self._cached_fingerprint_udf,
                ["VARCHAR", "BIGINT"], "BIGINT", type="arrow",
            )
        except duckdb.Error as error:
            self._lock.close()
            raise WarehouseError(f"cannot open {self.path}: {_first_line(error)}") from None
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        self._lock.close()  # closing the file releases the flock

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise RuntimeError("open the Warehouse with `with Warehouse(...) as warehouse:`")
        return self._con

    # Public operations -------------------------------------------------------------------

    def query(self, sql: str) -> pa.Table:
        """Run one BigQuery Standard SQL statement; return its rows (empty for DDL/DML)."""
        statement = _parse(sql)
        with self._transaction():
            return self._run(self._prepare(statement))

    def load_csv(self, table: str, csv_path: str, replace: bool = True) -> int:
        """Load a CSV with a header (local, gs://, .gz) into `dataset.table`; return rows loaded.

        A CSV with Covertype columns must have exactly schema.COLUMNS and their types; it is
        stored in schema order so TO_JSON_STRING (and so the splits) match the lab's table.
        The row fingerprints are computed now, so the first split query is as fast as later ones.
        """
        dataset, name = parse_table_name(table)
        with _local_copy(csv_path) as path, self._transaction():
            try:
                rows = self._load(dataset, name, path, csv_path, replace)
            except WarehouseError as error:
                raise _csv_error(csv_path, error) from None
        with self._transaction():  # after the commit, which settles the rowids
            self._load_fingerprints(self._columns(dataset, name))
        return rows

    def run_query_job(
        self,
        query: str,
        project_id: str,
        dataset_id: str = "",
        table_id: str = "",
        output_gcs_path: str = "",
        dataset_location: str = "US",
        job_config: Mapping[str, Any] | None = None,
        job_id: str = "",
    ) -> dict[str, Any]:
        """Run a query job like the kfp 0.2.5 bigquery query component.

        With dataset_id or output_gcs_path the result goes to table `dataset_id.table_id`
        (defaults `kfp_tmp_dataset`, `query_<job_id>`; the dataset is created if missing),
        then to a CSV with a header at output_gcs_path. Nothing is written on any error.
        """
        job_id = job_id or uuid.uuid4().hex
        statement, destination, write, create = _plan_query_job(
            query, project_id, dataset_id, table_id, output_gcs_path, job_config, job_id
        )
        with self._transaction():
            prepared = self._prepare(statement)
            if destination is None:
                rows = self._run(prepared).num_rows
            else:
                sql = prepared.sql(dialect="duckdb")
                rows = self._write_table(sql, destination, write, create)
                if output_gcs_path:
                    self._export_csv(f"SELECT * FROM {'.'.join(map(_quote, destination))}",
                                     output_gcs_path)
        table = ".".join(destination) if destination else ""
        print(f"bigquery job {job_id} ({dataset_location}): {rows} rows"
              + (f" -> {table}" if table else "")
              + (f" -> {output_gcs_path}" if output_gcs_path else ""), flush=True)
        return {"output_gcs_path": output_gcs_path, "table": table, "rows": rows, "job_id": job_id}

    # Statement execution -----------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def _execute(self, sql: str, params: list[Any] | None = None) -> duckdb.DuckDBPyConnection:
        """Execute; the caller fetches the whole result (DuckDB 2 refuses new work before)."""
        try:
            return self.con.execute(sql, params)
        except duckdb.Error as error:
            raise WarehouseError(f"query failed: {_first_line(error)}") from None

    def _sql(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        """Execute and fetch all rows."""
        return self._execute(sql, params).fetchall()

    def _run(self, statement: exp.Expression) -> pa.Table:
        sql = statement.sql(dialect="duckdb")
        try:
            if isinstance(statement, exp.Query):
                return self.con.sql(sql).to_arrow_table()
            self.con.execute(sql)
        except duckdb.Error as error:
            raise WarehouseError(f"query failed: {_first_line(error)}") from None
        return pa.Table.from_arrays([], names=[])  # not pa.table: it imports pandas

    def _prepare(self, statement: exp.Expression) -> exp.Expression:
        """Check the source tables exist, then serve row fingerprints from the cache."""
        scope = statement if isinstance(statement, exp.Query) else statement.args.get("expression")
        if isinstance(scope, exp.Expression):
            for table in scope.find_all(exp.Table):
                if table.db and not self._exists(table.db, table.name):
                    name = f"{table.db}.{table.name}"
                    raise WarehouseError(
                        f"table {name} not found; load it with `covertype bq load {name} <csv>`"
                    )
        for node in list(statement.find_all(exp.FarmFingerprint)):
            self._use_fingerprint_cache(node)
        return statement

    def _exists(self, dataset: str, table: str) -> bool:
        found = self._sql(
            "SELECT count(*) FROM (SELECT schema_name, table_name FROM duckdb_tables() UNION ALL "
            "SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal) "
            "WHERE lower(schema_name) = lower(?) AND lower(table_name) = lower(?)",
            [dataset, table],
        )[0][0]
        return found > 0

    def _write_table(self, sql: str, destination: tuple[str, str], write: str, create: str) -> int:
        dataset, table = destination
        target = f"{_quote(dataset)}.{_quote(table)}"
        self._sql(f"CREATE SCHEMA IF NOT EXISTS {_quote(dataset)}")
        if not self._exists(dataset, table):
            if create == "CREATE_NEVER":
                raise WarehouseError(f"table {dataset}.{table} not found (CREATE_NEVER)")
        elif write == "WRITE_EMPTY" and self._sql(f"SELECT count(*) FROM {target}")[0][0]:
            raise WarehouseError(f"table {dataset}.{table} is not empty (WRITE_EMPTY)")
        elif write == "WRITE_APPEND":
            return int(self._sql(f"INSERT INTO {target} BY NAME {sql}")[0][0])
        return int(self._sql(f"CREATE OR REPLACE TABLE {target} AS {sql}")[0][0])

    def _export_csv(self, source_sql: str, target: str) -> None:
        """Write a CSV with a header: temp file, then os.replace (local) or upload (gs://)."""
        try:
            fs, path = fsspec.core.url_to_fs(target)
            local = isinstance(fs, LocalFileSystem)
            folder = Path(path).parent if local else Path(tempfile.gettempdir())
            folder.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=folder, prefix=".bq-export-", suffix=".csv")
            os.close(handle)
        except (OSError, ValueError) as error:
            raise WarehouseError(f"cannot write {target}: {_first_line(error)}") from None
        try:
            self._sql(f"COPY ({source_sql}) TO {_literal(temp)} (FORMAT csv, HEADER true)")
            os.replace(temp, path) if local else fs.put_file(temp, path)
        except OSError as error:
            raise WarehouseError(f"cannot write {target}: {_first_line(error)}") from None
        finally:
            if os.path.exists(temp):
                os.remove(temp)

    # Loading -----------------------------------------------------------------------------

    def _load(self, dataset: str, name: str, path: str, csv_path: str, replace: bool) -> int:
        target = f"{_quote(dataset)}.{_quote(name)}"
        reader = f"read_csv({_literal(path)}, {_CSV_OPTIONS}, all_varchar=true)"
        header = [row[0] for row in self._sql(f"DESCRIBE SELECT * FROM {reader}")]
        if set(header) & set(schema.COLUMNS):
            source = self._stage_covertype(reader, header, csv_path)
        else:
            source = f"SELECT * FROM read_csv({_literal(path)}, {_CSV_OPTIONS})"
        self._sql(f"CREATE SCHEMA IF NOT EXISTS {_quote(dataset)}")
        if replace or not self._exists(dataset, name):
            rows = self._sql(f"CREATE OR REPLACE TABLE {target} AS {source}")[0][0]
        else:
            rows = self._sql(f"INSERT INTO {target} BY NAME {source}")[0][0]
        self._sql("DROP TABLE IF EXISTS _covertype_load")
        return int(rows)

    def _stage_covertype(self, reader: str, header: list[str], csv_path: str) -> str:
        """Stage a Covertype CSV as text, check names and types; return the typed SELECT."""
        expected = ", ".join(schema.COLUMNS)
        for name in schema.COLUMNS:
            if name not in header:
                raise WarehouseError(f"{csv_path}: column {name!r} is missing; expected {expected}")
        for name in header:
            if name not in schema.COLUMNS:
                raise WarehouseError(f"{csv_path}: unexpected column {name!r}; expected {expected}")
        self._sql(f"CREATE OR REPLACE TEMP TABLE _covertype_load AS SELECT * FROM {reader}")
        integers = [n for n in schema.COLUMNS if schema.BIGQUERY_TYPES[n] == "INTEGER"]
        bad = {n: f"NOT regexp_full_match({_quote(n)}, '[-+]?[0-9]{{1,18}}')" for n in integers}
        firsts = ", ".join(f"min(rowid) FILTER (WHERE {test})" for test in bad.values())
        # rowids of rows written in an open transaction start at a large offset: subtract it
        base, *rows = self._sql(f"SELECT min(rowid), {firsts} FROM _covertype_load")[0]
        failures = [(r, n) for r, n in zip(rows, integers, strict=True) if r is not None]
        if failures:
            row, name = min(failures)
            value = self._sql(f"SELECT {_quote(name)} FROM _covertype_load WHERE rowid = ?",
                              [row])[0][0]
            raise WarehouseError(f"{csv_path}: row {row - base + 1} column {name!r} has "
                                 f"{value!r}; expected an INTEGER")
        casts = ", ".join(
            f"CAST({_quote(n)} AS {_DUCKDB_TYPES[schema.BIGQUERY_TYPES[n]]}) AS {_quote(n)}"
            for n in schema.COLUMNS
        )
        return f"SELECT {casts} FROM _covertype_load"

    # Fingerprint cache -------------------------------------------------------------------

    def _use_fingerprint_cache(self, node: exp.FarmFingerprint) -> None:
        """Replace FARM_FINGERPRINT(TO_JSON_STRING(alias)) of a base table by a cache lookup.

        The cache holds one fingerprint per rowid and is rebuilt whenever the table's
        signature (row count, checksum of rowids and values, column names and types) changes.
        A UDF reads it, not a join: joins would lose the table's row order.
        """
        args = node.expressions
        if len(args) != 1 or not isinstance(args[0], exp.JSONFormat):
            return
        json_format = args[0]
        column = json_format.this
        if set(k for k, v in json_format.args.items() if v) != {"this"} or not (
            isinstance(column, exp.Column) and not column.table
        ):
            return
        select = node.find_ancestor(exp.Select)
        alias = column.name
        tables = [
            t for t in (select.find_all(exp.Table) if select else [])
            if t.find_ancestor(exp.Select) is select and t.alias_or_name.lower() == alias.lower()
        ]
        if len(tables) != 1 or not tables[0].db:
            return
        columns = self._columns(tables[0].db, tables[0].name)
        if alias.lower() in {c[2].lower() for c in columns} or not self._load_fingerprints(columns):
            return
        node.replace(exp.func(
            "_covertype_cached_fingerprint", exp.Literal.string(f"{columns[0][0]}.{columns[0][1]}"),
            exp.column("rowid", table=alias, quoted=True),
        ))

    def _columns(self, dataset: str, table: str) -> list[tuple]:
        """(dataset, table, column, type) of a base table in column order; [] if none."""
        return self._sql(
            "SELECT c.schema_name, c.table_name, c.column_name, c.data_type FROM duckdb_columns() c"
            " JOIN duckdb_tables() t USING (table_oid) WHERE lower(c.schema_name) = lower(?)"
            " AND lower(c.table_name) = lower(?) ORDER BY c.column_index",
            [dataset, table],
        )

    def _load_fingerprints(self, columns: list[tuple]) -> bool:
        """Fill self._fingerprints (fingerprints by rowid) from the cache, or compute them.

        False when the cache cannot serve this table: rowid is a column name, or rowids are
        sparse (rows written in the open transaction); the plain UDF serves those.
        """
        if not columns or {"rowid", _ROW_ALIAS} & {c[2].lower() for c in columns}:
            return False
        key = f"{columns[0][0]}.{columns[0][1]}"
        source = f"{_quote(columns[0][0])}.{_quote(columns[0][1])}"
        cache = f"{_quote(CACHE_DATASET)}.{_quote(key)}"
        count, checksum, last = self._sql(
            f"SELECT count(*), sum(hash(rowid, *COLUMNS(*))), max(rowid) FROM {source}"
        )[0]
        if last is not None and last > 2 * count + 2048:
            return False
        layout = ",".join(f"{c[2]}:{c[3]}" for c in columns)
        signature = f"duckdb {duckdb.__version__}|{_ROW_JSON}|{layout}|{count}|{checksum}"
        if self._fingerprints.get(key, ("",))[0] == signature:
            return True
        stored = self._sql(
            "SELECT comment FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
            [CACHE_DATASET, key],
        )
        if stored == [(signature,)]:
            rows = self._execute(f"SELECT row_id, fp FROM {cache}").fetchnumpy()
            row_ids, fingerprints = rows["row_id"], rows["fp"]
        else:
            try:
                rows = self.con.sql(
                    f"SELECT rowid AS row_id, {_ROW_JSON} AS json FROM {source} AS {_ROW_ALIAS}"
                ).to_arrow_table()
            except duckdb.Error as error:
                raise WarehouseError(f"query failed: {_first_line(error)}") from None
            row_ids = _numpy_int64(rows["row_id"])
            fingerprints = fingerprint64(rows["json"].to_pylist())
            table = pa.Table.from_arrays(
                [_int64_array(row_ids), _int64_array(fingerprints)], names=["row_id", "fp"]
            )
            self.con.register("_covertype_fingerprints", table)
            try:
                self._sql(f"CREATE SCHEMA IF NOT EXISTS {_quote(CACHE_DATASET)}")
                self._sql(f"CREATE OR REPLACE TABLE {cache} AS FROM _covertype_fingerprints")
                self._sql(f"COMMENT ON TABLE {cache} IS {_literal(signature)}")
            finally:
                self.con.unregister("_covertype_fingerprints")
        by_row_id = np.zeros(int(row_ids.max()) + 1 if len(row_ids) else 0, dtype=np.int64)
        by_row_id[row_ids] = fingerprints
        self._fingerprints[key] = (signature, by_row_id)
        return True

    def _cached_fingerprint_udf(self, keys: pa.ChunkedArray, row_ids: pa.ChunkedArray) -> pa.Array:
        """DuckDB UDF: a base table's row fingerprints by rowid (keeps the scan's row order)."""
        if not len(row_ids):
            return _int64_array(np.zeros(0, dtype=np.int64))
        return _int64_array(self._fingerprints[keys[0].as_py()][1][_numpy_int64(row_ids)])


def validate_query_job(
    query: str,
    project_id: str,
    dataset_id: str = "",
    table_id: str = "",
    output_gcs_path: str = "",
    job_config: Mapping[str, Any] | None = None,
    job_id: str = "",
) -> None:
    """Check a query job's inputs without opening the warehouse (run_query_job checks too)."""
    _plan_query_job(query, project_id, dataset_id, table_id, output_gcs_path, job_config,
                    job_id or "0")


def _plan_query_job(
    query: str,
    project_id: str,
    dataset_id: str,
    table_id: str,
    output_gcs_path: str,
    job_config: Mapping[str, Any] | None,
    job_id: str,
) -> tuple[exp.Expression, tuple[str, str] | None, str, str]:
    """The parsed statement, destination (dataset, table) or None, and dispositions."""
    if not _PROJECT_ID.fullmatch(project_id or ""):
        raise WarehouseError(f"invalid project_id {project_id!r}: pass a GCP project id")
    write, create = _dispositions(job_config)
    statement = _parse(query)
    destination = None
    if dataset_id or output_gcs_path:
        destination = (
            validate_identifier("dataset_id", dataset_id or DEFAULT_DATASET),
            validate_identifier("table_id", table_id or f"query_{job_id}"),
        )
        if not isinstance(statement, exp.Query):
            raise WarehouseError("only a SELECT query can write a destination table")
    return statement, destination, write, create


def _dispositions(job_config: Mapping[str, Any] | None) -> tuple[str, str]:
    """Write and create dispositions: the component's defaults, or BigQuery's for a config."""
    if not job_config:
        return "WRITE_TRUNCATE", "CREATE_IF_NEEDED"
    unknown = set(job_config) - {"query", "labels"}
    config = job_config.get("query", {})
    if unknown or not isinstance(config, Mapping):
        raise WarehouseError(
            f"job_config: unsupported keys {sorted(unknown) or ['query']}; pass "
            '{"query": {"writeDisposition": ..., "createDisposition": ...}}'
        )
    if set(config) - _JOB_CONFIG_KEYS:
        raise WarehouseError(
            f"job_config: unsupported query keys {sorted(set(config) - _JOB_CONFIG_KEYS)}; "
            f"supported: {', '.join(sorted(_JOB_CONFIG_KEYS))}"
        )
    if config.get("useLegacySql"):
        raise WarehouseError("job_config: legacy SQL is not supported; use Standard SQL")
    write = config.get("writeDisposition", "WRITE_EMPTY")
    create = config.get("createDisposition", "CREATE_IF_NEEDED")
    if write not in _WRITE_DISPOSITIONS or create not in _CREATE_DISPOSITIONS:
        raise WarehouseError(
            f"job_config: unknown disposition {write!r}/{create!r}; use one of "
            f"{', '.join(_WRITE_DISPOSITIONS + _CREATE_DISPOSITIONS)}"
        )
    return write, create


@contextlib.contextmanager
def _local_copy(csv_path: str) -> Iterator[str]:
    """A local path for DuckDB to read: the file itself, or a download of a gs:// object."""
    try:
        fs, path = fsspec.core.url_to_fs(csv_path)
        exists = fs.isfile(path)
    except (OSError, ValueError) as error:
        raise WarehouseError(f"{csv_path}: cannot open ({_first_line(error)})") from None
    if not exists:
        raise WarehouseError(f"{csv_path}: no such file; check the path")
    with tempfile.TemporaryDirectory() as folder:
        local = path
        if not isinstance(fs, LocalFileSystem):
            local = os.path.join(folder, os.path.basename(path))
            try:
                fs.get_file(path, local)
            except OSError as error:
                raise WarehouseError(f"{csv_path}: cannot read ({_first_line(error)})") from None
        if os.path.getsize(local) == 0:
            raise WarehouseError(f"{csv_path}: the file is empty; expected a CSV with a header")
        yield local


def _csv_error(csv_path: str, error: WarehouseError) -> WarehouseError:
    """Say which line of a malformed CSV DuckDB stopped at, instead of its parser dump."""
    message = str(error)
    line = re.search(r"CSV Error on Line: (\d+)", message)
    if not line and "sniffing file" not in message:
        return error
    where = f"line {line.group(1)}" if line else "its rows"
    return WarehouseError(
        f"{csv_path}: not a well-formed CSV ({where}: ragged rows or bad quoting); fix the file"
    )

"""The local BigQuery: a DuckDB file queried with BigQuery Standard SQL translated by sqlglot.

A dataset is a DuckDB schema; `project.dataset.table` and `dataset.table` name the table
`dataset.table` (the project is dropped). Queries are translated by the allowlist in
dialect.py: a result is BigQuery's, or the query is refused (docs/bigquery.md).
"""
from __future__ import annotations

import contextlib
import fcntl
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import duckdb
import pyarrow as pa
from sqlglot import exp

from pipeline.local.bigquery import aggregates, functions, loading
from pipeline.local.bigquery.dialect import parse, translate
from pipeline.local.bigquery.fingerprints import FingerprintCache
from pipeline.local.bigquery.jobs import plan_query_job
from pipeline.local.bigquery.names import (
    WarehouseError,
    first_line,
    parse_table_name,
    quote,
)
from pipeline.local.bigquery.types import bigquery_type, to_bigquery_table
from pipeline.local.home import warehouse_path


class Warehouse:
    """The local BigQuery: one DuckDB file, held under an exclusive lock while open.

    DuckDB allows one writing process per file; the lock makes parallel pipeline steps wait
    for each other instead of failing. Do not open two Warehouses on one file in one process.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else warehouse_path()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._fingerprints: FingerprintCache | None = None
        self._lock: IO[str] | None = None

    def __enter__(self) -> Warehouse:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_name(self.path.name + ".lock"), "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            self._con = duckdb.connect(str(self.path))
            self._con.execute("SET TimeZone = 'UTC'")
            for macro in functions.MACROS:
                self._con.execute(macro)
            self._fingerprints = FingerprintCache(self._con, self._sql, self._row_json)
            self._fingerprints.register()
        except duckdb.Error as error:
            self._lock.close()
            raise WarehouseError(f"cannot open {self.path}: {first_line(error)}") from None
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
        """Run one BigQuery Standard SQL statement; return its rows (empty for DDL/DML).

        The Arrow fields carry their BigQuery type (types.TYPE_KEY metadata).

        Raises:
            NotSupportedError: a function or form the local BigQuery has not verified.
            WarehouseError: any other bad query; the message is one line.
        """
        with self._transaction():
            return self._run(self._translate(sql))

    def load_csv(self, table: str, csv_path: str, replace: bool = True) -> int:
        """Load a CSV with a header (local, gs://, .gz) into `dataset.table`; return rows loaded.

        The row fingerprints are computed now, so the first split query is as fast as later ones.
        """
        dataset, name = parse_table_name(table)
        with loading.local_copy(csv_path) as path, self._transaction():
            try:
                rows = loading.load(self._sql, self._exists, dataset, name, path, csv_path,
                                    replace)
            except WarehouseError as error:
                raise loading.csv_error(csv_path, error) from None
        with self._transaction():  # after the commit, which settles the rowids
            self._fingerprints.load(self._columns(dataset, name))
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
        with self._transaction():
            self._check_tables(parse(query))
            statement, destination, write, create = plan_query_job(
                query, project_id, dataset_id, table_id, output_gcs_path, job_config, job_id,
                self._catalog,
            )
            self._use_fingerprint_cache(statement)
            if destination is None:
                rows = self._run(statement).num_rows
            else:
                rows = self._write_table(self._named_sql(statement), destination, write, create)
                if output_gcs_path:
                    source = f"SELECT * FROM {'.'.join(map(quote, destination))}"
                    loading.export_csv(self._sql, source, output_gcs_path)
        table = ".".join(destination) if destination else ""
        print(f"bigquery job {job_id} ({dataset_location}): {rows} rows"
              + (f" -> {table}" if table else "")
              + (f" -> {output_gcs_path}" if output_gcs_path else ""), flush=True)
        return {"output_gcs_path": output_gcs_path, "table": table, "rows": rows, "job_id": job_id}

    # Translation and execution -----------------------------------------------------------

    def _translate(self, sql: str) -> exp.Expression:
        statement = parse(sql)
        self._check_tables(statement)
        statement = translate(statement, self._catalog)
        self._use_fingerprint_cache(statement)
        return statement

    def _check_tables(self, statement: exp.Expression) -> None:
        """Source tables must exist; DDL/DML targets are DuckDB's to check."""
        scope = statement if isinstance(statement, exp.Query) else statement.args.get("expression")
        if not isinstance(scope, exp.Expression):
            return
        for table in scope.find_all(exp.Table):
            if table.db and not self._exists(table.db, table.name):
                name = f"{table.db}.{table.name}"
                raise WarehouseError(
                    f"table {name} not found; load it with `covertype bq load {name} <csv>`"
                )

    def _catalog(self, dataset: str, table: str) -> list[tuple[str, str]] | None:
        """(column, BigQuery type) of a table, for the translation's type checks."""
        columns = self._columns(dataset, table)
        if not columns:
            return None
        try:
            return [(c[2], bigquery_type(duckdb.sqltype(c[3]))) for c in columns]
        except WarehouseError:
            return None

    def _row_json(self, alias: str, columns: list[tuple]) -> str:
        """TO_JSON_STRING(alias) of a base table with these columns, as the query computes it."""
        fields = [(c[2], bigquery_type(duckdb.sqltype(c[3]))) for c in columns]
        return aggregates.row_json(exp.column(alias, quoted=True), fields).sql(dialect="duckdb")

    def _use_fingerprint_cache(self, statement: exp.Expression) -> None:
        for node in list(statement.find_all(exp.FarmFingerprint)):
            self._fingerprints.use(node, self._columns)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def _sql(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        """Execute and fetch all rows (DuckDB 2 refuses new work before a result is fetched)."""
        try:
            return self.con.execute(sql, params).fetchall()
        except duckdb.Error as error:
            raise WarehouseError(f"query failed: {first_line(error)}") from None

    def _run(self, statement: exp.Expression) -> pa.Table:
        sql = statement.sql(dialect="duckdb")
        try:
            if isinstance(statement, exp.Query):
                relation = self.con.sql(sql)
                return to_bigquery_table(relation, _result_names(relation.columns))
            self.con.execute(sql)
        except duckdb.Error as error:
            raise WarehouseError(f"query failed: {first_line(error)}") from None
        return pa.Table.from_arrays([], names=[])  # not pa.table: it imports pandas

    def _named_sql(self, statement: exp.Expression) -> str:
        """The query's DuckDB SQL, its result names checked as BigQuery checks them."""
        sql = statement.sql(dialect="duckdb")
        try:
            _result_names(self.con.sql(sql).columns)
        except duckdb.Error as error:
            raise WarehouseError(f"query failed: {first_line(error)}") from None
        return sql

    def _exists(self, dataset: str, table: str) -> bool:
        found = self._sql(
            "SELECT count(*) FROM (SELECT schema_name, table_name FROM duckdb_tables() UNION ALL "
            "SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal) "
            "WHERE lower(schema_name) = lower(?) AND lower(table_name) = lower(?)",
            [dataset, table],
        )[0][0]
        return found > 0

    def _columns(self, dataset: str, table: str) -> list[tuple]:
        """(dataset, table, column, type) of a base table in column order; [] if none."""
        return self._sql(
            "SELECT c.schema_name, c.table_name, c.column_name, c.data_type FROM duckdb_columns() c"
            " JOIN duckdb_tables() t USING (table_oid) WHERE lower(c.schema_name) = lower(?)"
            " AND lower(c.table_name) = lower(?) ORDER BY c.column_index",
            [dataset, table],
        )

    def _write_table(self, sql: str, destination: tuple[str, str], write: str, create: str) -> int:
        dataset, table = destination
        target = f"{quote(dataset)}.{quote(table)}"
        self._sql(f"CREATE SCHEMA IF NOT EXISTS {quote(dataset)}")
        if not self._exists(dataset, table):
            if create == "CREATE_NEVER":
                raise WarehouseError(f"table {dataset}.{table} not found (CREATE_NEVER)")
        elif write == "WRITE_EMPTY" and self._sql(f"SELECT count(*) FROM {target}")[0][0]:
            raise WarehouseError(f"table {dataset}.{table} is not empty (WRITE_EMPTY)")
        elif write == "WRITE_APPEND":
            return int(self._sql(f"INSERT INTO {target} BY NAME {sql}")[0][0])
        return int(self._sql(f"CREATE OR REPLACE TABLE {target} AS {sql}")[0][0])


def _result_names(names: list[str]) -> list[str]:
    """A result's column names; BigQuery refuses duplicates (names are case-insensitive)."""
    seen: dict[str, str] = {}
    duplicates = []
    for name in names:
        if name.lower() in seen:
            duplicates.append(name)
        seen[name.lower()] = name
    if duplicates:
        raise WarehouseError("Duplicate column names in the result are not supported. Found "
                             f"duplicate(s): {', '.join(duplicates)}")
    return list(names)

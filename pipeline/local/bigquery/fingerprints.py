"""FARM_FINGERPRINT as BigQuery computes it, and a per-table cache of row fingerprints.

The pipeline's split queries fingerprint every row's TO_JSON_STRING; computing 426,599
FarmHash fingerprints in Python each time would dominate a run, so the warehouse keeps them
in a hidden table, keyed by a signature of the table's contents, and serves them by rowid.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb
import farmhash
import numpy as np
import pyarrow as pa
from sqlglot import exp

from pipeline.local.bigquery.names import (
    CACHE_DATASET,
    NotSupportedError,
    WarehouseError,
    first_line,
    literal,
    quote,
)

# TO_JSON_STRING(row) in DuckDB is this alias's row JSON (part of the cache signature).
ROW_ALIAS = "_covertype_row"
CACHED_UDF = "_covertype_cached_fingerprint"


def fingerprint64(values: list[str]) -> np.ndarray:
    """BigQuery FARM_FINGERPRINT of each string: FarmHash Fingerprint64 read as signed INT64."""
    unsigned = np.fromiter(map(farmhash.fingerprint64, values), dtype=np.uint64, count=len(values))
    return unsigned.view(np.int64)


def farm_fingerprint_udf(values: pa.ChunkedArray) -> pa.Array:
    """Vectorised DuckDB UDF: one call per chunk of rows (DuckDB handles NULLs)."""
    return int64_array(fingerprint64(values.to_pylist()))


def int64_array(values: np.ndarray) -> pa.Array:
    """Wrap int64 numbers without copying.

    Not pa.array or to_numpy: both import pandas, 0.2-0.4 s in every pipeline step.
    """
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def numpy_int64(values: pa.ChunkedArray) -> np.ndarray:
    """Int64 Arrow values (no nulls) as numpy, without pyarrow's pandas-importing to_numpy."""
    parts = [np.frombuffer(chunk.buffers()[1], dtype=np.int64)[chunk.offset:][:len(chunk)]
             for chunk in values.chunks]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


Sql = Callable[..., list[tuple]]


class FingerprintCache:
    """Row fingerprints of base tables by rowid, kept in the warehouse between connections.

    `sql(statement, params)` executes on the warehouse's connection and fetches all rows;
    `row_json(alias, columns)` is the translation of TO_JSON_STRING(alias) for a table's
    columns, so the cache fingerprints exactly what the query would.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, sql: Sql,
                 row_json: Callable[[str, list[tuple]], str]) -> None:
        self.con = con
        self.sql = sql
        self.row_json = row_json
        self._tables: dict[str, tuple[str, np.ndarray]] = {}

    def register(self) -> None:
        """Create the DuckDB functions: FARM_FINGERPRINT and the cache lookup."""
        self.con.create_function("farm_fingerprint", farm_fingerprint_udf, ["VARCHAR"], "BIGINT",
                                 type="arrow")
        self.con.create_function(CACHED_UDF, self._cached_udf, ["VARCHAR", "BIGINT"], "BIGINT",
                                 type="arrow")

    def use(self, node: exp.Expression, columns_of: Callable[[str, str], list[tuple]]) -> None:
        """Replace FARM_FINGERPRINT(<row JSON of alias>) of a base table by a cache lookup.

        The node must be the translated FARM_FINGERPRINT of TO_JSON_STRING(alias), marked
        `bq_row_json` with the alias by the translation. A UDF reads the cache, not a join:
        joins would lose the table's row order.
        """
        alias = node.meta.get("bq_row_json")
        select = node.find_ancestor(exp.Select)
        if not alias or select is None:
            return
        tables = [t for t in select.find_all(exp.Table)
                  if t.find_ancestor(exp.Select) is select
                  and t.alias_or_name.lower() == alias.lower()]
        if len(tables) != 1 or not tables[0].db:
            return
        columns = columns_of(tables[0].db, tables[0].name)
        if alias.lower() in {c[2].lower() for c in columns} or not self.load(columns):
            return
        node.replace(exp.func(
            CACHED_UDF, exp.Literal.string(f"{columns[0][0]}.{columns[0][1]}"),
            exp.column("rowid", table=alias, quoted=True),
        ))

    def load(self, columns: list[tuple]) -> bool:
        """Make the table's fingerprints ready: from the cache table, or computed now.

        False when the cache cannot serve this table: rowid is a column name, or rowids are
        sparse (rows written in the open transaction); the plain UDF serves those.
        """
        if not columns or {"rowid", ROW_ALIAS} & {c[2].lower() for c in columns}:
            return False
        key = f"{columns[0][0]}.{columns[0][1]}"
        source = f"{quote(columns[0][0])}.{quote(columns[0][1])}"
        cache = f"{quote(CACHE_DATASET)}.{quote(key)}"
        count, checksum, last = self.sql(
            f"SELECT count(*), sum(hash(rowid, *COLUMNS(*))), max(rowid) FROM {source}"
        )[0]
        if last is not None and last > 2 * count + 2048:
            return False
        try:
            row_json = self.row_json(ROW_ALIAS, columns)
        except NotSupportedError:
            return False  # TO_JSON_STRING of such rows is refused anyway
        layout = ",".join(f"{c[2]}:{c[3]}" for c in columns)
        signature = f"duckdb {duckdb.__version__}|{row_json}|{layout}|{count}|{checksum}"
        if self._tables.get(key, ("",))[0] == signature:
            return True
        stored = self.sql(
            "SELECT comment FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
            [CACHE_DATASET, key],
        )
        if stored == [(signature,)]:
            rows: Any = self.con.execute(f"SELECT row_id, fp FROM {cache}").fetchnumpy()
            row_ids, fingerprints = rows["row_id"], rows["fp"]
        else:
            row_ids, fingerprints = self._compute(source, row_json)
            self._store(cache, signature, row_ids, fingerprints)
        by_row_id = np.zeros(int(row_ids.max()) + 1 if len(row_ids) else 0, dtype=np.int64)
        by_row_id[row_ids] = fingerprints
        self._tables[key] = (signature, by_row_id)
        return True

    def _compute(self, source: str, row_json: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            rows = self.con.sql(
                f"SELECT rowid AS row_id, {row_json} AS json FROM {source} AS {quote(ROW_ALIAS)}"
            ).to_arrow_table()
        except duckdb.Error as error:
            raise WarehouseError(f"query failed: {first_line(error)}") from None
        return numpy_int64(rows["row_id"]), fingerprint64(rows["json"].to_pylist())

    def _store(self, cache: str, signature: str, row_ids: np.ndarray,
               fingerprints: np.ndarray) -> None:
        table = pa.Table.from_arrays([int64_array(row_ids), int64_array(fingerprints)],
                                     names=["row_id", "fp"])
        self.con.register("_covertype_fingerprints", table)
        try:
            self.sql(f"CREATE SCHEMA IF NOT EXISTS {quote(CACHE_DATASET)}")
            self.sql(f"CREATE OR REPLACE TABLE {cache} AS FROM _covertype_fingerprints")
            self.sql(f"COMMENT ON TABLE {cache} IS {literal(signature)}")
        finally:
            self.con.unregister("_covertype_fingerprints")

    def _cached_udf(self, keys: pa.ChunkedArray, row_ids: pa.ChunkedArray) -> pa.Array:
        """DuckDB UDF: a base table's row fingerprints by rowid (keeps the scan's row order)."""
        if not len(row_ids):
            return int64_array(np.zeros(0, dtype=np.int64))
        return int64_array(self._tables[keys[0].as_py()][1][numpy_int64(row_ids)])
